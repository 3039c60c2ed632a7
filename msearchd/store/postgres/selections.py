"""Selections of tasks in the PostgreSQL store: windows of ids a selection picks, and the changes
made to them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from msearchd.selection import Selection
from msearchd.store.clauses import POSTGRES, cancel_window_where, window_where
from msearchd.store.rows import window_rows

if TYPE_CHECKING:
    from msearchd.store.postgres.connection import Connection
else:
    Connection = object  # PgStore puts the real one last among its bases


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
        selection's fields SQL can test select, in these statuses, in id order; the data only when
        asked for (for `where`)."""
        where = window_where(POSTGRES, selection, statuses, after, up_to, not_retried)
        if where is None:
            return []
        clauses, args = where
        data = "data" if with_data else "NULL"
        rows = self._run(
            f"SELECT id, type, status, priority, {data} FROM tasks WHERE {clauses} ORDER BY id",
            args,
        )
        return window_rows(rows)

    def cancel_for_request(self, ids: Sequence[int], now: float, request: int) -> list[int]:
        """Cancel those of `ids` still waiting, for the bulk request `request`; returns them, sorted.
        Rows are locked in id order, so that two daemons cancelling at once wait for each other."""
        rows = self._run(
            "UPDATE tasks SET status = 'cancelled', finished_at = %s, stop_reason = 'not_started', "
            "blocked_reason = NULL, bulk_request = %s WHERE id IN (SELECT id FROM tasks WHERE id = ANY(%s) "
            "AND status IN ('pending', 'blocked') ORDER BY id FOR UPDATE) "
            "AND status IN ('pending', 'blocked') RETURNING id",
            (now, request, list(ids)),
        ).fetchall()
        return sorted(r[0] for r in rows)

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
        """See `TaskStore.cancel_window`. Rows are locked in id order, as `cancel_for_request` locks
        them; one another daemon changed meanwhile is passed over, and still counts among the `limit`
        it went through."""
        where = cancel_window_where(POSTGRES, selection, statuses, after, up_to)
        if where is None:
            return 0, [], up_to
        clauses, args = where
        done_ids = "ARRAY(SELECT id FROM done)" if ids else "ARRAY[]::bigint[]"
        row = self._run(
            f"WITH picked AS (SELECT id FROM tasks WHERE {clauses} ORDER BY id LIMIT %s), "
            "done AS (UPDATE tasks SET status = 'cancelled', finished_at = %s, stop_reason = 'not_started', "
            "blocked_reason = NULL, bulk_request = %s WHERE id IN (SELECT id FROM tasks WHERE id IN "
            "(SELECT id FROM picked) AND status IN ('pending', 'blocked') ORDER BY id FOR UPDATE) "
            "AND status IN ('pending', 'blocked') RETURNING id) "
            "SELECT (SELECT count(*) FROM picked), (SELECT max(id) FROM picked), "
            f"(SELECT count(*) FROM done), {done_ids}",
            (*args, limit, now, request),
        ).fetchone()
        assert row is not None
        picked, last, count, done = row
        return count, sorted(done), last if picked >= limit else up_to

    def cancelled_with_dependents(self, request: int, after: int, up_to: int) -> list[int]:
        """See `TaskStore.cancelled_with_dependents`."""
        rows = self._run(
            "SELECT DISTINCT d.depends_on FROM deps d JOIN tasks c ON c.id = d.depends_on "
            "JOIN tasks t ON t.id = d.task_id WHERE d.depends_on > %s AND d.depends_on <= %s "
            "AND c.bulk_request = %s AND t.status IN ('pending', 'blocked') ORDER BY 1",
            (after, up_to, request),
        )
        return [r[0] for r in rows]

    def reprioritize(self, ids: Sequence[int], priority: int) -> list[tuple[int, int]]:
        """Give those of `ids` still waiting this priority; (id, old priority) of those it changed.
        Call it inside a transaction: the rows are locked (in id order) between the read and the write."""
        old = [
            (i, p)
            for i, p in self._run(
                "SELECT id, priority FROM tasks WHERE id = ANY(%s) AND status IN ('pending', 'blocked') "
                "AND priority <> %s ORDER BY id FOR UPDATE",
                (list(ids), priority),
            )
        ]
        if old:
            self._run("UPDATE tasks SET priority = %s WHERE id = ANY(%s)", (priority, [i for i, _ in old]))
        return sorted(old)
