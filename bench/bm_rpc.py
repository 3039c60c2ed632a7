"""2. Control RPC through msearchd.client.Client against a bare msgpack round trip to an echo server."""

from __future__ import annotations

import os
import random
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from benchlib import (
    BENCH,
    PYTHON,
    Context,
    Gate,
    Row,
    median,
    ms,
    percentile,
    placed,
    running_daemon,
    temp_root,
)
from floor import READ_TASK, FloorStore

NAME = "rpc"
HEADER = struct.Struct(">I")


class BareClient:
    """A blocking msgpack client with the daemon's framing and nothing else."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.next_id = 0

    def call(self, method: str, params: dict[str, Any]) -> Any:
        self.send(method, params)
        return self.receive()

    def send(self, method: str, params: dict[str, Any]) -> None:
        """Send a request without reading its answer (see `receive`)."""
        self.next_id += 1
        body = msgpack.packb({"id": self.next_id, "method": method, "params": params}, use_bin_type=True)
        self.sock.sendall(HEADER.pack(len(body)) + body)

    def receive(self) -> Any:
        """The next answer's result; an error answer stops the bench: a refusal is no sample."""
        (length,) = HEADER.unpack(self.sock.recv(4, socket.MSG_WAITALL))
        answer = msgpack.unpackb(self.sock.recv(length, socket.MSG_WAITALL), raw=False)
        if "result" not in answer:
            raise RuntimeError(f"a request was refused: {answer.get('error')}")
        return answer["result"]

    def close(self) -> None:
        self.sock.close()


def start_echo(
    root: Path, name: str = "echo", huey_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], Path]:
    """The echo server; with `huey_env` (BENCH_HUEY_DB, BENCH_HUEY_FSYNC), one that enqueues each submit
    into Huey before it answers."""
    path = root / f"{name}.sock"
    argv = [PYTHON, str(BENCH / "echo_server.py"), str(path)]
    env = None
    if huey_env is not None:
        argv.append("--huey")
        env = {**os.environ, "PYTHONPATH": str(BENCH), **huey_env}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("echo server did not start")
    return proc, path


def start_lean(
    root: Path, pending: int, checks: bool = False
) -> tuple[subprocess.Popen[str], BareClient, int]:
    """bench/lean_server.py with `pending` tasks (`checks`: making the checks every request needs), a
    client of it, and the id of its first task."""
    name = "lean-checks" if checks else "lean"
    path = root / f"{name}.sock"
    argv = [PYTHON, str(BENCH / "lean_server.py"), str(path), str(root / f"{name}.db"), str(pending)]
    if checks:
        argv.append("--checks")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, first = proc.stdout.readline().partition(" ")
    if ready != "ready":
        raise RuntimeError("the lean server did not start")
    return proc, BareClient(path), int(first)


