"""Selections of tasks in the SQLite store: windows of ids a selection picks, and the changes made
to them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from msearchd.selection import Selection
from msearchd.store.clauses import SQLITE, cancel_window_where, window_where
from msearchd.store.rows import window_rows
from msearchd.store.sqlite.connection import CHUNK, marks

if TYPE_CHECKING:
    from msearchd.store.sqlite.connection import Connection
else:
    Connection = object  # Store puts the real one last among its bases


_CANCEL = (
    "UPDATE tasks SET status = 'cancelled', finished_at = ?, stop_reason = 'not_started', "
    "blocked_reason = NULL, bulk_request = ?"
)


class Selections(Connection):
    """What a selection of many tasks reads and changes."""

    def select_window(
        self,
        selection: Selection,
        statuses: Sequence[str],
        after: int,
        up_to: int,
        *,
        with_data: bool = False,
        not_retried: bool = False,
    ) -> list[tuple[int, str, str, int, dict[str, Any] | None]]:
        """(id, type, status, priority, data) of the tasks with ids in (after, up_to] that the
        selection's fields SQL can test select, in these statuses, in id order. The caller bounds the
        window, which bounds the work; the data is read only when asked for (for `where`)."""
        where = window_where(SQLITE, selection, statuses, after, up_to, not_retried)
        if where is None:
            return []
        clauses, args = where
        data = "data" if with_data else "NULL"
        rows = self._db.execute(
            # NOT INDEXED: the id range bounds the work; the planner would rather walk a status's
            # whole index, for every window.
            f"SELECT id, type, status, priority, {data} FROM tasks NOT INDEXED WHERE {clauses} ORDER BY id",
            args,
        )
        return window_rows(rows)

    def cancel_for_request(self, ids: Sequence[int], now: float, request: int) -> list[int]:
        """Cancel those of `ids` still waiting, for the bulk request `request`; returns them."""
        done: list[int] = []
        for start in range(0, len(ids), CHUNK):
            part = list(ids[start : start + CHUNK])
            rows = self._db.execute(
                f"{_CANCEL} WHERE id IN ({marks(len(part))}) "
                "AND status IN ('pending', 'blocked') RETURNING id",
                [now, request, *part],
            ).fetchall()
            done += [r[0] for r in rows]
        return sorted(done)

    def cancel_window(
        self,
        selection: Selection,
        statuses: Sequence[str],
        after: int,
        up_to: int,
        limit: int,
        now: float,
        request: int,
        *,
        ids: bool = True,
    ) -> tuple[int, list[int], int]:
        """See `TaskStore.cancel_window`. The id range bounds its work (an exact type's index holds
        the range): nothing reads the rows out first."""
        where = cancel_window_where(SQLITE, selection, statuses, after, up_to)
        if where is None:
            return 0, [], up_to
        clauses, args = where
        if ids:
            # One writer, one statement: every task the subquery picks is cancelled, and found by its
            # id alone (testing its status again would look it up in the status index too).
            rows = self._db.execute(
                f"{_CANCEL} WHERE id IN (SELECT id FROM tasks WHERE {clauses} ORDER BY id LIMIT ?) "
                "RETURNING id",
                [now, request, *args, limit],
            ).fetchall()
            done = sorted(r[0] for r in rows)
            return len(done), done, done[-1] if len(done) >= limit else up_to
        # Without the ids: the window is cut at its `limit`-th task first (unless it is too narrow to
        # hold more), then cancelled whole by one UPDATE with no subquery.
        last = up_to
        if up_to - after > limit:
            row = self._db.execute(
                f"SELECT id FROM tasks WHERE {clauses} ORDER BY id LIMIT 1 OFFSET ?", [*args, limit - 1]
            ).fetchone()
            if row is not None:
                last = row[0]
                narrowed = cancel_window_where(SQLITE, selection, statuses, after, last)
                assert narrowed is not None  # the same statuses gave `where`
                clauses, args = narrowed
        count = self._db.execute(f"{_CANCEL} WHERE {clauses}", [now, request, *args]).rowcount
        return count, [], last

    def cancelled_with_dependents(self, request: int, after: int, up_to: int) -> list[int]:
        """See `TaskStore.cancelled_with_dependents`. Read from the dependencies' reverse index (the
        planner left alone would go through every waiting task): no time at all where no task waits
        on another."""
        rows = self._db.execute(
            "SELECT DISTINCT d.depends_on FROM deps d INDEXED BY deps_reverse "
            "CROSS JOIN tasks c ON c.id = d.depends_on CROSS JOIN tasks t ON t.id = d.task_id "
            "WHERE d.depends_on > ? AND d.depends_on <= ? "
            "AND c.bulk_request = ? AND t.status IN ('pending', 'blocked') ORDER BY 1",
            (after, up_to, request),
        )
        return [r[0] for r in rows]

    def reprioritize(self, ids: Sequence[int], priority: int) -> list[tuple[int, int]]:
        """Give those of `ids` still waiting this priority; returns (id, old priority) of those it
        changed. Call it inside a transaction: the read and the write see the same rows."""
        changed: list[tuple[int, int]] = []
        for start in range(0, len(ids), CHUNK):
            part = list(ids[start : start + CHUNK])
            part_marks = marks(len(part))
            old = self._db.execute(
                f"SELECT id, priority FROM tasks WHERE id IN ({part_marks}) "
                "AND status IN ('pending', 'blocked') AND priority != ?",
                [*part, priority],
            ).fetchall()
            if old:
                self._db.execute(
                    f"UPDATE tasks SET priority = ? WHERE id IN ({marks(len(old))})",
                    [priority, *(i for i, _ in old)],
                )
            changed += old
        return sorted(changed)
