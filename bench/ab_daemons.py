"""Two checkouts' daemons and the leanest Python server, side by side on the same requests.

    .venv/bin/python bench/ab_daemons.py ../before . [--methods cancel,set_priority,get,submit]
        [--pairs 5] [--rounds 8] [--block 300] [--cpus 0]

What a change to the request path is worth in time. A change of a few percent is inside the spread
of two runs of `run.py --only rpc`, so here the two trees answer the same requests in one sitting:
each round sends a block of `--block` requests of one method to each server in turn, in a shuffled
order, from one bare socket client (the daemon's framing and nothing else). `bench/lean_server.py`
answers the same blocks, plain and with the checks every request needs (`--checks`): what each
daemon and those checks add over the leanest server is printed beside them.

Each daemon runs one worker, held by a gate task, so the requests' tasks stay pending: `cancel` and
`set_priority` are control writes of a pending task, as in the rpc bench. Every process is pinned to
`--cpus` (default CPU 0: the client and the server share it, the rpc bench's first placement; `all`
pins nothing). The same checkout twice is an A/A run: the noise of the method.

Two daemons of the same code are sometimes a few percent apart on every method for the whole of
their lives, so the run is `--pairs` pairs of fresh processes one after another, and the verdict the
median of the pairs' ratios.

Not part of run.py: a tool for the change under way, not a target.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

from benchlib import Daemon, Gate, temp_root
from bm_rpc import BareClient, start_lean

METHODS = ("cancel", "set_priority", "get", "submit")


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of `pid` that exists now (threads made later inherit it)."""
    if cpus is None:
        return
    for thread in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(thread.name), cpus)


def params_of(method: str, task_id: int, i: int) -> dict[str, Any]:
    if method == "submit":
        return {"type": "noop", "data": {"i": i}}
    if method == "set_priority":
        return {"task_id": task_id, "priority": i % 12}
    return {"task_id": task_id}


def start_daemon(
    stack: ExitStack, root: Path, source: Path, pending: int, cpus: set[int] | None
) -> tuple[BareClient, list[int]]:
    """A daemon of `source` with its one worker held and `pending` no-op tasks, stopped with `stack`;
    a client of it, and the tasks' ids."""
    root.mkdir()
    gate = Gate(root)
    stack.callback(gate.open)  # once the daemon has stopped (the callbacks run last first)
    daemon = Daemon(root=root, workers=1, source=source)
    stack.callback(daemon.stop)
    daemon.start()
    pin(daemon.pid, cpus)
    with daemon.client() as setup:
        setup.submit("gate", gate.data(), priority=0)
        gate.wait_holding(1)
        ids = setup.submit_many([{"type": "noop", "data": {"i": i}} for i in range(pending)])["task_ids"]
    client = BareClient(daemon.socket)
    client.call("hello", {"protocol": 1})
    return client, [int(t.removeprefix("task_")) for t in ids]


def measure(
    servers: dict[str, tuple[BareClient, list[int]]], method: str, offset: int, rounds: int, block: int
) -> dict[str, float]:
    """Median µs of `method` on each server, blocks of `block` requests alternated in shuffled order."""
    times: dict[str, list[float]] = {name: [] for name in servers}
    names = list(servers)
    rng = random.Random(7)
    for r in range(rounds):
        rng.shuffle(names)
        for name in names:
            client, ids = servers[name]
            for i in range(r * block, (r + 1) * block):
                request = params_of(method, ids[offset + i], i)
                t0 = time.perf_counter()
                client.call(method, request)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(samples) * 1e6 for name, samples in times.items()}


