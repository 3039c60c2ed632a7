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
from typing import Any
from unittest import mock

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


def pool_round(paths: list[Path], out: Path) -> float:
    out.mkdir()
    jobs = [(p, out / f"{p.stem}.webp") for p in paths]
    with multiprocessing.Pool(2) as pool:
        pool.map(pool_thumbnail, jobs[:WARM_UP])  # start the processes and import Pillow
        t0 = time.perf_counter()
        pool.map(pool_thumbnail, jobs, chunksize=1)
        return time.perf_counter() - t0


def pool_handler_round(data: list[dict[str, object]], warm: list[dict[str, object]], root: Path) -> float:
    """The pool running the handler itself (its cache in a fresh state folder under `root`): what is
    left between this and msearchd is the daemon's own overhead, not the handler's checks and its
    cache's atomic writes."""
    root.mkdir()
    # The pool's processes are forked with it; the bench's own environment is as it was after.
    with mock.patch.dict(os.environ, {"MSEARCH_STATE_DIR": str(root)}), multiprocessing.Pool(2) as pool:
        pool.map(pool_handler, warm)
        t0 = time.perf_counter()
        pool.map(pool_handler, data, chunksize=1)
        return time.perf_counter() - t0


def daemon_round(data: list[dict[str, object]], warm: list[dict[str, object]], root: Path) -> float:
    """Seconds for the daemon to make the thumbnails of `data`, once its workers have made those of
    `warm` (other images): they have imported Pillow and the handler, as the pool's processes have."""
    root.mkdir()
    with running_daemon(root, workers=2) as d, d.client() as c:
        d.warm_up(4)
        ids = c.submit_many([{"type": "thumbnail_generate", "data": item} for item in warm])["task_ids"]
        c.wait(ids, timeout=600)
        t0 = time.perf_counter()
        ids = c.submit_many([{"type": "thumbnail_generate", "data": item} for item in data])["task_ids"]
        done = c.wait(ids, timeout=3600)
        seconds = time.perf_counter() - t0
        failed = [t for t in done["tasks"] if t["status"] != "completed"]
        if done["timed_out"] or failed:
            raise RuntimeError(f"thumbnails did not all complete: {failed[:1]}")
    return seconds


def thumbnails(ctx: Context, root: Path) -> None:
    n = 400 if ctx.quick else 2000
    paths = make_images(root / "images", n + WARM_UP)
    data = [scan_data(p) for p in paths]
    paths, data, warm = paths[:n], data[:n], data[n:]
    # Alternating rounds, each daemon with a fresh cache: the machine's load changes in between.
    pool_times: list[float] = []
    handler_times: list[float] = []
    daemon_times: list[float] = []
    for round_no in range(ROUNDS):
        pool_times.append(pool_round(paths, root / f"pool{round_no}"))
        handler_times.append(pool_handler_round(data, warm, root / f"handler{round_no}"))
        daemon_times.append(daemon_round(data, warm, root / f"d{round_no}"))
    pool_seconds, daemon_seconds = min(pool_times), min(daemon_times)
    ctx.detail(
        "thumbnail rounds (s): pool "
        + ", ".join(f"{t:.2f}" for t in pool_times)
        + "; pool running the handler "
        + ", ".join(f"{t:.2f}" for t in handler_times)
        + "; msearchd "
        + ", ".join(f"{t:.2f}" for t in daemon_times)
    )
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
            n / min(handler_times),
            "images/s",
            "multiprocessing.Pool(2), thumbnail_generate's run()",
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
