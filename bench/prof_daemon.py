"""Profile the daemon (cProfile) under one workload of the benchmarks; prints where its time goes.

    .venv/bin/python bench/prof_daemon.py WORKLOAD [--top 25] [--out file.prof]

WORKLOAD: rpc, submit, dispatch, waited, command or latency.

Not part of run.py: a tool to find out why a figure is what it is.
"""

from __future__ import annotations

import argparse
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import PYTHON, Daemon, Gate, temp_root


def rpc(d: Daemon, c: Any, root: Path) -> None:
    gate = Gate(root)
    c.submit("gate", gate.data(), priority=0)
    gate.wait_holding(1)
    n = 5000
    nums = [int(t.removeprefix("task_")) for t in c.submit_many([{"type": "noop"}] * (2 * n))["task_ids"]]
    for i in range(n):
        c.cancel(nums[i])
        c.set_priority(nums[n + i], i % 12)
        c.get(nums[n + i])


def submit(d: Daemon, c: Any, root: Path) -> None:
    gate = Gate(root)
    c.submit("gate", gate.data(), priority=0)
    gate.wait_holding(1)
    for i in range(5000):
        c.submit("noop", {"i": i})
    for b in range(20):
        c.submit_many([{"type": "noop", "data": {"i": b * 1000 + i}} for i in range(1000)])


def _drain(d: Daemon, c: Any, root: Path, task: dict[str, Any], n: int, wait_all: bool = False) -> None:
    d.warm_up(4)
    gate = Gate(root)
    for _ in range(d.workers):
        c.submit("gate", gate.data(), priority=0)
    gate.wait_holding(d.workers)
    ids = [t for _ in range(0, n, 1000) for t in c.submit_many([task] * 1000)["task_ids"]]
    t0 = time.perf_counter()
    gate.open()
    c.wait(ids if wait_all else ids[-2:], timeout=600)
    print(f"drained {len(ids)} tasks in {time.perf_counter() - t0:.2f} s")


def dispatch(d: Daemon, c: Any, root: Path) -> None:
    _drain(d, c, root, {"type": "noop"}, 5000)


def waited(d: Daemon, c: Any, root: Path) -> None:
    _drain(d, c, root, {"type": "noop"}, 5000, wait_all=True)


def command(d: Daemon, c: Any, root: Path) -> None:
    _drain(d, c, root, {"type": "command", "data": {"argv": ["true"]}}, 1000)


def latency(d: Daemon, c: Any, root: Path) -> None:
    """One no-op task at a time, each submitted and waited for: what an idle daemon does per task."""
    d.warm_up(4)
    for _ in range(3000):
        c.wait([c.submit("noop")["id"]], timeout=30)


WORKLOADS = {
    "rpc": rpc,
    "submit": submit,
    "dispatch": dispatch,
    "waited": waited,
    "command": command,
    "latency": latency,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workload", choices=list(WORKLOADS))
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, help="keep the raw profile here")
    args = parser.parse_args()
    with temp_root("msp-") as root:
        out = args.out or root / "daemon.prof"
        workers = 2 if args.workload in ("dispatch", "waited", "command", "latency") else 1
        d = Daemon(root=root, workers=workers, prefix=(PYTHON, "-m", "cProfile", "-o", str(out)))
        d.start()
        try:
            with d.client() as c:
                WORKLOADS[args.workload](d, c, root)
        finally:
            d.stop()
        buf = io.StringIO()
        stats = pstats.Stats(str(out), stream=buf)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        print(buf.getvalue())


if __name__ == "__main__":
    main()
