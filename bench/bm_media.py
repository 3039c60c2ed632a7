"""8. The media handlers: thumbnails of 2,000 images through msearchd with 2 workers vs the same Pillow
function in a multiprocessing.Pool(2), and (information) vs the pool running the handler itself; a scan
of 100,000 files: time to queue, and the p99 of other calls meanwhile."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import psutil
from benchlib import Context, Row, median, ms, percentile, running_daemon, temp_root
from PIL import Image

from msearchd.handlers.media import thumbnail
from msearchd.handlers.media.images import make_thumbnail

NAME = "media"
IMAGE_SIZE = (1600, 1200)  # a phone photo scaled down: decoding it is most of a thumbnail's work


def make_images(folder: Path, n: int) -> list[Path]:
    """n JPEGs of distinct content (the cache is by content: copies would be made once)."""
    folder.mkdir()
    base = Image.effect_noise(IMAGE_SIZE, 64).convert("RGB")
    paths = []
    for i in range(n):
        img = base.copy()
        img.paste((i % 251, (i * 7) % 253, (i * 13) % 255), (0, 0, 32 + i % 64, 32 + i // 64 % 64))
        path = folder / f"img{i:05d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def pool_thumbnail(job: tuple[Path, Path]) -> None:
    make_thumbnail(*job)


class PoolContext:
    """The `ctx` the pool hands the handler: nobody to report to, never cancelled."""

    task_id = "pool"
    log_path = os.devnull
    cancelled = False

    def progress(self, fraction: float, current_operation: str | None = None) -> None:
        pass

    def set_operation(self, current_operation: str) -> None:
        pass


def pool_handler(data: dict[str, object]) -> None:
    thumbnail.run(PoolContext(), data)  # type: ignore[arg-type]  # no submit: a thumbnail never queues work


def scan_data(path: Path) -> dict[str, object]:
    """What a scan gives each task (the digest, computed here, outside the timing, as the scan does)."""
    st = path.stat()
    digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    return {
        "path": str(path),
        "kind": "image",
        "digest": digest,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }


ROUNDS = 2


# Thumbnails made on each side before the clock starts: both sides' processes have imported Pillow.
WARM_UP = 4


class Round(NamedTuple):
    """One side's round: its wall time, and the CPU seconds its processes used meanwhile."""

    seconds: float
    workers_cpu_s: float  # the processes that made the thumbnails
    daemon_cpu_s: float = 0.0  # msearchd itself: what it costs beside its workers


def cpu_s(processes: list[psutil.Process]) -> float:
    """CPU seconds the processes' threads ran, as the scheduler counts them (`/proc/PID/task/*/schedstat`):
    exact, where the user and system times of `psutil` are sampled at each clock tick, too coarse
    for a daemon that runs a fraction of a millisecond at a time."""
    ns = 0
    for process in processes:
        for thread in Path(f"/proc/{process.pid}/task").iterdir():
            ns += int((thread / "schedstat").read_text().split()[0])
    return ns / 1e9


def pool_round(paths: list[Path], out: Path) -> Round:
    out.mkdir()
    jobs = [(p, out / f"{p.stem}.webp") for p in paths]
    with multiprocessing.Pool(2) as pool:
        pool.map(pool_thumbnail, jobs[:WARM_UP])  # start the processes and import Pillow
        workers = psutil.Process().children()
        cpu0, t0 = cpu_s(workers), time.perf_counter()
        pool.map(pool_thumbnail, jobs, chunksize=1)
        return Round(time.perf_counter() - t0, cpu_s(workers) - cpu0)


def pool_handler_round(data: list[dict[str, object]], warm: list[dict[str, object]], root: Path) -> Round:
    """The pool running the handler itself (its cache in a fresh state folder under `root`): what is
    left between this and msearchd is the daemon's own overhead, not the handler's checks and its
    cache's atomic writes."""
    root.mkdir()
    # The pool's processes are forked with it; the bench's own environment is as it was after.
    with mock.patch.dict(os.environ, {"MSEARCH_STATE_DIR": str(root)}), multiprocessing.Pool(2) as pool:
        pool.map(pool_handler, warm)
        workers = psutil.Process().children()
        cpu0, t0 = cpu_s(workers), time.perf_counter()
        pool.map(pool_handler, data, chunksize=1)
        return Round(time.perf_counter() - t0, cpu_s(workers) - cpu0)


def daemon_round(data: list[dict[str, object]], warm: list[dict[str, object]], root: Path) -> Round:
    """Seconds for the daemon to make the thumbnails of `data`, once its workers have made those of
    `warm` (other images): they have imported Pillow and the handler, as the pool's processes have."""
    root.mkdir()
    with running_daemon(root, workers=2) as d, d.client() as c:
        d.warm_up(4)
        ids = c.submit_many([{"type": "thumbnail_generate", "data": item} for item in warm])["task_ids"]
        c.wait(ids, timeout=600)
        daemon = psutil.Process(d.pid)
        workers = daemon.children()
        cpu0, daemon_cpu0, t0 = cpu_s(workers), cpu_s([daemon]), time.perf_counter()
        ids = c.submit_many([{"type": "thumbnail_generate", "data": item} for item in data])["task_ids"]
        done = c.wait(ids, timeout=3600)
        seconds = time.perf_counter() - t0
        used = Round(seconds, cpu_s(workers) - cpu0, cpu_s([daemon]) - daemon_cpu0)
        failed = [t for t in done["tasks"] if t["status"] != "completed"]
        if done["timed_out"] or failed:
            raise RuntimeError(f"thumbnails did not all complete: {failed[:1]}")
    return used


