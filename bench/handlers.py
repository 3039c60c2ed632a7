"""Task handlers the benchmark daemons run (configured in benchlib.HANDLERS_TOML)."""

from __future__ import annotations

import socket
import time
from typing import Any


def noop(ctx: Any, data: dict[str, Any]) -> None:
    """Do nothing: what is measured is the queue, not the work."""


def gate(ctx: Any, data: dict[str, Any]) -> None:
    """Hold this worker, idle, until the bench closes the connection (see benchlib.Gate)."""
    hold(data["socket"])


def hold(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        conn.recv(1)


def ticker(ctx: Any, data: dict[str, Any]) -> None:
    """Report progress `reports` times, `rate` a second; the current operation is the time of the report
    (for latency figures), or `label` and the step."""
    reports, interval = int(data["reports"]), 1.0 / float(data["rate"])
    label = data.get("label")
    due = time.monotonic()
    for i in range(1, reports + 1):
        ctx.progress(i / reports, f"{label} {i}/{reports}" if label else f"{time.time():.6f}")
        due += interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def fail(ctx: Any, data: dict[str, Any]) -> None:
    from msearchd.handlers import TaskFailed

    raise TaskFailed(data.get("message", "asked to fail"))


if __name__ == "__main__":  # a gate job for peers that run commands (tsp)
    import sys

    hold(sys.argv[1])
