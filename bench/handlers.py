"""Task handlers the benchmark daemons run (configured in benchlib.HANDLERS_TOML)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def noop(ctx: Any, data: dict[str, Any]) -> None:
    """Do nothing: what is measured is the queue, not the work."""


def gate(ctx: Any, data: dict[str, Any]) -> None:
    """Hold this worker until the file data.path exists; leave a mark in data.started first."""
    (Path(data["started"]) / f"{os.getpid()}-{ctx.task_id}").touch()
    path = data["path"]
    while not os.path.exists(path):  # noqa: PTH110 - the cheapest check in a tight loop
        time.sleep(0.0005)
