"""5. Scale: a daemon over a store of 1,000,000 pending tasks (100,000 with --quick; --scale N).

The store is filled before the daemon starts, by the product's own store module (Store.insert in
transactions of 10,000), not over the RPC: 1M submits would take the whole time budget. Two "gate"
tasks at priority 0 hold both workers, so that nothing runs until the dispatch part opens them.
Each of BULK_KINDS types (`thumbnail_generate_k`, priority 9) holds a tenth of the tasks, spread
evenly; the rest are `noop`. Each bulk type is cancelled once: one sample of the daemon's
cancel_by_type and one of the raw UPDATE for each type, alternating. Both sides run alone in most
rounds (the ratio's samples); in every third, another connection keeps asking the daemon for one task
meanwhile (the `get` p99 during bulk cancels).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import sqlite3
import struct
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import psutil
from benchlib import Context, Daemon, Gate, Row, median, ms, percentile, temp_root

NAME = "scale"
WORKERS = 2
BULK_KINDS = 8  # bulk types, so as many samples of a bulk cancel on each side (4 with --quick)
POLLED_EVERY = 3  # of the bulk cancels, every third is timed with `get` calls meanwhile
DRAIN = 1000  # tasks per dispatch measurement
RAW_CANCEL = (
    "UPDATE tasks SET status = 'cancelled', finished_at = ?, stop_reason = 'not_started', "
    "blocked_reason = NULL WHERE type = ? AND status IN ('pending', 'blocked')"
)


def fill(db_path: Path, n: int, gate: Gate, bulk_types: list[str]) -> tuple[array[int], list[array[int]]]:
    """Write n pending tasks (+2 gates) with the store module; returns (noop ids, ids of each bulk type)."""
    from msearchd.model import TaskStatus
    from msearchd.store import Store

    db_path.parent.mkdir(parents=True, exist_ok=True)
    store = Store(db_path)
    now = time.time()
    noop: array[int] = array("q")
    bulk: list[array[int]] = [array("q") for _ in bulk_types]
    with store.transaction():
        for _ in range(WORKERS):
            store.insert(
                task_type="gate", data=gate.data(), priority=0, status=TaskStatus.PENDING, created_at=now
            )
    for start in range(0, n, 10_000):
        with store.transaction():
            for i in range(start, min(n, start + 10_000)):
                kind = i % 10 if i % 10 < len(bulk_types) else None
                task_id = store.insert(
                    task_type=bulk_types[kind] if kind is not None else "noop",
                    data={"path": f"/photos/2024/{i:08d}.jpg"},
                    priority=9 if kind is not None else 6,
                    status=TaskStatus.PENDING,
                    created_at=now,
                )
                (bulk[kind] if kind is not None else noop).append(task_id)
    store.close()
    return noop, bulk


def raw_cancel(db: sqlite3.Connection, task_type: str) -> tuple[float, float, int]:
    """The raw UPDATE in one transaction, then the checkpoint of what it wrote: (seconds to commit,
    seconds to checkpoint, rows). The connection checkpoints only when told, as the daemon does in a
    bulk cancel: it answers once committed and checkpoints afterwards, on a thread."""
    t0 = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    n = db.execute(RAW_CANCEL, (time.time(), task_type)).rowcount
    db.execute("COMMIT")
    t1 = time.perf_counter()
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return t1 - t0, time.perf_counter() - t1, n


def raw_connection(copy: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(copy), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    return db


def wal_frames(db_path: Path) -> tuple[int, int]:
    """(frames in the WAL, frames checkpointed), read from the WAL index (the -shm file) without taking
    any lock: mxFrame of its header and nBackfill of its checkpoint information."""
    head = Path(f"{db_path}-shm").read_bytes()[:100]
    return struct.unpack_from("=I", head, 16)[0], struct.unpack_from("=I", head, 96)[0]


def until_checkpointed(db_path: Path, limit_s: float = 60.0) -> float | None:
    """Seconds until the daemon's deferred checkpoint has copied back what the WAL held when called;
    None if it did not within `limit_s`. A WAL that started over was checkpointed whole first."""
    t0 = time.perf_counter()
    written, _ = wal_frames(db_path)
    while time.perf_counter() - t0 < limit_s:
        frames, backfilled = wal_frames(db_path)
        if backfilled >= written or frames < written:
            return time.perf_counter() - t0
        time.sleep(0.001)
    return None


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def calls(fn: Any, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append(ms(time.perf_counter() - t0))
    return out


def completed_prefix(c: Any, ids: array[int]) -> int:
    """How many of `ids` (run in this order) have completed: they form a prefix, found by bisection."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if c.get(ids[mid])["status"] == "completed":
            lo = mid + 1
        else:
            hi = mid
    return lo


