"""The in-process half of a floor: the SQL a request commits, run by plain sqlite3 in the bench.

A floor is what no daemon that commits before answering can beat: a bare round trip (the echo server)
plus the same transaction done in process, on a store of the same schema and settings (WAL,
synchronous=NORMAL, the store's checkpoint interval). Each sample of a floor adds the two, timed in the
same iteration, so that both halves see the machine alike.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgpack

WAITING = ("pending", "blocked")
INSERT_TASK = (
    "INSERT INTO tasks (type, status, priority, data, blocked_reason, retry_of, created_at, "
    "submitted_uid, submitted_pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_EVENT = "INSERT INTO task_events (task_id, time, event, detail, uid, pid) VALUES (?, ?, ?, ?, ?, ?)"
# The task as the daemon reads it before changing it (its columns and its dependencies).
READ_TASK = (
    "SELECT id, type, status, priority, data, progress, current_operation, attempts, error, "
    "blocked_reason, stop_reason, retry_of, retried_as, created_at, started_at, finished_at, worker_pid, "
    "(SELECT group_concat(depends_on) FROM deps WHERE deps.task_id = tasks.id) FROM tasks WHERE id = ?"
)


class FloorStore:
    """A fresh store file of the product's schema, written by plain sqlite3 as the daemon writes."""

    def __init__(self, path: Path, pending: int = 0) -> None:
        from msearchd.store import AUTOCHECKPOINT, Store

        Store(path).close()  # the same tables and indexes as the daemon's
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT}")
        self.uid, self.pid = os.getuid(), os.getpid()
        self.data = msgpack.packb({"i": 1})
        self.ids: list[int] = []
        if pending:
            now = time.time()
            self.db.execute("BEGIN IMMEDIATE")
            first = self.db.execute(INSERT_TASK, self._row(now)).lastrowid
            self.db.executemany(INSERT_TASK, [self._row(now)] * (pending - 1))
            self.db.execute("COMMIT")
            assert first is not None
            self.ids = list(range(first, first + pending))

    def _row(self, now: float) -> tuple[object, ...]:
        return ("noop", "pending", 6, self.data, None, None, now, self.uid, self.pid)

    def submit(self) -> int:
        """One task row, one commit: what a lone submit writes."""
        self.db.execute("BEGIN IMMEDIATE")
        task_id = self.db.execute(INSERT_TASK, self._row(time.time())).lastrowid
        self.db.execute("COMMIT")
        assert task_id is not None
        return task_id

    def complete(self, task_id: int) -> None:
        """One task row marked completed, one commit: what the daemon writes when a task ends."""
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute(
            "UPDATE tasks SET status = 'completed', progress = 1.0, started_at = coalesce(?, started_at), "
            "finished_at = ?, error = NULL, stop_reason = NULL WHERE id = ?",
            (now, now, task_id),
        )
        self.db.execute("COMMIT")

    def set_priority(self, task_id: int, priority: int) -> tuple[Any, ...]:
        """The read, then the task row and its history row in one commit, as `set_priority` does;
        returns the row read."""
        row = self.db.execute(READ_TASK, (task_id,)).fetchone()
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute(
            "UPDATE tasks SET priority = ? WHERE id = ? AND status IN (?, ?)", (priority, task_id, *WAITING)
        )
        detail = msgpack.packb({"old": 6, "new": priority})
        self.db.execute(INSERT_EVENT, (task_id, time.time(), "priority_changed", detail, self.uid, self.pid))
        self.db.execute("COMMIT")
        return row

    def cancel(self, task_id: int) -> tuple[Any, ...]:
        """The read, then the history row, the task row and the look for dependents in one commit;
        returns the row read."""
        row = self.db.execute(READ_TASK, (task_id,)).fetchone()
        self.db.execute("BEGIN IMMEDIATE")
        detail = msgpack.packb({"by": "cancel", "running": False})
        now = time.time()
        self.db.execute(INSERT_EVENT, (task_id, now, "cancel_requested", detail, self.uid, self.pid))
        self.db.execute(
            "UPDATE tasks SET status = ?, finished_at = ?, stop_reason = ?, blocked_reason = ? "
            "WHERE id = ? AND status IN (?, ?)",
            ("cancelled", now, "not_started", None, task_id, *WAITING),
        )
        self.db.execute(
            "SELECT DISTINCT d.depends_on FROM deps d JOIN tasks t ON t.id = d.task_id "
            "WHERE d.depends_on IN (?) AND t.status IN ('pending', 'blocked')",
            (task_id,),
        ).fetchall()
        self.db.execute("COMMIT")
        return row

    def close(self) -> None:
        self.db.close()