def thumbnails(ctx: Context, root: Path) -> None:
    n = 400 if ctx.quick else 2000
    paths = make_images(root / "images", n + WARM_UP)
    data = [scan_data(p) for p in paths]
    paths, data, warm = paths[:n], data[:n], data[n:]
    # Alternating rounds, each daemon with a fresh cache: the machine's load changes in between.
    pool: list[Round] = []
    handler: list[Round] = []
    daemon: list[Round] = []
    for round_no in range(ROUNDS):
        pool.append(pool_round(paths, root / f"pool{round_no}"))
        handler.append(pool_handler_round(data, warm, root / f"handler{round_no}"))
        daemon.append(daemon_round(data, warm, root / f"d{round_no}"))

    def shown(rounds: list[Round]) -> str:
        return ", ".join(f"{r.seconds:.2f} ({r.workers_cpu_s:.2f} CPU)" for r in rounds)

    ctx.detail(
        f"thumbnail rounds, wall s (its workers' CPU s): pool {shown(pool)}; pool running the handler "
        f"{shown(handler)}; msearchd {shown(daemon)}, msearchd itself "
        + ", ".join(f"{r.daemon_cpu_s:.2f}" for r in daemon)
        + " CPU s"
    )
    pool_seconds, daemon_seconds = min(r.seconds for r in pool), min(r.seconds for r in daemon)
    ctx.add(
        Row(
            NAME,
            f"thumbnails of {n} images, 2 workers (images/s)",
            n / daemon_seconds,
            n / pool_seconds,
            "images/s",
            "multiprocessing.Pool(2), same function",
            "ratio:>=0.95",
        )
    )
    ctx.add(
        Row(
            NAME,
            f"thumbnails of {n} images, 2 workers (images/s), vs the pool running the handler (info)",
            n / daemon_seconds,
            n / min(r.seconds for r in handler),
            "images/s",
            "multiprocessing.Pool(2), thumbnail_generate's run()",
        )
    )
    # Where a slow round's time went: the CPU a thumbnail took in the processes that made it (the
    # machine's noise moves it as much as the wall time), and what the daemon itself spent beside.
    per_image_ms = {
        side: median([1000 * r.workers_cpu_s / n for r in rounds])
        for side, rounds in (("pool", pool), ("daemon", daemon))
    }
    ctx.add(
        Row(
            NAME,
            "CPU per thumbnail in msearchd's workers, median of the rounds (info)",
            per_image_ms["daemon"],
            per_image_ms["pool"],
            "ms",
            "in the pool's processes, same function",
        )
    )
    ctx.add(
        Row(
            NAME,
            "CPU per thumbnail in msearchd itself, beside its workers' (info)",
            median([1000 * r.daemon_cpu_s / n for r in daemon]),
            per_image_ms["daemon"],
            "ms",
            "in its workers",
        )
    )


def probe(d: Any, stop: threading.Event, latencies: list[float]) -> None:
    """Another client's calls while the scan runs: `stats`, 200 a second at most."""
    with d.client() as other:
        while not stop.is_set():
            t0 = time.perf_counter()
            other.stats()
            latencies.append(ms(time.perf_counter() - t0))
            time.sleep(0.005)


def scan(ctx: Context, root: Path) -> None:
    n = 20_000 if ctx.quick else 100_000
    for name, head in (("zero-byte", b""), ("JPEG-signature", b"\xff\xd8\xff")):
        tree = root / name
        for i in range(n):
            folder = tree / f"d{i // 1000:03d}"
            if i % 1000 == 0:
                folder.mkdir(parents=True)
            (folder / f"f{i:06d}.jpg").write_bytes(head)
        # One worker: the scan has it, and nothing it queued runs before the scan has ended.
        (root / f"d-{name}").mkdir()
        with running_daemon(root / f"d-{name}", workers=1) as d, d.client() as c:
            d.warm_up(2)
            latencies: list[float] = []
            stop = threading.Event()
            prober = threading.Thread(target=probe, args=(d, stop, latencies), daemon=True)
            t0 = time.perf_counter()
            task = c.submit("file_scan", {"path": str(tree)})
            prober.start()
            done = c.wait([task["id"]], timeout=3600)
            seconds = time.perf_counter() - t0
            stop.set()
            prober.join()
            result = done["tasks"][0]["result"]
            if done["tasks"][0]["status"] != "completed":
                raise RuntimeError(f"scan ended {done['tasks'][0]['status']}: {done['tasks'][0]['error']}")
        ctx.add(Row(NAME, f"scan of {n} {name} files, to queue (s)", seconds, unit="s"))
        ctx.detail(f"{name}: {result['queued_tasks']} tasks queued, {result['not_media']} not media")
        ctx.add(
            Row(
                NAME,
                f"p99 of stats calls during that scan ({len(latencies)} calls)",
                percentile(latencies, 99),
                unit="ms",
                note=f"median {median(latencies):.2f} ms",
            )
        )


def run(ctx: Context) -> None:
    with temp_root() as root:
        thumbnails(ctx, root)
    with temp_root() as root:
        scan(ctx, root)


if __name__ == "__main__":
    run(Context(quick="--quick" in sys.argv))
