"""Task handlers the benchmark daemons run (configured in benchlib.HANDLERS_TOML)."""

from __future__ import annotations

import socket
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


if __name__ == "__main__":  # a gate job for peers that run commands (tsp)
    import sys

    hold(sys.argv[1])
