"""Cancels, dependencies handed over, and the history rows they leave, in the PostgreSQL store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from msearchd.protocol import pack
from msearchd.store.postgres.connection import CHUNK

if TYPE_CHECKING:
    from msearchd.store.postgres.connection import Connection
else:
    Connection = object  # PgStore puts the real one last among its bases

INSERT_EVENT = (
    "INSERT INTO task_events (task_id, time, event, detail, uid, pid) VALUES (%s, %s, %s, %s, %s, %s)"
)


class Cancels(Connection):
    """Cancelling waiting tasks, one by one or in bulk, and recording who asked."""

    if TYPE_CHECKING:

        def dependents(  # see Queries
            self, task_id: int, statuses: Sequence[str] = ..., after: int = 0, limit: int = -1
        ) -> list[int]: ...

    def cancel_one(
        self, task_id: int, requested_at: float, now: float, by: str, uid: int | None, pid: int | None
    ) -> bool:
        cancelled = self._run(
            "UPDATE tasks SET status = 'cancelled', finished_at = %s, stop_reason = 'not_started', "
            "blocked_reason = NULL WHERE id = %s AND status IN ('pending', 'blocked')",
            (now, task_id),
        ).rowcount
        if not cancelled:
            return False
        detail = pack({"by": by, "running": False})
        self._run(INSERT_EVENT, (task_id, requested_at, "cancel_requested", detail, uid, pid))
        return True

    def cancel_waiting(self, ids: Sequence[int], now: float, error: str | None = None) -> list[int]:
        """Cancel those of `ids` still pending or blocked; returns the ones it cancelled."""
        rows = self._run(
            "UPDATE tasks SET status = 'cancelled', finished_at = %s, stop_reason = 'not_started', "
            "error = %s, blocked_reason = NULL WHERE id = ANY(%s) AND status IN ('pending', 'blocked') "
            "RETURNING id",
            (now, error, list(ids)),
        ).fetchall()
        return sorted(r[0] for r in rows)

    def replace_dependency(self, old: int, new: int, limit: int = CHUNK) -> list[int]:
        """Point up to `limit` waiting dependents of `old` at `new`, first by id; returns them. Call
        it until it returns fewer than `limit`."""
        dependents = self.dependents(old, limit=limit)
        if dependents:
            self._run(
                "UPDATE deps SET depends_on = %s WHERE depends_on = %s AND task_id = ANY(%s) "
                "AND NOT EXISTS (SELECT 1 FROM deps o WHERE o.task_id = deps.task_id AND o.depends_on = %s)",
                (new, old, dependents, new),
            )
            self._run("DELETE FROM deps WHERE depends_on = %s AND task_id = ANY(%s)", (old, dependents))
        return dependents

    def add_events(
        self, rows: Iterable[tuple[int, float, str, dict[str, Any] | None, int | None, int | None]]
    ) -> None:
        """Record (task_id, time, event, detail, uid, pid) rows."""
        self._many(
            INSERT_EVENT,
            [(t, when, e, pack(d) if d else None, uid, pid) for t, when, e, d, uid, pid in rows],
        )

    def add_bulk_request(
        self, time: float, event: str, detail: dict[str, Any], uid: int | None, pid: int | None
    ) -> int:
        """Record one request about many tasks; they point at it when it changes them."""
        return int(
            self._run(
                "INSERT INTO task_events (task_id, time, event, detail, uid, pid) "
                "VALUES (NULL, %s, %s, %s, %s, %s) RETURNING id",
                (time, event, pack(detail), uid, pid),
            ).fetchone()[0]  # type: ignore[index]
        )

    def delete_events(self, ids: Sequence[int]) -> None:
        """Remove history rows (bulk requests done with) by row id."""
        self._run("DELETE FROM task_events WHERE id = ANY(%s)", (list(ids),))
