"""Where a request's CPU goes, in the daemon and in the leanest Python server: interpreter, SQLite,
kernel, C libraries; or a `command` task's, among the daemon, its workers and the commands. Needs `perf`.

    .venv/bin/python bench/cpu_split.py [--op cancel|set_priority|get|submit] [--requests 4000]
    .venv/bin/python bench/cpu_split.py --op command [--requests 3000]

Both servers answer the same requests from the same blocking client (`bm_rpc.BareClient`), one after
the other, all processes on one CPU, while `perf record` samples the server at a fixed rate; each
sample is one period of CPU time, so the samples of a shared object (libpython, libsqlite3, the
kernel) give its µs a request. The lean server runs the same SQL and answers the same task (see
`lean_server.py`): where the two spend alike, the cost is the work itself; where they differ, it is
what msearchd does besides.

With `--op command`, 2 workers run `command` tasks of `true`, as the dispatch benchmark does: the CPU
each process spends a task (psutil), and what the workers and their commands spend it on (perf,
following the commands the workers start). Not part of run.py: a tool to find out why a figure is what
it is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
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
    "ld-linux": "dynamic loader",
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


def sampled(pids: list[int], out: Path, work: Callable[[], Any]) -> dict[str, int]:
    """Samples of processes `pids`, and of those they start meanwhile, by shared object, while
    `work` runs."""
    ctl, ack = out.with_suffix(".ctl"), out.with_suffix(".ack")
    os.mkfifo(ctl)
    os.mkfifo(ack)
    # perf starts with its events off, and turns them on when told: what it samples is the requests.
    argv = ["perf", "record", "-q", "-D", "-1", "--control", f"fifo:{ctl},{ack}", "-F", str(SAMPLE_HZ)]
    perf = subprocess.Popen(
        [*argv, "-o", str(out), "-p", ",".join(map(str, pids))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with ctl.open("w") as control, ack.open() as acks:
        control.write("enable\n")
        control.flush()
        if acks.readline().strip() != "ack":
            raise RuntimeError("perf did not start sampling")
        work()
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


def each(send: Callable[[int], Any], n: int) -> Callable[[], None]:
    def work() -> None:
        for i in range(n):
            send(i)

    return work


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
    ops = ("cancel", "set_priority", "get", "submit", "command")
    parser.add_argument("--op", choices=ops, default="cancel")
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    if shutil.which("perf") is None:
        sys.exit("cpu_split needs perf (linux-perf)")
    if args.op == "command":
        command_split(args.requests)
        return
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
                    "msearchd": sampled([d.pid], root / "ours.perf", each(request(ours, args.op, first), n)),
                    "lean server": sampled(
                        [lean_proc.pid], root / "lean.perf", each(request(lean, args.op, lean_first), n)
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
            if not ours_us and not lean_us:
                continue
        print(f"{name:20s} {ours_us:10.1f} {lean_us:12.1f} {ours_us - lean_us:+11.1f}")


def cpu_s(proc: psutil.Process) -> tuple[float, float]:
    """CPU seconds of a process, and of the children it has reaped."""
    t = proc.cpu_times()
    return t.user + t.system, t.children_user + t.children_system


def command_split(n: int) -> None:
    """CPU a `command` task of `true` costs each process, and what the workers and commands spend it on."""
    task = {"type": "command", "data": {"argv": ["true"]}}
    with temp_root() as root, running_daemon(root, workers=2) as d, d.client() as c:
        d.warm_up(4)
        daemon = psutil.Process(d.pid)
        workers = [p for p in daemon.children() if "msearchd.worker" in " ".join(p.cmdline())]
        figures: dict[str, float] = {}
        rate = 0.0
        parts: dict[str, int] = {}
        for sampling in (False, True):  # the CPU figures from a run without perf, its split from one with
            gate = Gate(root, f"gate{int(sampling)}")
            for _ in workers:
                c.submit("gate", gate.data(), priority=0)
            gate.wait_holding(len(workers))
            batches = (c.submit_many([task] * min(1000, n - start)) for start in range(0, n, 1000))
            ids = [t for batch in batches for t in batch["task_ids"]]
            before = [cpu_s(p) for p in (daemon, *workers)]
            started = time.perf_counter()

            def drain(gate: Gate = gate, ids: list[str] = ids) -> None:
                gate.open()
                c.wait(ids, timeout=600)

            if sampling:
                pids = [w.pid for w in workers]
                parts = by_part(sampled(pids, root / "command.perf", drain))
                continue
            drain()
            wall = time.perf_counter() - started
            after = [cpu_s(p) for p in (daemon, *workers)]
            spent = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(before, after, strict=True)]
            figures = {
                "daemon": spent[0][0],
                "workers": sum(own for own, _ in spent[1:]),
                "the commands": sum(kids for _, kids in spent[1:]),
            }
            rate = len(ids) / wall
    total = sum(figures.values())
    print(f"command `true`, 2 workers: {rate:,.0f} tasks/s; µs of CPU a task")
    for name, seconds in figures.items():
        print(f"  {name:14s} {seconds / n * 1e6:8.0f}")
    print(f"  {'total':14s} {total / n * 1e6:8.0f}")
    cpus = len(os.sched_getaffinity(0))
    print(
        f"on {cpus} CPUs: at most {cpus * n / total:,.0f} tasks/s at this CPU a task, "
        f"{cpus * n / figures['the commands']:,.0f}/s if the daemon and the workers cost nothing"
    )
    sampled_total = sum(parts.values()) or 1
    print("the workers and the commands, by part (perf):")
    for name, count in sorted(parts.items(), key=lambda item: -item[1]):
        if count:
            print(f"  {name:20s} {count / sampled_total * 100:5.1f}%")


if __name__ == "__main__":
    main()
