"""Where a request's CPU goes, in the daemon and in the leanest Python server: interpreter, SQLite,
kernel, C libraries. Needs `perf`.

    .venv/bin/python bench/cpu_split.py [--op cancel|set_priority|get|submit] [--requests 4000]

Both servers answer the same requests from the same blocking client (`bm_rpc.BareClient`), one after
the other, all processes on one CPU, while `perf record` samples the server at a fixed rate; each
sample is one period of CPU time, so the samples of a shared object (libpython, libsqlite3, the
kernel) give its µs a request. The lean server runs the same SQL and answers the same task (see
`lean_server.py`): where the two spend alike, the cost is the work itself; where they differ, it is
what msearchd does besides. Not part of run.py: a tool to find out why a figure is what it is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Gate, running_daemon, temp_root
from bm_rpc import BareClient, start_lean

SAMPLE_HZ = 10_000
# perf's names for shared objects, and how this table calls them.
SHOWN = {
    "libpython": "Python interpreter",
    "kernel": "kernel",
    "libsqlite3": "SQLite",
    "libc": "C library",
    "_cmsgpack": "msgpack",
}


def request(client: BareClient, op: str, first: int) -> Callable[[int], Any]:
    """The i-th request of `op` to a server whose pending tasks start at id `first`."""
    if op == "cancel":
        return lambda i: client.call("cancel", {"task_id": first + i, "running": False})
    if op == "set_priority":
        return lambda i: client.call("set_priority", {"task_id": first + i, "priority": i % 12})
    if op == "get":
        return lambda i: client.call("get", {"task_id": first + i})
    return lambda i: client.call("submit", {"type": "noop", "data": {"i": i}})


def sampled(pid: int, out: Path, send: Callable[[int], Any], n: int) -> dict[str, int]:
    """Samples of process `pid` by shared object while `send` makes n requests."""
    ctl, ack = out.with_suffix(".ctl"), out.with_suffix(".ack")
    os.mkfifo(ctl)
    os.mkfifo(ack)
    # perf starts with its events off, and turns them on when told: what it samples is the requests.
    argv = ["perf", "record", "-q", "-D", "-1", "--control", f"fifo:{ctl},{ack}", "-F", str(SAMPLE_HZ)]
    perf = subprocess.Popen(
        [*argv, "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with ctl.open("w") as control, ack.open() as acks:
        control.write("enable\n")
        control.flush()
        if acks.readline().strip() != "ack":
            raise RuntimeError("perf did not start sampling")
        for i in range(n):
            send(i)
        control.write("disable\n")
        control.flush()
        acks.readline()
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=60)
    report = subprocess.run(
        ["perf", "report", "-i", str(out), "--stdio", "--sort", "dso", "-n", "-g", "none"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    samples: dict[str, int] = {}
    for line in report.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith("#") and fields[0].endswith("%"):
            samples[" ".join(fields[2:]).strip("[]")] = int(fields[1])
    return samples


def by_part(samples: dict[str, int]) -> dict[str, int]:
    parts = dict.fromkeys([*SHOWN.values(), "other"], 0)
    for dso, count in samples.items():
        name = next((shown for key, shown in SHOWN.items() if key in dso), "other")
        parts[name] += count
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--op", choices=("cancel", "set_priority", "get", "submit"), default="cancel")
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    if shutil.which("perf") is None:
        sys.exit("cpu_split needs perf (linux-perf)")
    n = args.requests
    with temp_root() as root, running_daemon(root, workers=1) as d:
        lean_proc, lean, lean_first = start_lean(root, n)
        gate = Gate(root)
        try:
            with d.client() as c:
                c.submit("gate", gate.data(), priority=0)  # the worker stays busy: no dispatch meanwhile
                gate.wait_holding(1)
                ids = c.submit_many([{"type": "noop", "data": {"i": i}} for i in range(n)])["task_ids"]
                ours = BareClient(d.socket)
                ours.call("hello", {"protocol": 1})
                for pid in (d.pid, lean_proc.pid, os.getpid()):
                    os.sched_setaffinity(pid, {0})
                first = int(ids[0].removeprefix("task_"))
                results = {
                    "msearchd": sampled(d.pid, root / "ours.perf", request(ours, args.op, first), n),
                    "lean server": sampled(
                        lean_proc.pid, root / "lean.perf", request(lean, args.op, lean_first), n
                    ),
                }
        finally:
            gate.open()
            lean_proc.kill()
    parts = {name: by_part(samples) for name, samples in results.items()}
    per_request = 1e6 / SAMPLE_HZ / n
    print(f"{args.op}: µs of server CPU a request ({n} requests, all on one CPU, perf at {SAMPLE_HZ} Hz)")
    print(f"{'':20s} {'msearchd':>10s} {'lean server':>12s} {'difference':>11s}")
    for name in [*SHOWN.values(), "other", "total"]:
        if name == "total":
            ours_us, lean_us = (sum(p.values()) * per_request for p in parts.values())
        else:
            ours_us, lean_us = (p[name] * per_request for p in parts.values())
        print(f"{name:20s} {ours_us:10.1f} {lean_us:12.1f} {ours_us - lean_us:+11.1f}")


if __name__ == "__main__":
    main()
