"""The Huey peer: a SqliteHuey with a no-op task, importable by `huey_consumer huey_app.huey`.

The database file comes from BENCH_HUEY_DB. fsync=False sets synchronous=OFF, which in WAL mode costs
a commit no more than msearchd's synchronous=NORMAL does: the stricter comparison for us.
"""

from __future__ import annotations

import os
from pathlib import Path

from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ.get("BENCH_HUEY_DB", "huey-bench.db"), fsync=False)


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
