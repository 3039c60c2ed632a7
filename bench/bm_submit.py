"""3. Submit: single submits against Huey's enqueue; submit_many against raw SQLite executemany."""

from __future__ import annotations

import importlib.util
import os
import random
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
from benchlib import Context, Gate, Row, median, placed, placements, running_daemon, skip, temp_root
from bm_rpc import LEAN, BareClient, start_echo, start_lean
from floor import FloorStore

NAME = "submit"
BATCH = 1000
# Rows a multi-row INSERT of the raw peer writes: 7 marks each, within the 999 of old SQLite builds.
MULTI_ROWS = 128
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


def multi_insert(db: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """`rows` written as the daemon's store writes a batch: many rows a statement, not one (`sql` is
    the INSERT of one row)."""
    head, _, one = sql.partition(" VALUES ")
    for start in range(0, len(rows), MULTI_ROWS):
        part = rows[start : start + MULTI_ROWS]
        db.execute(f"{head} VALUES {','.join([one] * len(part))}", [v for row in part for v in row])


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

            # --- single submits, interleaved call by call with their floor and with Huey ---------
            # Huey enqueues in the caller's process: behind the same round trip as ours (a thin RPC
            # server, bench/echo_server.py --huey) it is the target's peer, with fsync=False (no fsync
            # per commit, as ours); called in process, in both configurations, it is information.
            hueys = {f: load_huey(root / f"huey-{f}.db", f) for f in HUEY_CONFIGS} if have_huey() else {}
            for app in hueys.values():
                for i in range(50):
                    app.noop(i)
            # The floor's round trips and the bare ones go to echo servers of their own, as in the rpc
            # bench: each server answers one request of the daemon's each.
            echo, echo_path = start_echo(root)
            bare_echo, bare_echo_path = start_echo(root, "bare-echo")
            via_floor = BareClient(echo_path)
            bare = BareClient(bare_echo_path)
            floor = FloorStore(root / "floor.db")
            lean_proc, lean, _ = start_lean(root, 0)
            huey_rpc = huey_server = None
            if hueys:
                huey_env = {"BENCH_HUEY_DB": str(root / "huey-rpc.db"), "BENCH_HUEY_FSYNC": "off"}
                huey_server, huey_path = start_echo(root, "huey", huey_env)
                huey_rpc = BareClient(huey_path)
            sides = ["ours", "ceiling", "floor", "lean", *(["huey rpc"] if hueys else [])]
            sides += [f"huey {f}" for f in hueys]
            servers = [d.pid, echo.pid, bare_echo.pid, lean_proc.pid]
            servers += [huey_server.pid] if huey_server else []
            samples: dict[str, dict[str, list[float]]] = {}  # us per call, by placement and side
            piped = 0.0

            def params(i: int) -> dict[str, Any]:
                return {"type": "noop", "data": {"i": i}, "priority": None, "depends_on": []}

            def one_call(side: str, i: int) -> None:
                if side == "ours":
                    c.submit("noop", {"i": i})
                elif side == "ceiling":
                    bare.call("submit", params(i))
                elif side == "floor":
                    via_floor.call("submit", params(i))
                    floor.submit()
                elif side == "lean":
                    lean.call("submit", params(i))
                elif side == "huey rpc":
                    assert huey_rpc is not None
                    huey_rpc.call("submit", params(i))
                else:
                    hueys[side.removeprefix("huey ")].noop(i)

            # Each call of a side is followed by one of every other side, in a shuffled order, so
            # that all see the machine alike; each call is timed alone and the figures are medians,
            # which a disturbance moves little. A pipeline pays its start and its drain once: rounds of
            # a few hundred submits would measure mostly that, so it runs in rounds of its own between
            # the others', timed whole. Half the rounds run with the servers on the client's CPU, half
            # on the other (benchlib.placed).
            each = singles // len(placements())
            chunk = max(500, each // 5)
            rng = random.Random(3)
            for k, placement in enumerate(placed(servers)):
                samples[placement] = {side: [] for side in sides}
                times = samples[placement]
                for start in range(k * each, (k + 1) * each, chunk):
                    # Each submit is a request of its own, answered once durable; the client sends
                    # the next without waiting for the answer (Client.pipeline).
                    t0 = time.perf_counter()
                    with c.pipeline() as p:
                        for i in range(start, start + chunk):
                            p.submit("noop", {"i": i})
                    piped += time.perf_counter() - t0
                    assert len(p.results) == chunk and all(isinstance(r, dict) for r in p.results)
                    for i in range(start, start + chunk):
                        rng.shuffle(sides)
                        for side in sides:
                            t0 = time.perf_counter()
                            one_call(side, i)
                            times[side].append((time.perf_counter() - t0) * 1e6)
            bare.close()
            via_floor.close()
            lean.close()
            floor.close()
            for proc in (echo, bare_echo, huey_server, lean_proc):
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=10)
            for f, app in hueys.items():
                count = app.huey.pending_count()
                ctx.detail(f"huey queue ({f}) holds {count} tasks after the run (expected {singles + 50})")
            if huey_rpc is not None:
                huey_rpc.close()
                count = load_huey(root / "huey-rpc.db", "off").huey.pending_count()
                ctx.detail(
                    f"huey queue (rpc, fsync=False) holds {count} tasks after the run (expected {singles})"
                )
            floor_name = "floor: round trip + one-row commit in process"
            for placement, of_placement in samples.items():
                med = {side: median(v) for side, v in of_placement.items() if v}
                ctx.detail(
                    f"single submits, {placement}, median us per call: "
                    + ", ".join(f"{side} {v:.1f}" for side, v in sorted(med.items()))
                )
                waiting = f"single submit, waiting for its answer: median us, {placement}"
                ours_us = med["ours"]
                ctx.add(Row(NAME, waiting, ours_us, med["floor"], "us", floor_name, "ratio:<=1.3"))
                ctx.add(Row(NAME, f"{waiting}, vs {LEAN} (info)", ours_us, med["lean"], "us", LEAN))
                name = f"{LEAN} over the floor, single submit, {placement} (info)"
                ctx.add(Row(NAME, name, med["lean"], med["floor"], "us", floor_name))
                if hueys:
                    ctx.add(
                        Row(
                            NAME,
                            f"{waiting}, vs Huey behind the same round trip",
                            ours_us,
                            med["huey rpc"],
                            "us",
                            "huey enqueue (fsync=False) behind a thin RPC",
                            "ratio:<=1",
                            note="no slower than Huey",
                        )
                    )
                    for f in hueys:
                        name = f"{waiting}, vs Huey in process, {f} (info)"
                        ctx.add(Row(NAME, name, ours_us, med[f"huey {f}"], "us", HUEY_PEERS[f]))
                ctx.add(
                    Row(
                        NAME,
                        f"single submit: the bare round trip alone, median us, {placement} (info)",
                        med["ceiling"],
                        ours_us,
                        "us",
                        "ours, each waiting",
                        note="the same requests, one at a time, answered by the bare echo server",
                    )
                )
            if not hueys:
                skip(
                    ctx, NAME, "huey enqueue", "huey is not installed (pip install -r bench/requirements.txt)"
                )
            name = "single submits/s, one client, pipelined (info)"
            if hueys:
                huey_rate = 1e6 / median([t for by_side in samples.values() for t in by_side["huey default"]])
                ctx.add(Row(NAME, name, singles / piped, huey_rate, "/s", HUEY_PEERS["default"]))
            else:
                ctx.add(Row(NAME, name, singles / piped, unit="/s"))

            # --- batches, interleaved with raw executemany -------------------------------------------
            db, sql = raw_inserter(root / "raw.db")
            multi_db, _ = raw_inserter(root / "raw-multi.db")
            ours = theirs = multi = 0.0
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
                t0 = time.perf_counter()
                now = time.time()
                rows = [("noop", "pending", 6, msgpack.packb(t["data"]), None, None, now) for t in tasks]
                multi_db.execute("BEGIN IMMEDIATE")
                multi_insert(multi_db, sql, rows)
                multi_db.execute("COMMIT")
                multi += time.perf_counter() - t0
                n += len(tasks)
            db.close()
            multi_db.close()
        ctx.add(
            Row(
                NAME,
                f"submit_many tasks/s (batches of {BATCH})",
                n / ours,
                n / theirs,
                "/s",
                "raw sqlite executemany",
                "ratio:>=0.85",
            )
        )
        ctx.add(
            Row(
                NAME,
                f"submit_many tasks/s (batches of {BATCH}), like for like (info)",
                n / ours,
                n / multi,
                "/s",
                "raw sqlite, many rows an INSERT",
                note="the store writes a batch so; executemany runs its statement once a row",
            )
        )


if __name__ == "__main__":
    run(Context(quick="--quick" in sys.argv))
