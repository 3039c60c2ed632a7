"""Cancels, dependencies handed over, and the history rows they leave, in the SQLite store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from msearchd.protocol import pack
from msearchd.store.sqlite.connection import CHUNK, marks

if TYPE_CHECKING:
    from msearchd.store.sqlite.queries import Queries  # `dependents`, and the connection under it
else:
    Queries = object  # Store puts the real ones among its bases

INSERT_EVENT = "INSERT INTO task_events (task_id, time, event, detail, uid, pid) VALUES (?, ?, ?, ?, ?, ?)"


class Cancels(Queries):
    """Cancelling waiting tasks, one by one or in bulk, and recording who asked."""

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

    def cancel_waiting_batch(
        self, task_type: str | None, max_id: int, now: float, limit: int, request: int
    ) -> list[int]:
        """Cancel up to `limit` waiting tasks (of a type) with ids up to `max_id`, for the bulk request
        `request` (a task_events row); returns their ids."""
        type_clause = "type = ? AND " if task_type is not None else ""
        args: list[Any] = [now, request] + ([task_type] if task_type is not None else [])
        rows = self._db.execute(
            "UPDATE tasks SET status = 'cancelled', finished_at = ?, stop_reason = 'not_started', "
            f"blocked_reason = NULL, bulk_request = ? WHERE id IN (SELECT id FROM tasks WHERE {type_clause}"
            "status IN ('pending', 'blocked') AND id <= ? LIMIT ?) RETURNING id",
            [*args, max_id, limit],
        ).fetchall()
        return sorted(r[0] for r in rows)

    def bulk_cancelled_with_newer_dependents(self, request: int, max_id: int) -> list[int]:
        """Tasks cancelled by the bulk request `request` that a waiting task newer than `max_id`
        depends on: submitted while the request ran, before the task it depends on was cancelled."""
        rows = self._db.execute(
            "SELECT DISTINCT d.depends_on FROM tasks t JOIN deps d ON d.task_id = t.id "
            "JOIN tasks p ON p.id = d.depends_on "
            "WHERE t.id > ? AND t.status IN ('pending', 'blocked') AND p.bulk_request = ?",
            (max_id, request),
        )
        return sorted(r[0] for r in rows)

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
