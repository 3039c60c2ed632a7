"""Retention in the PostgreSQL store: which finished tasks may go, and removing them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from msearchd.store.rows import FINISHED, UNREFERENCED, prunable_ids

if TYPE_CHECKING:
    from msearchd.store.postgres.connection import Connection
else:
    Connection = object  # PgStore puts the real one last among its bases


class Maintenance(Connection):
    """Pruning: the reads on connections of their own, so they may run on another thread."""

    def prunable(self, finished_before: float, keep: int, limit: int) -> list[int]:
        """Up to `limit` finished tasks, oldest first, that finished before `finished_before` or are
        beyond the newest `keep` finished ones (no bound when `keep` is negative); never one a waiting
        or running task depends on, nor one whose retry has not finished. It may run on another
        thread: `prune` checks again what may have changed meanwhile."""
        with self._reader() as conn:
            return prunable_ids(conn, "%s", finished_before, keep, limit)

    def stale_bulk_requests(self, before: float, keep: Sequence[str]) -> list[int]:
        """Bulk requests older than `before` that no task points at, but those recorded as one of
        `keep`. Like `prunable`, it may run on another thread."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT e.id FROM task_events e WHERE e.task_id IS NULL AND e.time < %s "
                "AND NOT e.event = ANY(%s) AND NOT EXISTS (SELECT 1 FROM tasks WHERE bulk_request = e.id) "
                "ORDER BY e.id",
                (before, list(keep)),
            )
            return [r[0] for r in rows]

    def prune(self, ids: Sequence[int]) -> list[int]:
        """Remove those of `ids` still prunable, with their dependencies and events; returns the ones
        removed. Call it inside a transaction. The rows are locked first, in id order, so that two
        daemons pruning at once wait for each other."""
        rows = self._run(
            "DELETE FROM tasks AS t WHERE id IN (SELECT id FROM tasks WHERE id = ANY(%s) ORDER BY id "
            f"FOR UPDATE) AND status IN {FINISHED} AND {UNREFERENCED} RETURNING id",
            (list(ids),),
        ).fetchall()
        gone = sorted(r[0] for r in rows)
        if gone:
            self._run("DELETE FROM deps WHERE task_id = ANY(%s)", (gone,))
            self._run("DELETE FROM task_events WHERE task_id = ANY(%s)", (gone,))
        return gone