def drain_rate(
    c: Any, root: Path, gate: Gate, rep: int, noop_ids: array[int] | None, limit_s: float = 30.0
) -> float:
    """Tasks/s while 2 workers run the next DRAIN no-op tasks (or as many as `limit_s` allows).

    noop_ids=None: submit the DRAIN tasks fresh; else run the next ones of `noop_ids` in the store.
    """
    if rep > 0:  # the first round uses the gates already in the store
        gate = Gate(root, f"gate{rep}")
        for _ in range(WORKERS):
            c.submit("gate", gate.data(), priority=0)
    gate.wait_holding(WORKERS, timeout=120)
    if noop_ids is None:
        fresh = c.submit_many([{"type": "noop"}] * DRAIN)["task_ids"]
        batch = array("q", [int(t.removeprefix("task_")) for t in fresh])
    else:
        done = completed_prefix(c, noop_ids)
        batch = noop_ids[done : done + DRAIN]
    t0 = time.perf_counter()
    gate.open()
    result = c.wait(list(batch[-WORKERS:]), timeout=limit_s)
    if not result["timed_out"]:
        return len(batch) / (time.perf_counter() - t0)
    done = completed_prefix(c, batch)  # too slow to finish: count what did
    return done / (time.perf_counter() - t0)


class Poller:
    """Times `get` calls on a connection of its own, in a thread, while something else goes on."""

    def __init__(self, client: Any, task_id: int, pid: int) -> None:
        self.client = client
        self.task_id = task_id
        self.pid = pid
        self.times: list[float] = []
        self.rss: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            self.client.get(self.task_id)
            self.times.append(ms(time.perf_counter() - t))
            self.rss.append(rss_mb(self.pid))
            time.sleep(0.001)

    def __enter__(self) -> Poller:
        self._thread.start()
        time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout=120)


