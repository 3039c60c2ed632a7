"""Time the service calls of the request path in process, against the same SQL run by plain sqlite3.

    .venv/bin/python bench/service_calls.py [--calls 3000] [--cpu 0]

No socket and no daemon: `TaskService` over a `Store` of its own, each call in its own group (one
commit, as the transport runs a lone request), beside the in-process half of each floor
(`floor.FloorStore`), interleaved in shuffled order. The difference is the Python the service adds to
its SQL; the transport's share is not in it. Not part of run.py: a tool to find out where a figure goes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor import READ_TASK, FloorStore

from msearchd.config import Settings
from msearchd.service import REQUESTER, TaskService
from msearchd.store import Store


async def measure(calls: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="msb-") as folder:
        root = Path(folder)
        store = Store(root / "tasks.db")
        service = TaskService(store, Settings(socket_path=root / "s.sock", state_dir=root))
        REQUESTER.set((os.getuid(), os.getpid()))
        ids = [
            int(t.removeprefix("task_"))
            for t in service.submit_many([{"type": "noop", "data": {"i": 1}}] * (2 * calls))["task_ids"]
        ]
        floor = FloorStore(root / "floor.db", pending=2 * calls)
        fids = floor.ids

        def in_group(call: Callable[[], Any]) -> None:
            with service.batch():
                call()

        ops: dict[str, Callable[[int], Any]] = {
            "get": lambda i: in_group(lambda: service.get(ids[calls + i])),
            "set_priority": lambda i: in_group(lambda: service.set_priority(ids[calls + i], i % 12)),
            "cancel": lambda i: in_group(lambda: service.cancel(ids[i])),
            "submit": lambda i: in_group(lambda: service.submit("noop", {"i": i})),
            "sql get": lambda i: floor.db.execute(READ_TASK, (fids[calls + i],)).fetchone(),
            "sql set_priority": lambda i: floor.set_priority(fids[calls + i], i % 12),
            "sql cancel": lambda i: floor.cancel(fids[i]),
            "sql submit": lambda i: floor.submit(),
        }
        times: dict[str, list[float]] = {name: [] for name in ops}
        names = list(ops)
        rng = random.Random(2)
        for i in range(calls):
            rng.shuffle(names)
            for name in names:
                t0 = time.perf_counter()
                ops[name](i)
                times[name].append(time.perf_counter() - t0)
        floor.close()
        store.close()
        return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--cpu", type=int, help="pin the process to this CPU")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    times = asyncio.run(measure(args.calls))
    print(f"{'call':14s} {'service, us':>12s} {'its SQL, us':>12s} {'added, us':>10s}")
    for op in ("get", "set_priority", "cancel", "submit"):
        ours, sql = statistics.median(times[op]) * 1e6, statistics.median(times[f"sql {op}"]) * 1e6
        print(f"{op:14s} {ours:12.1f} {sql:12.1f} {ours - sql:10.1f}")


if __name__ == "__main__":
    main()
