"""The Huey peer: a SqliteHuey with a no-op task, importable by `huey_consumer huey_app.huey`.

The database file comes from BENCH_HUEY_DB; BENCH_HUEY_FSYNC picks `default` (fsync not passed:
synchronous=FULL) or `off` (fsync=False: synchronous=OFF). The targets were set from figures of Huey as
configured by default, so `default` is their peer; `off` has msearchd's durability (it survives kill -9,
not a power loss), the stricter comparison for us, so it stays for information.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huey import SqliteHuey

FSYNC = os.environ.get("BENCH_HUEY_FSYNC", "default")
if FSYNC not in ("default", "off"):
    raise ValueError(f"BENCH_HUEY_FSYNC must be 'default' or 'off', not {FSYNC!r}")
_options: dict[str, Any] = {"fsync": False} if FSYNC == "off" else {}

huey = SqliteHuey("bench", filename=os.environ.get("BENCH_HUEY_DB", "huey-bench.db"), **_options)


@huey.task()
def noop(i: int | None = None) -> None:
    return None


@huey.task()
def gate(socket_path: str) -> None:
    """Hold this worker until the bench opens the gate, as the msearchd bench's gate handler does."""
    from handlers import hold

    hold(socket_path)


@huey.task()
def mark(path: str) -> None:
    """Runs after every task enqueued before it: tells the bench the queue is drained."""
    Path(path).touch()