def run(ctx: Context) -> None:
    n = 1000 if ctx.quick else 5000
    with temp_root() as root, running_daemon(root, workers=1) as d:
        # The floor's round trips and the bare ones go to two echo servers, so that each server of a
        # pass answers as many requests as the daemon does. With one echo server for both, it answered
        # two requests for each of the daemon's, and the daemon read 0.06-0.21 more over its floor in
        # each of 18 pairs of passes measured side by side (bench/README.md, "This round").
        echo, echo_path = start_echo(root)
        bare_echo, bare_echo_path = start_echo(root, "bare-echo")
        lean_proc, lean, lean_first = start_lean(root, 2 * n)
        checked_proc, checked, checked_first = start_lean(root, 2 * n, checks=True)
        servers = (d.pid, echo.pid, bare_echo.pid, lean_proc.pid, checked_proc.pid)
        try:
            gate = Gate(root)
            with d.client() as c, d.client() as setup:
                setup.submit("gate", gate.data(), priority=0)
                gate.wait_holding(1)
                ids = setup.submit_many([{"type": "noop", "data": {"i": i}} for i in range(4 * n)])[
                    "task_ids"
                ]
                nums = [int(i.removeprefix("task_")) for i in ids]
                via_floor = BareClient(echo_path)
                bare = BareClient(bare_echo_path)
                # The floor: the bare round trip plus the same transaction in process, in one sample.
                floor = FloorStore(root / "floor.db", pending=4 * n)
                fids = floor.ids

                def ours_and_floor(cancels: int) -> dict[str, Callable[[int], Any]]:
                    """Our three requests and their floors; cancels of the tasks from `cancels` on."""
                    return {
                        "cancel": lambda i: c.cancel(nums[cancels + i]),
                        "set_priority": lambda i: c.set_priority(nums[n + i], i % 12),
                        "get": lambda i: c.get(nums[n + i]),
                        "floor cancel": lambda i: (
                            via_floor.call("cancel", {"task_id": nums[cancels + i], "running": False}),
                            floor.cancel(fids[cancels + i]),
                        ),
                        "floor set_priority": lambda i: (
                            via_floor.call("set_priority", {"task_id": nums[n + i], "priority": i % 12}),
                            floor.set_priority(fids[n + i], i % 12),
                        ),
                        "floor get": lambda i: (
                            via_floor.call("get", {"task_id": nums[n + i]}),
                            floor.db.execute(READ_TASK, (fids[n + i],)).fetchone(),
                        ),
                    }

                ops = {
                    **ours_and_floor(0),
                    # The same requests, answered by the echo server: what the round trip alone costs.
                    "bare cancel": lambda i: bare.call("cancel", {"task_id": nums[i], "running": False}),
                    "bare set_priority": lambda i: bare.call(
                        "set_priority", {"task_id": nums[n + i], "priority": i % 12}
                    ),
                    "bare get": lambda i: bare.call("get", {"task_id": nums[n + i]}),
                }

                def served_by(name: str, server: BareClient, first: int) -> dict[str, Callable[[int], Any]]:
                    """The same requests, of the tasks from `first` on, answered by `server`."""
                    return {
                        f"{name} cancel": lambda i: server.call(
                            "cancel", {"task_id": first + i, "running": False}
                        ),
                        f"{name} set_priority": lambda i: server.call(
                            "set_priority", {"task_id": first + n + i, "priority": i % 12}
                        ),
                        f"{name} get": lambda i: server.call("get", {"task_id": first + n + i}),
                    }

                # A pass of its own, after the targets' (a fourth process in their samples would
                # change them): the same requests answered by the leanest Python server; then by
                # that server making the checks every request needs: what they cost in it.
                lean_ops = {**ours_and_floor(2 * n), **served_by("lean", lean, lean_first)}
                checked.call("hello", {"protocol": 1})
                checked_ops = {**ours_and_floor(3 * n), **served_by("checked", checked, checked_first)}
                for _ in range(50):  # warm up every side; not counted
                    c.get(nums[-1])
                    via_floor.call("get", {"task_id": nums[-1]})
                    bare.call("get", {"task_id": nums[-1]})
                results = interleaved(ops, n, servers)
                lean_results = interleaved(lean_ops, n, servers)
                checked_results = interleaved(checked_ops, n, servers)
                bare.close()
                via_floor.close()
                floor.close()
        finally:
            for proc in (echo, bare_echo, lean_proc, checked_proc):
                proc.terminate()
                proc.wait(timeout=10)
    for placement, times in results.items():
        bare_all = [t for k, v in times.items() if k.startswith("bare") for t in v]
        ctx.detail(
            f"{placement}: bare round trip over all request shapes: median {median(bare_all) * 1000:.0f} us, "
            f"p99 {percentile(bare_all, 99) * 1000:.0f} us ({len(bare_all)} calls)"
        )
        for op in ("cancel", "set_priority", "get"):
            ours, bare_op, floor_op = times[op], times[f"bare {op}"], times[f"floor {op}"]
            # Writes are held to their floor; a get writes nothing, so its floor is information.
            target = "ratio:<=1.25" if op != "get" else ""
            info = "" if target else " (info)"
            name = f"{op} median, {placement}{info}"
            ctx.add(Row(NAME, name, median(ours), median(floor_op), "ms", FLOOR_NAMES[op], target))
            ctx.add(
                Row(
                    NAME,
                    f"{op} median vs the bare round trip, {placement} (info)",
                    median(ours),
                    median(bare_op),
                    "ms",
                    "bare round trip",
                )
            )
            p99 = percentile
            ctx.add(
                Row(
                    NAME,
                    f"{op} p99, {placement}",
                    p99(ours, 99),
                    p99(bare_op, 99),
                    "ms",
                    "bare round trip",
                    "ratio:<=5",
                )
            )
    for key, server, results_of in (("lean", LEAN, lean_results), ("checked", CHECKED, checked_results)):
        for placement, times in results_of.items():
            for op in ("cancel", "set_priority", "get"):
                ours, server_op, floor_op = (
                    median(times[op]),
                    median(times[f"{key} {op}"]),
                    median(times[f"floor {op}"]),
                )
                name = f"{op} median vs {server}, {placement} (info)"
                ctx.add(Row(NAME, name, ours, server_op, "ms", server))
                name = f"{server} over the floor, {op}, {placement} (info)"
                ctx.add(Row(NAME, name, server_op, floor_op, "ms", FLOOR_NAMES[op]))


def interleaved(
    ops: dict[str, Callable[[int], Any]], n: int, servers: tuple[int, ...]
) -> dict[str, dict[str, list[float]]]:
    """Times of each op, ms, in shuffled order, for each placement of the client and the servers: the
    first half of the n calls of each on one, the second half on the other."""
    results: dict[str, dict[str, list[float]]] = {}
    for placement in placed(servers):
        times = results[placement] = {k: [] for k in ops}
        rng = random.Random(2)
        names = list(ops)
        half = len(results) - 1
        for i in range(half * n // 2, (half + 1) * n // 2):
            rng.shuffle(names)
            for name in names:
                t0 = time.perf_counter()
                ops[name](i)
                times[name].append(ms(time.perf_counter() - t0))
    return results


LEAN = "the leanest Python server"
CHECKED = "the leanest server with the checks of a request"
FLOOR_NAMES = {
    "cancel": "floor: round trip + the same transaction in process",
    "set_priority": "floor: round trip + the same transaction in process",
    "get": "floor: round trip + the same read in process",
}


if __name__ == "__main__":
    import sys

    run(Context(quick="--quick" in sys.argv))
