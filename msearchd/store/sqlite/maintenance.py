"""Retention in the SQLite store: which finished tasks may go, and removing them."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from msearchd.store.rows import FINISHED, UNREFERENCED, prunable_ids
from msearchd.store.sqlite.connection import BUSY_TIMEOUT_MS, CHUNK, marks

if TYPE_CHECKING:
    from msearchd.store.sqlite.connection import Connection
else:
    Connection = object  # Store puts the real one last among its bases


class Maintenance(Connection):
    """Pruning: reads on connections of their own, so they may run on another thread."""

    def prunable(self, finished_before: float, keep: int, limit: int) -> list[int]:
        """Up to `limit` finished tasks that may go, oldest first: finished before `finished_before`,
        or beyond the newest `keep` finished ones (no bound when `keep` is negative); never one a
        waiting or running task depends on, nor one whose retry has not finished.

        It reads on a connection of its own, so it may run on another thread: the deletion
        (`prune`) checks again, under the write lock, what may have changed meanwhile.
        """
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            return prunable_ids(db, "?", finished_before, keep, limit)
        finally:
            db.close()

    def stale_bulk_requests(self, before: float, keep: Sequence[str]) -> list[int]:
        """Requests about many tasks (cancel-all) made before `before` that no task points at any more,
        but those recorded as one of `keep`. Like `prunable`, it reads on a connection of its own."""
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            old = db.execute(
                f"SELECT id FROM task_events WHERE task_id IS NULL AND time < ? "
                f"AND event NOT IN ({marks(len(keep))}) ORDER BY id",
                (before, *keep),
            ).fetchall()
            if not old:
                # Most passes of the pruner end here. The tasks a request points at are found by
                # reading every task (no index holds `bulk_request`: a bulk cancel would write it
                # into one for each task it cancels): about 130 ms a million tasks here.
                return []
            used = {
                r[0] for r in db.execute("SELECT DISTINCT bulk_request FROM tasks WHERE bulk_request > 0")
            }
            return [r[0] for r in old if r[0] not in used]
        finally:
            db.close()

    def prune(self, ids: Sequence[int]) -> list[int]:
        """Remove those of `ids` still finished and unreferenced, with their dependencies and events;
        returns the ones removed. Call it inside a transaction."""
        removed: list[int] = []
        for start in range(0, len(ids), CHUNK):
            part = list(ids[start : start + CHUNK])
            rows = self._db.execute(
                f"DELETE FROM tasks AS t WHERE id IN ({marks(len(part))}) AND status IN {FINISHED} "
                f"AND {UNREFERENCED} RETURNING id",
                part,
            ).fetchall()
            gone = [r[0] for r in rows]
            if gone:
                gone_marks = marks(len(gone))
                self._db.execute(f"DELETE FROM deps WHERE task_id IN ({gone_marks})", gone)
                self._db.execute(f"DELETE FROM task_events WHERE task_id IN ({gone_marks})", gone)
            removed += gone
        return sorted(removed)
