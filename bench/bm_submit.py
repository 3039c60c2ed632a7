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
# bench/huey_app's configurations (BENCH_HUEY_FSYNC), and the peer's name in the table for each.
HUEY_CONFIGS = ("default", "off")
HUEY_PEERS = {"default": "huey enqueue (default: synchronous=FULL)", "off": "huey enqueue (fsync=False)"}


def have_huey() -> bool:
    return importlib.util.find_spec("huey") is not None


def load_huey(db: Path, fsync: str) -> Any:
    """Import bench/huey_app with its database at `db` and BENCH_HUEY_FSYNC=`fsync` ("default" or
    "off"), as a fresh module each time."""
    os.environ["BENCH_HUEY_DB"] = str(db)
    os.environ["BENCH_HUEY_FSYNC"] = fsync
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

            # --- single submits, interleaved in chunks with Huey's enqueue, in both configurations ------
            hueys = {f: load_huey(root / f"huey-{f}.db", f) for f in HUEY_CONFIGS} if have_huey() else {}
            for app in hueys.values():
                for i in range(50):
                    app.noop(i)
            echo, echo_path = start_echo(root)
            bare = BareClient(echo_path)
            piped = ours = ceiling = 0.0
            theirs = dict.fromkeys(hueys, 0.0)
            # Five rounds, each side in turn, so that all see the machine alike. A pipeline pays its
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
                for f, app in hueys.items():
                    t0 = time.perf_counter()
                    for i in range(start, start + chunk):
                        app.noop(i)
                    theirs[f] += time.perf_counter() - t0
            bare.close()
            echo.terminate()
            echo.wait(timeout=10)
            for f, app in hueys.items():
                count = app.huey.pending_count()
                ctx.detail(f"huey queue ({f}) holds {count} tasks after the run (expected {singles + 50})")
            # The target's peer is Huey as configured by default (the figures the targets were set
            # from); fsync=False, the peer with msearchd's durability, is information.
            default = singles / theirs["default"] if hueys else None
            off = singles / theirs["off"] if hueys else None
            peer = HUEY_PEERS["default"] if hueys else ""
            waiting = "single submits/s, each waiting for its answer"
            ctx.add(Row(NAME, f"{waiting} (info)", singles / ours, default, "/s", peer))
            if hueys:
                ctx.add(
                    Row(
                        NAME,
                        f"{waiting}, vs fsync=False (info)",
                        singles / ours,
                        off,
                        "/s",
                        HUEY_PEERS["off"],
                    )
                )
            ctx.add(
                Row(
                    NAME,
                    "single submits/s: round-trip ceiling (info)",
                    singles / ceiling,
                    default,
                    "/s",
                    peer,
                    note="the same requests, one at a time, answered by the bare echo server",
                )
            )
            name = "single submits/s (one client, pipelined)"
            if hueys:
                ctx.add(Row(NAME, name, singles / piped, default, "/s", peer, "ratio:>=2.5"))
                info = "single submits/s, pipelined, vs fsync=False (info)"
                ctx.add(Row(NAME, info, singles / piped, off, "/s", HUEY_PEERS["off"]))
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