def pair(
    trees: tuple[Path, Path], methods: list[str], rounds: int, block: int, cpus: set[int] | None
) -> dict[str, dict[str, float]]:
    """One pair of fresh daemons, and fresh lean servers (plain and with the checks): the medians of
    each method on each."""
    n = rounds * block
    pending = 2 * n  # each cancel takes a pending task of its own; the others share another range
    with temp_root() as root, ExitStack() as stack:
        # Both daemons of a pair hash strings alike, a fresh seed each pair: the seed is then not one
        # of the things the two differ in.
        stack.enter_context(mock.patch.dict(os.environ, PYTHONHASHSEED=str(random.randrange(1, 2**32))))
        servers = {
            "A": start_daemon(stack, root / "a", trees[0], pending, cpus),
            "B": start_daemon(stack, root / "b", trees[1], pending, cpus),
        }
        for name, checks in (("lean", False), ("checks", True)):
            lean_proc, lean, first = start_lean(root, pending, checks)
            stack.callback(lean_proc.kill)
            pin(lean_proc.pid, cpus)
            lean.call("hello", {"protocol": 1})
            servers[name] = (lean, list(range(first, first + pending)))
        return {m: measure(servers, m, 0 if m == "cancel" else n, rounds, block) for m in methods}


def spread(values: list[float], digits: int) -> str:
    """The median of `values`, and their range."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f} to {max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tree_a", type=Path, help="a checkout of msearchd (the folder holding msearchd/)")
    parser.add_argument("tree_b", type=Path, help="another checkout, or the same one for an A/A run")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated, of " + ", ".join(METHODS)
    )
    parser.add_argument("--pairs", type=int, default=5, help="pairs of fresh daemons, one after another")
    parser.add_argument("--rounds", type=int, default=8, help="blocks of each method per server and pair")
    parser.add_argument("--block", type=int, default=300, help="requests in a row to one server")
    parser.add_argument("--cpus", default="0", help="CPUs to pin everything to, comma-separated, or 'all'")
    args = parser.parse_args()
    methods = args.methods.split(",")
    if unknown := set(methods) - set(METHODS):
        parser.error(f"unknown methods: {', '.join(sorted(unknown))}")
    for tree in (args.tree_a, args.tree_b):
        if not (tree / "msearchd" / "__init__.py").is_file():
            parser.error(f"{tree} holds no msearchd package")
    cpus = None if args.cpus == "all" else {int(c) for c in args.cpus.split(",")}
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    trees = (args.tree_a.resolve(), args.tree_b.resolve())
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    checks_cost: dict[str, list[float]] = {m: [] for m in methods}  # µs the checks add to the lean server
    beyond: dict[str, list[float]] = {m: [] for m in methods}  # µs daemon A adds to the checked one
    columns = ("A µs", "B µs", "lean µs", "+checks", "B/A", "A-lean", "B-lean", "checks-lean")
    print(f"{'pair':<6}{'method':<14}" + "".join(f"{c:>12}" for c in columns))
    for number in range(1, args.pairs + 1):
        for method, med in pair(trees, methods, args.rounds, args.block, cpus).items():
            ratios[method].append(med["B"] / med["A"])
            checks_cost[method].append(med["checks"] - med["lean"])
            beyond[method].append(med["A"] - med["checks"])
            lean = med["lean"]
            figures = (med["A"], med["B"], lean, med["checks"])
            extra = (med["A"] - lean, med["B"] - lean, med["checks"] - lean)
            print(
                f"{number:<6}{method:<14}"
                + "".join(f"{f:>12.1f}" for f in figures)
                + f"{med['B'] / med['A']:>12.3f}"
                + "".join(f"{f:>12.1f}" for f in extra),
                flush=True,
            )
    each = args.rounds * args.block
    print(f"Medians of {args.pairs} pairs ({each} requests a server each), and their range:")
    print(f"  {'method':<14}{'B/A':<26}{'checks over lean, µs':<26}A over lean with checks, µs")
    for method in methods:
        cells = (spread(ratios[method], 3), spread(checks_cost[method], 1), spread(beyond[method], 1))
        print(f"  {method:<14}{cells[0]:<26}{cells[1]:<26}{cells[2]}")
    print(f"A: {args.tree_a}  B: {args.tree_b}")


if __name__ == "__main__":
    sys.exit(main())
