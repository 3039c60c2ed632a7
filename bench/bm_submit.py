"""3. Submit: single submits against Huey's enqueue; submit_many against raw SQLite executemany."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
from benchlib import Context, Gate, Row, running_daemon, skip, temp_root
from bm_rpc import BareClient, start_echo

NAME = "submit"
BATCH = 1000


def have_huey() -> bool:
    return importlib.util.find_spec("huey") is not None


def load_huey(db: Path) -> Any:
    """Import bench/huey_app with its database at `db` (a fresh module each time)."""
    os.environ["BENCH_HUEY_DB"] = str(db)
    sys.modules.pop("huey_app", None)
    import huey_app

    return huey_app


def raw_inserter(path: Path) -> tuple[sqlite3.Connection, str]:
    """A connection to a fresh copy of the store's schema, set up as the daemon sets up its own."""
    from msearchd.store import Store

    Store(path).close()  # the same table and indexes as the daemon's
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    sql = (
        "INSERT INTO tasks (type, status, priority, data, blocked_reason, retry_of, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    return db, sql


def run(ctx: Context) -> None:
    singles = 2000 if ctx.quick else 10000
    batches = 20 if ctx.quick else 100
    with temp_root() as root, running_daemon(root, workers=1) as d:
        gate = Gate(root)
        with d.client() as c:
            # Hold the only worker, so that what is measured is the queue and not the dispatch.
            c.submit("gate", gate.data(), priority=0)
            gate.wait_holding(1)
            for i in range(50):  # warm-up, not counted
                c.submit("noop", {"i": i})

            # --- single submits, interleaved in chunks with Huey's enqueue ---------------------------
            huey_app = load_huey(root / "huey.db") if have_huey() else None
            if huey_app is not None:
                for i in range(50):
                    huey_app.noop(i)
            echo, echo_path = start_echo(root)
            bare = BareClient(echo_path)
            piped = ours = theirs = ceiling = 0.0
            # Five rounds, each side in turn, so that both see the machine alike. A pipeline pays its
            # start and its drain once a round: rounds of a few hundred submits measure mostly that.
            chunk = max(500, singles // 5)
            for start in range(0, singles, chunk):
                # Pipelined: each submit is a request of its own, answered once durable; the client
                # sends the next without waiting for the answer (Client.pipeline).
                t0 = time.perf_counter()
                with c.pipeline() as p:
                    for i in range(start, start + chunk):
                        p.submit("noop", {"i": i})
                piped += time.perf_counter() - t0
                assert len(p.results) == chunk and all(isinstance(r, dict) for r in p.results)
                t0 = time.perf_counter()
                for i in range(start, start + chunk):
                    c.submit("noop", {"i": i})
                ours += time.perf_counter() - t0
                t0 = time.perf_counter()
                for i in range(start, start + chunk):
                    params = {"type": "noop", "data": {"i": i}, "priority": None, "depends_on": []}
                    bare.call("submit", params)
                ceiling += time.perf_counter() - t0
                if huey_app is not None:
                    t0 = time.perf_counter()
                    for i in range(start, start + chunk):
                        huey_app.noop(i)
                    theirs += time.perf_counter() - t0
            bare.close()
            echo.terminate()
            echo.wait(timeout=10)
            huey_rate = singles / theirs if huey_app is not None else None
            ctx.add(
                Row(
                    NAME,
                    "single submits/s, each waiting for its answer (info)",
                    singles / ours,
                    huey_rate,
                    "/s",
                    "huey enqueue",
                )
            )
            ctx.add(
                Row(
                    NAME,
                    "single submits/s: round-trip ceiling (info)",
                    singles / ceiling,
                    huey_rate,
                    "/s",
                    "huey enqueue",
                    note="the same requests, one at a time, answered by the bare echo server",
                )
            )
            name = "single submits/s (one client, pipelined)"
            if huey_app is not None:
                count = huey_app.huey.pending_count()
                ctx.detail(f"huey queue holds {count} tasks after the run (expected {singles + 50})")
                ctx.add(Row(NAME, name, singles / piped, huey_rate, "/s", "huey enqueue", "ratio:>=2.5"))
            else:
                ctx.add(Row(NAME, name, singles / piped, unit="/s"))
                skip(
                    ctx, NAME, "huey enqueue", "huey is not installed (pip install -r bench/requirements.txt)"
                )

            # --- batches, interleaved with raw executemany -------------------------------------------
            db, sql = raw_inserter(root / "raw.db")
            ours = theirs = 0.0
            n = 0
            for b in range(batches):
                tasks = [{"type": "noop", "data": {"i": i}} for i in range(b * BATCH, (b + 1) * BATCH)]
                t0 = time.perf_counter()
                c.submit_many(tasks)
                ours += time.perf_counter() - t0
                t0 = time.perf_counter()
                now = time.time()
                rows = [("noop", "pending", 6, msgpack.packb(t["data"]), None, None, now) for t in tasks]
                db.execute("BEGIN IMMEDIATE")
                db.executemany(sql, rows)
                db.execute("COMMIT")
                theirs += time.perf_counter() - t0
                n += len(tasks)
            db.close()
        ctx.add(
            Row(
                NAME,
                f"submit_many tasks/s (batches of {BATCH})",
                n / ours,
                n / theirs,
                "/s",
                "raw sqlite executemany",
                "ratio:>=0.5",
            )
        )


if __name__ == "__main__":
    run(Context(quick="--quick" in sys.argv))
