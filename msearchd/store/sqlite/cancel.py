"""Cancels, dependencies handed over, and the history rows they leave, in the SQLite store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from msearchd.protocol import pack
from msearchd.store.sqlite.connection import CHUNK, marks

if TYPE_CHECKING:
    from msearchd.store.sqlite.connection import Connection
else:
    Connection = object  # Store puts the real one last among its bases

INSERT_EVENT = "INSERT INTO task_events (task_id, time, event, detail, uid, pid) VALUES (?, ?, ?, ?, ?, ?)"
_CANCEL_ONE = (
    "UPDATE tasks SET status = 'cancelled', finished_at = ?, stop_reason = 'not_started', "
    "blocked_reason = NULL WHERE id = ? AND status IN ('pending', 'blocked')"
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
        if self._db.execute(_CANCEL_ONE, (now, task_id)).rowcount == 0:
            return False
        detail = pack({"by": by, "running": False})
        self._db.execute(INSERT_EVENT, (task_id, requested_at, "cancel_requested", detail, uid, pid))
        return True

    def cancel_waiting(self, ids: Sequence[int], now: float, error: str | None = None) -> list[int]:
        """Cancel those of `ids` still pending or blocked; returns the ones it cancelled."""
        done: list[int] = []
        for start in range(0, len(ids), CHUNK):
            part = list(ids[start : start + CHUNK])
            rows = self._db.execute(
                f"UPDATE tasks SET status = 'cancelled', finished_at = ?, stop_reason = 'not_started', "
                f"error = ?, blocked_reason = NULL WHERE id IN ({marks(len(part))}) "
                "AND status IN ('pending', 'blocked') RETURNING id",
                [now, error, *part],
            ).fetchall()
            done += sorted(r[0] for r in rows)
        return done

    def replace_dependency(self, old: int, new: int, limit: int = CHUNK) -> list[int]:
        """Point up to `limit` waiting dependents of `old` at `new` (the first ones by id); returns them.
        Call it until it returns fewer than `limit`: each call binds at most CHUNK ids."""
        dependents = self.dependents(old, limit=limit)
        for start in range(0, len(dependents), CHUNK):
            part = dependents[start : start + CHUNK]
            self._db.execute(
                f"UPDATE OR IGNORE deps SET depends_on = ? WHERE depends_on = ? "
                f"AND task_id IN ({marks(len(part))})",
                (new, old, *part),
            )
            self._db.execute(
                f"DELETE FROM deps WHERE depends_on = ? AND task_id IN ({marks(len(part))})",
                (old, *part),
            )
        return dependents

    def add_events(
        self, rows: Iterable[tuple[int, float, str, dict[str, Any] | None, int | None, int | None]]
    ) -> None:
        """Record (task_id, time, event, detail, uid, pid) rows."""
        values = [(t, when, e, pack(d) if d else None, uid, pid) for t, when, e, d, uid, pid in rows]
        if len(values) == 1:  # a control write's one row: execute is quicker than executemany
            self._db.execute(INSERT_EVENT, values[0])
        else:
            self._db.executemany(INSERT_EVENT, values)

    def add_bulk_request(
        self, time: float, event: str, detail: dict[str, Any], uid: int | None, pid: int | None
    ) -> int:
        """Record one request about many tasks; they point at it when it changes them."""
        cur = self._db.execute(
            "INSERT INTO task_events (task_id, time, event, detail, uid, pid) VALUES (NULL, ?, ?, ?, ?, ?)",
            (time, event, pack(detail), uid, pid),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def delete_events(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), CHUNK):
            part = list(ids[start : start + CHUNK])
            self._db.execute(f"DELETE FROM task_events WHERE id IN ({marks(len(part))})", part)
