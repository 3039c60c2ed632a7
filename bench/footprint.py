"""How much interpreter work one request is, in the daemon and in the leanest Python server, and what
that work costs once other code has run between two requests.

    .venv/bin/python bench/footprint.py [--requests 2000] [--cold-kib 2048] [--cpu 0]

In process, no socket: each request's frame is handed to the daemon's `rpc.connection.Connection`
(over a `TaskService` and `Store` of its own) and to `bench/lean_server.py`'s protocol (over
`floor.FloorStore`), both writing their answers to a transport that keeps them.

- Bytecodes and Python calls a request: counted by a trace function, so they do not depend on the
  machine's noise. They move with every change to the request path, and only with it.
- µs a request, warm: the requests one after another, shuffled among the servers and operations.
- µs a request, cold: the same, each request after a stand-in for what runs between two requests in
  a real round trip (the client, the kernel): a write to every cache line of a buffer of
  `--cold-kib` KiB and a pass over unrelated Python objects. The daemon then pays for each piece of
  code and data it touches again; the distance between the two servers grows with what the daemon's
  request path touches, not only with the time it takes warm.

With `--instructions`, the machine instructions a request takes instead, as valgrind's callgrind
counts them (the difference between runs of 1,000 and 3,000 requests of a kind, over 2,000): in the
daemon, in the lean server, and in the lean server with the checks every request needs. Like the
bytecodes, they do not depend on the machine's noise (each run has the same hash seed and no address
randomisation: they repeat to within a few instructions); unlike them, they count the C under the
Python too (SQLite, msgpack, the interpreter itself). What they leave out is where the time of a cold
request goes: the same instructions take longer once their code and data are out of the caches. It
also counts the client's side of a `set_priority`, a client process under callgrind with the daemon
outside it: through `msearchd.client`, and through the bench's bare socket client.

    .venv/bin/python bench/footprint.py --instructions     # needs valgrind; ~10 minutes on 2 cores

Not part of run.py: a tool to see where the distance between the daemon and the floor comes from.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
from benchlib import Gate, running_daemon, temp_root
from bm_rpc import BareClient
from floor import FloorStore
from lean_server import Checked, CheckedStore, Lean

from msearchd import protocol
from msearchd.client import Client
from msearchd.config import Settings
from msearchd.rpc.connection import Connection
from msearchd.rpc.server import RpcServer
from msearchd.service import TaskService
from msearchd.store import Store

OPS = ("get", "set_priority", "cancel", "submit")
BLOCK = 10  # requests of one kind timed in a row


class Kept(asyncio.Transport):
    """A transport that keeps what is written: the answers are checked at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def resume_reading(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class StandIn:
    """What runs between two requests of a real round trip, roughly: other memory and other code."""

    def __init__(self, kib: int) -> None:
        self.buffer = bytearray(kib * 1024)
        self.objects = [{"n": i, "s": str(i)} for i in range(3000)]

    def __call__(self) -> None:
        buffer = self.buffer
        for i in range(0, len(buffer), 64):
            buffer[i] = (buffer[i] + 1) & 0xFF
        sum(len(o["s"]) for o in self.objects)


def frames(ids: list[int], first_id: int, n: int) -> dict[str, list[bytes]]:
    """n requests of each operation, on tasks of `ids` (a third each for get, set_priority, cancel)."""

    def request(i: int, method: str, params: dict[str, Any]) -> bytes:
        return protocol.encode(protocol.request(first_id + i, method, params))

    return {
        "get": [request(i, "get", {"task_id": ids[i]}) for i in range(n)],
        "set_priority": [
            request(n + i, "set_priority", {"task_id": ids[n + i], "priority": i % 12}) for i in range(n)
        ],
        "cancel": [request(2 * n + i, "cancel", {"task_id": ids[2 * n + i]}) for i in range(n)],
        "submit": [
            request(
                3 * n + i, "submit", {"type": "noop", "data": {"i": i}, "priority": None, "depends_on": []}
            )
            for i in range(n)
        ],
    }


def count(feed: Callable[[bytes], None], requests: list[bytes]) -> tuple[float, float]:
    """Bytecodes and Python calls a request, over `requests`."""
    ops = calls = 0

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal ops, calls
        frame.f_trace_opcodes = True
        if event == "opcode":
            ops += 1
        elif event == "call":
            calls += 1
        return tracer

    sys.settrace(tracer)
    try:
        for data in requests:
            feed(data)
    finally:
        sys.settrace(None)
    return ops / len(requests), calls / len(requests)


async def measure(n: int, cold_kib: int) -> None:
    with tempfile.TemporaryDirectory(prefix="msb-") as folder:
        root = Path(folder)
        service = TaskService(Store(root / "tasks.db"), Settings(socket_path=root / "s.sock", state_dir=root))
        daemon = Connection(RpcServer(service, root / "s.sock", lambda: None), (os.getuid(), os.getpid()))
        daemon_out = Kept()
        daemon.connection_made(daemon_out)
        daemon.data_received(protocol.encode(protocol.request(0, "hello", {"protocol": 1})))
        # A task for each get, set_priority and cancel: n of each counted, then n of each timed.
        tasks = service.submit_many([{"type": "noop", "data": {"i": 1}}] * (6 * n))["task_ids"]
        ours = [int(t.removeprefix("task_")) for t in tasks]
        lean_store = FloorStore(root / "lean.db", pending=6 * n)
        lean = Lean(lean_store)
        lean_out = Kept()
        lean.connection_made(lean_out)
        servers: dict[str, Callable[[bytes], None]] = {
            "msearchd": daemon.data_received,
            "lean": lean.data_received,
        }
        counted = {"msearchd": frames(ours[: 3 * n], 1, n), "lean": frames(lean_store.ids[: 3 * n], 1, n)}
        timed = {
            "msearchd": frames(ours[3 * n :], 4 * n + 1, n),
            "lean": frames(lean_store.ids[3 * n :], 4 * n + 1, n),
        }

        print(f"{'request':14s} {'bytecodes':>21s} {'Python calls':>17s}")
        print(f"{'':14s} {'msearchd':>10s} {'lean':>10s} {'msearchd':>8s} {'lean':>8s}")
        for op in OPS:
            (ours_ops, ours_calls), (lean_ops, lean_calls) = (
                count(servers[s], counted[s][op]) for s in ("msearchd", "lean")
            )
            print(f"{op:14s} {ours_ops:10.0f} {lean_ops:10.0f} {ours_calls:8.0f} {lean_calls:8.0f}")

        stand_in = StandIn(cold_kib)
        samples: dict[tuple[str, str, bool], list[float]] = {}
        order = [(s, op, cold) for s in servers for op in OPS for cold in (False, True)]
        rng = random.Random(3)
        for block in range(n // (2 * BLOCK)):
            rng.shuffle(order)
            for server, op, cold in order:
                # Half the frames warm, half cold. Warm: a block of the same request, the first two
                # not counted; cold: each after the stand-in.
                start = (2 * block + cold) * BLOCK
                times = samples.setdefault((server, op, cold), [])
                for k, data in enumerate(timed[server][op][start : start + BLOCK]):
                    if cold:
                        stand_in()
                    t0 = time.perf_counter()
                    servers[server](data)
                    elapsed = time.perf_counter() - t0
                    if cold or k >= 2:
                        times.append(elapsed)

        for out in (daemon_out, lean_out):
            errors = [m for m in (msgpack.unpackb(w[4:]) for w in out.written) if "result" not in m]
            if errors:
                raise SystemExit(f"a request failed: {errors[0]}")

        print(
            f"\nµs a request, median of {n // 2}; cold: after {cold_kib} KiB and other objects were touched"
        )
        columns = f"{'msearchd':>9s} {'lean':>7s} {'added':>7s}"
        print(f"{'request':14s} {columns}   {columns}")
        print(f"{'':14s} {'warm':>25s}   {'cold':>25s}")
        for op in OPS:
            row = []
            for cold in (False, True):
                a, b = (statistics.median(samples[(s, op, cold)]) * 1e6 for s in ("msearchd", "lean"))
                row.append(f"{a:9.1f} {b:7.1f} {a - b:7.1f}")
            print(f"{op:14s} {row[0]}   {row[1]}")


# Requests of a kind fed under callgrind: the instructions of the difference, over the difference.
FEWER, MORE = 1000, 3000
WARM_REQUESTS = 100  # fed before either: the code paths are specialised, the caches filled
INSTRUCTION_SERVERS = ("msearchd", "lean", "checked")


async def feed(server: str, op: str, n: int) -> None:
    """Set up `server` over a store of MORE + WARM_REQUESTS tasks (the same whatever `n`), then feed
    it WARM_REQUESTS and `n` requests of `op`: what `--instructions` runs under callgrind."""
    with tempfile.TemporaryDirectory(prefix="msb-") as folder:
        root = Path(folder)
        tasks = MORE + WARM_REQUESTS
        out = Kept()
        handler: asyncio.Protocol
        if server == "msearchd":
            service = TaskService(
                Store(root / "tasks.db"), Settings(socket_path=root / "s.sock", state_dir=root)
            )
            handler = Connection(
                RpcServer(service, root / "s.sock", lambda: None), (os.getuid(), os.getpid())
            )
            ids = [
                int(t.removeprefix("task_"))
                for t in service.submit_many([{"type": "noop"}] * tasks)["task_ids"]
            ]
        else:
            store = (CheckedStore if server == "checked" else FloorStore)(root / "lean.db", pending=tasks)
            handler = Checked(store) if server == "checked" else Lean(store)
            ids = store.ids
        handler.connection_made(out)
        handler.data_received(protocol.encode(protocol.request(0, "hello", {"protocol": 1})))
        # Each request of a kind gets a task of its own: frames() takes the kind's share from the third.
        requests = frames([ids[i % tasks] for i in range(3 * tasks)], 1, tasks)[op]
        for data in requests[: WARM_REQUESTS + n]:
            handler.data_received(data)
        errors = [m for m in (msgpack.unpackb(w[4:]) for w in out.written) if "result" not in m]
        if errors:
            raise SystemExit(f"a request failed: {errors[0]}")


def feed_client(kind: str, socket_path: str, first: int, n: int) -> None:
    """WARM_REQUESTS and `n` `set_priority` calls, of the tasks from `first` on, through `kind` of
    client: what `--instructions` runs under callgrind for the client's side."""
    calls = range(WARM_REQUESTS + n)
    if kind == "msearchd.client":
        client = Client(socket_path)
        for i in calls:
            client.set_priority(first + i, i % 12)
        return
    bare = BareClient(Path(socket_path))
    bare.call("hello", {"protocol": protocol.PROTOCOL_VERSION})
    for i in calls:
        bare.call("set_priority", {"task_id": first + i, "priority": i % 12})


def instructions() -> None:
    """Instructions a request in each server, by callgrind (see the module's documentation)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")

    # The same hash seed and no address randomisation in every run: the counts then repeat to within a
    # few instructions, where they moved by about 1% from run to run.
    setarch = shutil.which("setarch")
    fixed = [setarch, "-R"] if setarch is not None else []
    env = {**os.environ, "PYTHONHASHSEED": "0"}

    def collected(*feed: str) -> int:
        argv = [*fixed, valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        argv += [sys.executable, __file__]
        result = subprocess.run([*argv, *feed], capture_output=True, text=True, check=True, env=env)
        found = re.search(r"Collected : (\d+)", result.stderr)
        if found is None:
            raise SystemExit(f"callgrind gave no count for {feed}: {result.stderr[-500:]}")
        return int(found[1])

    runs = [(s, op, n) for op in OPS for s in INSTRUCTION_SERVERS for n in (FEWER, MORE)]
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # each run is a process of its own
        totals = dict(zip(runs, pool.map(lambda run: collected("--feed", *map(str, run)), runs), strict=True))
    print(f"{'request':14s} " + " ".join(f"{s:>10s}" for s in INSTRUCTION_SERVERS) + "   (instructions)")
    for op in OPS:
        each = [(totals[s, op, MORE] - totals[s, op, FEWER]) / (MORE - FEWER) for s in INSTRUCTION_SERVERS]
        print(f"{op:14s} " + " ".join(f"{c:10,.0f}" for c in each))

    # The client's side: a daemon with its one worker held, and a pending task for each call.
    with temp_root() as root, running_daemon(root, workers=1) as daemon, daemon.client() as setup:
        gate = Gate(root)
        setup.submit("gate", gate.data(), priority=0)
        gate.wait_holding(1)
        tasks = setup.submit_many([{"type": "noop"}] * (MORE + WARM_REQUESTS))["task_ids"]
        first = str(int(tasks[0].removeprefix("task_")))
        for kind in ("msearchd.client", "bare"):  # one after the other: they share the daemon's tasks
            fewer, more = (
                collected("--feed-client", kind, str(daemon.socket), first, str(n)) for n in (FEWER, MORE)
            )
            print(
                f"a set_priority call in the client process, {kind}: {(more - fewer) / (MORE - FEWER):,.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="timed requests of each kind (default 2000)"
    )
    parser.add_argument("--cold-kib", type=int, default=2048, help="memory touched between cold requests")
    parser.add_argument("--cpu", type=int, default=0, help="pin the process to this CPU (default 0)")
    parser.add_argument(
        "--instructions", action="store_true", help="count machine instructions instead (valgrind)"
    )
    parser.add_argument("--feed", nargs=3, metavar=("SERVER", "OP", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--feed-client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.feed:
        server, op, n = args.feed
        asyncio.run(feed(server, op, int(n)))
    elif args.feed_client:
        kind, socket_path, first, n = args.feed_client
        feed_client(kind, socket_path, int(first), int(n))
    elif args.instructions:
        instructions()
    else:
        os.sched_setaffinity(0, {args.cpu})
        asyncio.run(measure(args.requests, args.cold_kib))


if __name__ == "__main__":
    main()
