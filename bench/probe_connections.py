"""What one connection costs the others: figures for a pipelining client and for many connections.

    .venv/bin/python bench/probe_connections.py [--tasks 100000] [--stats 2000] [--connections 40]

1. stall: with --tasks tasks queued, one client pipelines --stats `stats` requests in one write while
   another calls `status` in a loop; prints how long the pipeline took and the slowest `status`.
2. memory: --connections connections each send all but the last byte of a 16 MiB frame; prints the
   daemon's resident memory before and after.

Not part of run.py: these are probes of behaviour, without a peer to compare with. The daemon is the
`msearchd` beside this interpreter, importing msearchd from PYTHONPATH if that is set.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import psutil

from msearchd import protocol
from msearchd.client import Client

MSEARCHD = str(Path(sys.executable).parent / "msearchd")


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


def start(root: Path) -> tuple[subprocess.Popen[bytes], Path]:
    sock = root / "run" / "msearchd.sock"
    env = {**os.environ, "MSEARCH_SOCKET": str(sock), "MSEARCH_STATE_DIR": str(root / "state")}
    config = root / "msearchd.toml"
    config.write_text("")
    proc = subprocess.Popen(
        [MSEARCHD, "--workers", "1", "--config", str(config), "--log-level", "warning"],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            Client(sock).close()
            return proc, sock
        except Exception:
            time.sleep(0.05)
    raise SystemExit("msearchd did not start")


def greeted(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.sendall(frame({"id": 0, "method": "hello", "params": {"protocol": protocol.PROTOCOL_VERSION}}))
    protocol.recv_frame(sock)
    return sock


def stall(path: Path, tasks: int, n: int) -> None:
    with Client(path) as c:
        gate = c.submit("command", {"argv": ["sleep", "3600"]}, priority=0)  # keeps the worker busy
        for start_ in range(0, tasks, 10_000):
            c.submit_many([{"type": "file_scan"}] * min(10_000, tasks - start_))
        one = time.perf_counter()
        c.stats()
        print(f"stats alone: {1000 * (time.perf_counter() - one):.1f} ms with {tasks} tasks")
        pipeliner = greeted(path)
        done = threading.Event()
        slowest = [0.0]
        calls = [0]

        def probe() -> None:
            with Client(path) as other:
                while not done.is_set():
                    t = time.perf_counter()
                    other.status()
                    slowest[0] = max(slowest[0], time.perf_counter() - t)
                    calls[0] += 1

        prober = threading.Thread(target=probe)
        began = time.perf_counter()
        pipeliner.sendall(
            b"".join(frame({"id": i, "method": "stats", "params": {}}) for i in range(1, n + 1))
        )
        prober.start()
        for _ in range(n):
            protocol.recv_frame(pipeliner)
        took = time.perf_counter() - began
        done.set()
        prober.join()
        print(
            f"{n} pipelined stats: {took:.2f} s; concurrent status: {calls[0]} calls, "
            f"slowest {slowest[0]:.3f} s"
        )
        c.cancel(gate["id"], running=True)


def memory(proc: subprocess.Popen[bytes], path: Path, connections: int) -> None:
    daemon = psutil.Process(proc.pid)
    before = daemon.memory_info().rss
    size = 16 * 1024 * 1024 - 64
    request = frame({"id": 1, "method": "count", "params": {}, "pad": b"x" * size})
    socks = [greeted(path) for _ in range(connections)]
    sent = [0] * connections
    for s in socks:
        s.setblocking(False)
    while True:
        unsent = [s for s, k in zip(socks, sent, strict=True) if k < len(request) - 1]
        _, writable, _ = select.select([], unsent, [], 2.0)
        if not writable:
            break
        for s in writable:
            i = socks.index(s)
            with contextlib.suppress(BlockingIOError):
                sent[i] += s.send(request[sent[i] : min(sent[i] + (1 << 20), len(request) - 1)])
    after = daemon.memory_info().rss
    print(
        f"{connections} connections sending 16 MiB frames: daemon read {sum(sent) / 2**20:.0f} MiB, "
        f"resident {before / 2**20:.0f} -> {after / 2**20:.0f} MiB"
    )
    for s in socks:
        s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--stats", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=40)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ms-probe-", dir="/tmp"))
    proc, path = start(root)
    try:
        stall(path, args.tasks, args.stats)
        memory(proc, path, args.connections)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