def run(ctx: Context) -> None:
    n = ctx.scale or (100_000 if ctx.quick else 1_000_000)
    kinds = 4 if ctx.quick else BULK_KINDS
    bulk_types = [f"thumbnail_generate_{k}" for k in range(kinds)]
    listed_type = bulk_types[0]
    reps = 15
    label = f"{n / 1e6:g}M pending" if n >= 1_000_000 else f"{n // 1000}k pending"
    with temp_root() as root:
        d = Daemon(root=root, workers=WORKERS)
        gate = Gate(root)
        t0 = time.perf_counter()
        noop_ids, bulk_ids = fill(d.db_path, n, gate, bulk_types)
        ctx.detail(f"filled {n:,} tasks with the store module in {time.perf_counter() - t0:.1f} s")
        # The raw side's copy, made before the daemon starts: the same rows, the same file layout.
        copy = root / "copy.db"
        t0 = time.perf_counter()
        shutil.copy(d.db_path, copy)
        ctx.detail(
            f"copied the store ({copy.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - t0:.1f} s"
        )

        t0 = time.perf_counter()
        d.start()
        startup_s = time.perf_counter() - t0
        ctx.detail(f"daemon started over {n:,} tasks in {startup_s:.2f} s")
        try:
            with d.client() as c, d.client() as other:
                rss = [rss_mb(d.pid)]
                rng = random.Random(5)
                bulk0 = bulk_ids[0]
                picks = [bulk0[i] for i in rng.sample(range(len(bulk0)), 300)]
                t_prio = calls(lambda i: c.set_priority(picks[i], 9 + i % 3), len(picks))
                t_get = calls(lambda i: c.get(noop_ids[rng.randrange(len(noop_ids))]), 300)
                lists = {
                    "list limit 50": calls(lambda i: c.list(limit=50), 30),
                    "list status=pending limit 50": calls(lambda i: c.list("pending", limit=50), 30),
                    f"list type={listed_type} limit 50": calls(
                        lambda i: c.list(None, listed_type, limit=50), 30
                    ),
                }
                t_status = calls(lambda i: c.status(), 5)
                t_stats = calls(lambda i: c.stats(), 5)
                rss.append(rss_mb(d.pid))

                # Dispatch rate, in rounds alternating with a daemon over DRAIN pending tasks only,
                # so that both see the machine alike; then one more round with `get` calls meanwhile.
                d2 = Daemon(root=root / "small", workers=WORKERS)
                (root / "small").mkdir()
                gate2 = Gate(root / "small")
                fill(d2.db_path, 0, gate2, [])
                d2.start()
                # The first round of each is not counted: the second daemon, started just before,
                # slows the first round of the other (see bench/README.md; the detail line shows it).
                rates: list[float] = []
                small: list[float] = []
                try:
                    with d2.client() as c2:
                        for r in range(reps + 1):
                            rates.append(drain_rate(c, root, gate, r, noop_ids))
                            small.append(drain_rate(c2, root / "small", gate2, r, None))
                finally:
                    d2.stop()
                ctx.detail(
                    "dispatch rounds, tasks/s, the first not counted: "
                    + ", ".join(f"{a:,.0f} vs {b:,.0f}" for a, b in zip(rates, small, strict=True))
                )
                del rates[0], small[0]
                with Poller(other, noop_ids[-1], d.pid) as while_dispatching:
                    drain_rate(c, root, gate, reps + 1, noop_ids)
                rss += while_dispatching.rss
                # Hold both workers again, so that the bulk cancels have the daemon to themselves.
                hold = Gate(root, "hold")
                for _ in range(WORKERS):
                    c.submit("gate", hold.data(), priority=0)
                hold.wait_holding(WORKERS, timeout=300)

                # Bulk cancels, one type at a time, each alternating with the raw UPDATE of the same
                # type on the copy, in a shuffled order. Both sides answer once committed and
                # checkpoint afterwards; the daemon's deferred checkpoint is timed from outside (the WAL
                # index says when it is done). In every POLLED_EVERY-th round another connection keeps
                # asking the daemon for one task while it cancels: the raw UPDATE has no such load, so
                # those rounds are kept apart from the ratio's.
                raw = raw_connection(copy)
                ours_s: list[float] = []
                ours_ckpt: list[float | None] = []
                raw_s: list[float] = []
                raw_ckpt: list[float] = []
                polled_s: list[float] = []  # ours, with gets meanwhile
                polled_raw_s: list[float] = []  # the raw UPDATEs of the same rounds
                cancelled = 0
                during_times: list[float] = []
                for k, task_type in enumerate(bulk_types):
                    polled = k % POLLED_EVERY == 1
                    sides = ["ours", "raw"]
                    rng.shuffle(sides)
                    for side in sides:
                        if side == "raw":
                            commit_s, ckpt_s, raw_n = raw_cancel(raw, task_type)
                            if polled:
                                polled_raw_s.append(commit_s)
                            else:
                                raw_s.append(commit_s)
                                raw_ckpt.append(ckpt_s)
                            continue
                        with (
                            Poller(other, noop_ids[-1], d.pid)
                            if polled
                            else contextlib.nullcontext() as during
                        ):
                            t0 = time.perf_counter()
                            answer = c.cancel_by_type(task_type)
                            took = time.perf_counter() - t0
                            checkpointed = until_checkpointed(d.db_path)
                        cancelled += answer["cancelled"]
                        if during is None:
                            ours_s.append(took)
                            ours_ckpt.append(checkpointed)
                        else:
                            polled_s.append(took)
                            during_times += during.times
                            rss += during.rss
                raw.close()
                rss.append(rss_mb(d.pid))
                workers_rss = sum(p.memory_info().rss for p in psutil.Process(d.pid).children()) / 2**20
        finally:
            d.stop()
        ctx.detail(
            f"cancel_by_type cancelled {cancelled:,} tasks in {len(bulk_types)} requests; the raw UPDATE "
            f"{raw_n:,} rows each; {len(during_times)} gets answered during {len(polled_s)} of them"
        )
        ctx.detail(
            "cancel_by_type rounds alone, ms (answer + deferred checkpoint): ours "
            + ", ".join(
                f"{ms(a):,.0f}+{ms(b):,.0f}" if b is not None else f"{ms(a):,.0f}+(not within 60 s)"
                for a, b in zip(ours_s, ours_ckpt, strict=True)
            )
            + "; raw "
            + ", ".join(f"{ms(a):,.0f}+{ms(b):,.0f}" for a, b in zip(raw_s, raw_ckpt, strict=True))
        )

    ctx.add(Row(NAME, f"daemon start-up (recovery) over {label} (info)", startup_s * 1000, unit="ms"))
    ctx.add(Row(NAME, f"daemon RSS, max seen ({label})", max(rss), unit="MB", target="abs:<=150"))
    ctx.add(Row(NAME, f"worker processes RSS, sum of {WORKERS} (info)", workers_rss, unit="MB"))
    ctx.add(Row(NAME, "set_priority median", median(t_prio), unit="ms", target="abs:<=1"))
    ctx.add(Row(NAME, "set_priority p99 (info)", percentile(t_prio, 99), unit="ms"))
    ctx.add(Row(NAME, "get median (info)", median(t_get), unit="ms"))
    for name, times in lists.items():
        ctx.add(Row(NAME, f"{name} median", median(times), unit="ms", target="abs:<=20"))
    ctx.add(Row(NAME, "status median (info; counts pending)", median(t_status), unit="ms"))
    ctx.add(Row(NAME, "stats median (info; counts by type and status)", median(t_stats), unit="ms"))
    size = f"{raw_n / 1000:,.0f}k" if raw_n < 1_000_000 else f"{raw_n / 1e6:g}M"
    of = f"median of {len(ours_s)}"
    ctx.add(
        Row(
            NAME,
            f"cancel_by_type of {size}, until answered ({of})",
            ms(median(ours_s)),
            ms(median(raw_s)),
            "ms",
            "one raw SQL UPDATE, until committed",
            "ratio:<=1",
        )
    )
    through = [a + b for a, b in zip(ours_s, ours_ckpt, strict=True) if b is not None]
    raw_through = [a + b for a, b in zip(raw_s, raw_ckpt, strict=True)]
    ctx.add(
        Row(
            NAME,
            f"cancel_by_type of {size}, through its checkpoint ({of}) (info)",
            ms(median(through)) if through else None,
            ms(median(raw_through)),
            "ms",
            "the raw UPDATE, through its checkpoint",
        )
    )
    ctx.add(
        Row(
            NAME,
            f"cancel_by_type of {size} while gets are answered (median of {len(polled_s)}) (info)",
            ms(median(polled_s)),
            ms(median(polled_raw_s)),
            "ms",
            "one raw SQL UPDATE, until committed",
        )
    )
    ctx.add(
        Row(
            NAME,
            "get p99 during the bulk cancels",
            percentile(during_times, 99),
            unit="ms",
            target="abs:<=100",
        )
    )
    ctx.add(Row(NAME, "get max during the bulk cancels (info)", max(during_times), unit="ms"))
    ctx.add(
        Row(
            NAME,
            f"dispatch rate with {label} (median of {reps})",
            median(rates),
            median(small),
            "/s",
            f"{DRAIN} pending",
            "ratio:>=0.9",
            note="'not lower', with 10% allowed for noise",
        )
    )
    ctx.add(
        Row(
            NAME,
            f"get p99 while dispatching with {label} (info)",
            percentile(while_dispatching.times, 99),
            unit="ms",
        )
    )


if __name__ == "__main__":
    sizes = [a.removeprefix("--scale=") for a in sys.argv if a.startswith("--scale=")]
    run(Context(quick="--quick" in sys.argv, scale=int(sizes[0]) if sizes else None))
