"""Reads of the PostgreSQL store: tasks, pages of them, counts, dependencies, histories."""

from __future__ import annotations

import builtins
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from msearchd.model import Task, TaskStatus
from msearchd.store.clauses import POSTGRES, filters
from msearchd.store.postgres.connection import COLUMNS
from msearchd.store.rows import detail, event_dicts, row_to_task, row_to_wire
from msearchd.store.schema import STATUS_BY_NAME, WAITING

if TYPE_CHECKING:
    from msearchd.store.postgres.connection import Connection
else:
    Connection = object  # PgStore puts the real one last among its bases


class Queries(Connection):
    """What the PostgreSQL store answers without writing."""

    def get(self, task_id: int) -> Task | None:
        row = self._run(f"SELECT {COLUMNS} FROM tasks WHERE id = %s", (task_id,)).fetchone()
        return row_to_task(row) if row else None

    def get_wire(self, task_id: int) -> dict[str, Any] | None:
        row = self._run(f"SELECT {COLUMNS} FROM tasks WHERE id = %s", (task_id,)).fetchone()
        return row_to_wire(row, shared=True) if row else None

    def get_many(self, ids: Sequence[int], max_bytes: int | None = None) -> builtins.list[Task]:
        if not ids:
            return []
        return self._tasks(f"SELECT {COLUMNS} FROM tasks WHERE id = ANY(%s)", (list(ids),), max_bytes)

    def statuses(self, ids: Iterable[int]) -> dict[int, TaskStatus]:
        rows = self._run("SELECT id, status FROM tasks WHERE id = ANY(%s)", (list(ids),))
        return {i: STATUS_BY_NAME[s] for i, s in rows}

    def reached(self, ids: Sequence[int], statuses: Collection[TaskStatus]) -> tuple[int, builtins.list[int]]:
        row = self._run(
            "SELECT count(*), coalesce(array_agg(id) FILTER (WHERE status = ANY(%s)), '{}') "
            "FROM tasks WHERE id = ANY(%s)",
            ([s.value for s in statuses], list(ids)),
        ).fetchone()
        assert row is not None  # an aggregate without GROUP BY has its one row
        found, listed = row
        return found, list(listed)

    def list(
        self,
        statuses: Sequence[str] | None = None,
        task_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
        newest_first: bool = False,
        max_bytes: int | None = None,
    ) -> builtins.list[Task]:
        """Tasks in id order (newest_first: descending)."""
        where, args = filters(POSTGRES, statuses, task_type)
        direction = "DESC" if newest_first else ""
        return self._tasks(
            f"SELECT {COLUMNS} FROM tasks{where} ORDER BY id {direction} LIMIT %s OFFSET %s",
            [*args, limit, offset],
            max_bytes,
        )

    def count(self, statuses: Sequence[str] | None = None, task_type: str | None = None) -> int:
        where, args = filters(POSTGRES, statuses, task_type)
        return int(self._run(f"SELECT count(*) FROM tasks{where}", args).fetchone()[0])  # type: ignore[index]

    def counts(self) -> builtins.list[tuple[str, str, int]]:
        """(type, status, count) for every pair present."""
        return [
            (t, s, int(n)) for t, s, n in self._run("SELECT type, status, count(*) FROM tasks GROUP BY 1, 2")
        ]

    def dependents(
        self, task_id: int, statuses: Sequence[str] = WAITING, after: int = 0, limit: int = -1
    ) -> builtins.list[int]:
        """Dependents of `task_id` in these statuses with ids above `after`, in id order; at most
        `limit` of them (no bound when negative)."""
        rows = self._run(
            "SELECT d.task_id FROM deps d JOIN tasks t ON t.id = d.task_id "
            "WHERE d.depends_on = %s AND d.task_id > %s AND t.status = ANY(%s) ORDER BY d.task_id LIMIT %s",
            (task_id, after, list(statuses), limit if limit >= 0 else None),
        )
        return [r[0] for r in rows]

    def with_dependents(self, ids: Sequence[int]) -> builtins.list[int]:
        """Those of `ids` that some waiting task depends on: the only ones a cascade needs to visit."""
        if not ids:
            return []
        rows = self._run(
            "SELECT DISTINCT d.depends_on FROM deps d JOIN tasks t ON t.id = d.task_id "
            "WHERE d.depends_on = ANY(%s) AND t.status IN ('pending', 'blocked') ORDER BY 1",
            (list(ids),),
        )
        return [r[0] for r in rows]

    def dependency_statuses(self, task_id: int) -> builtins.list[tuple[int, TaskStatus]]:
        rows = self._run(
            "SELECT t.id, t.status FROM deps d JOIN tasks t ON t.id = d.depends_on WHERE d.task_id = %s",
            (task_id,),
        )
        return [(i, STATUS_BY_NAME[s]) for i, s in rows]

    def failed_not_retried(
        self, task_type: str | None, after: int, up_to: int, limit: int
    ) -> builtins.list[int]:
        """Up to `limit` failed tasks not yet retried with ids in (after, up_to], in id order."""
        type_clause = " AND type = %s" if task_type is not None else ""
        args: list[Any] = [after, up_to] + ([task_type] if task_type is not None else []) + [limit]
        rows = self._run(
            "SELECT id FROM tasks WHERE status = 'failed' AND retried_as IS NULL AND id > %s AND id <= %s"
            f"{type_clause} ORDER BY id LIMIT %s",
            args,
        )
        return [r[0] for r in rows]

    def cancel_requested(self, task_id: int) -> bool:
        row = self._run("SELECT cancel_requested FROM tasks WHERE id = %s", (task_id,)).fetchone()
        return bool(row and row[0])

    def max_id(self) -> int:
        return int(self._run("SELECT coalesce(max(id), 0) FROM tasks").fetchone()[0])  # type: ignore[index]

    def running(self) -> builtins.list[Task]:
        """Every running task, on every daemon."""
        return self._tasks(f"SELECT {COLUMNS} FROM tasks WHERE status = 'running' ORDER BY id")

    def bulk_requests(self, event: str) -> builtins.list[tuple[int, dict[str, Any]]]:
        """(row id, detail) of the requests about many tasks recorded as `event`, oldest first: of
        every daemon."""
        rows = self._run(
            "SELECT id, detail FROM task_events WHERE task_id IS NULL AND event = %s ORDER BY id", (event,)
        )
        return [(i, detail(d)) for i, d in rows]

    def events(self, task_id: int) -> builtins.list[dict[str, Any]]:
        """A task's recorded requests, the bulk request that cancelled it among them."""
        rows = self._run(
            "SELECT time, event, detail, uid, pid FROM task_events WHERE task_id = %s "
            "OR id = (SELECT bulk_request FROM tasks WHERE id = %s) ORDER BY id",
            (task_id, task_id),
        )
        return event_dicts(rows)

    def submitter(self, task_id: int) -> tuple[int | None, int | None]:
        """The uid and pid of the client that submitted the task, if one did."""
        row = self._run("SELECT submitted_uid, submitted_pid FROM tasks WHERE id = %s", (task_id,)).fetchone()
        return (row[0], row[1]) if row else (None, None)
