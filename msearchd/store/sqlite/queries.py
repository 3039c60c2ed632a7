"""Reads of the SQLite store: tasks, pages of them, counts, dependencies, histories."""

from __future__ import annotations

import builtins
import heapq
import itertools
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from msearchd.model import Task, TaskStatus
from msearchd.store.clauses import SQLITE, filters
from msearchd.store.rows import detail, event_dicts, row_to_task, row_to_wire, rows_to_tasks
from msearchd.store.schema import STATUS_BY_NAME, WAITING
from msearchd.store.sqlite.connection import CHUNK, COLUMNS, marks

if TYPE_CHECKING:
    from msearchd.store.sqlite.connection import Connection
else:
    Connection = object  # Store puts the real one last among its bases

# Built once: sqlite3 finds its prepared statement by the text, which a new string hashes again.
_GET = f"SELECT {COLUMNS} FROM tasks WHERE id = ?"
_WITH_DEPENDENTS = (
    "SELECT DISTINCT d.depends_on FROM deps d JOIN tasks t ON t.id = d.task_id "
    "WHERE d.depends_on IN ({marks}) AND t.status IN ('pending', 'blocked')"
)
_ONE_WITH_DEPENDENTS = _WITH_DEPENDENTS.format(marks="?")


class Queries(Connection):
    """What the SQLite store answers without writing."""

    def get(self, task_id: int) -> Task | None:
        row = self._db.execute(_GET, (task_id,)).fetchone()
        return row_to_task(row) if row else None

    def get_wire(self, task_id: int) -> dict[str, Any] | None:
        row = self._db.execute(_GET, (task_id,)).fetchone()
        return row_to_wire(row) if row else None

    def get_many(self, ids: Sequence[int], max_bytes: int | None = None) -> builtins.list[Task]:
        parts = (list(ids[start : start + CHUNK]) for start in range(0, len(ids), CHUNK))
        rows = itertools.chain.from_iterable(
            self._db.execute(f"SELECT {COLUMNS} FROM tasks WHERE id IN ({marks(len(part))})", part)
            for part in parts
        )
        return rows_to_tasks(rows, max_bytes)

    def statuses(self, ids: Iterable[int]) -> dict[int, TaskStatus]:
        ids = list(ids)
        out: dict[int, TaskStatus] = {}
        for start in range(0, len(ids), CHUNK):
            part = ids[start : start + CHUNK]
            rows = self._db.execute(f"SELECT id, status FROM tasks WHERE id IN ({marks(len(part))})", part)
            out.update((i, STATUS_BY_NAME[s]) for i, s in rows)
        return out

    def reached(self, ids: Sequence[int], statuses: Collection[TaskStatus]) -> tuple[int, builtins.list[int]]:
        names = [s.value for s in statuses]
        found = 0
        out: list[int] = []
        for start in range(0, len(ids), CHUNK):
            part = ids[start : start + CHUNK]
            count, listed = self._db.execute(
                f"SELECT count(*), group_concat(CASE WHEN status IN ({marks(len(names))}) THEN id END) "
                f"FROM tasks WHERE id IN ({marks(len(part))})",
                (*names, *part),
            ).fetchone()
            found += count
            if listed:
                out += map(int, listed.split(","))
        return found, out

    def list(
        self,
        statuses: Sequence[str] | None = None,
        task_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
        newest_first: bool = False,
        max_bytes: int | None = None,
    ) -> builtins.list[Task]:
        """Tasks in id order (newest_first: descending). Several statuses are read one index range
        each, their ids merged as they come, and only the tasks of the page are read whole: a deep page
        costs ids, not rows. A type alone is read that way too, over every status: its index is in id
        order only within one status, and sorting all tasks of a type took 12-19 ms with 100,000 of
        them. Either direction walks the same indexes, forwards or backwards."""
        direction = "DESC" if newest_first else ""
        if task_type is not None and not statuses:
            statuses = [s.value for s in TaskStatus]
        if not statuses or len(statuses) == 1:
            where, args = filters(SQLITE, statuses, task_type)
            return self._tasks(
                f"SELECT {COLUMNS} FROM tasks{where} ORDER BY id {direction} LIMIT ? OFFSET ?",
                [*args, limit, offset],
                max_bytes,
            )
        type_clause, type_args = (" AND type = ?", [task_type]) if task_type is not None else ("", [])
        ranges = [
            (
                row[0]
                for row in self._db.execute(
                    f"SELECT id FROM tasks WHERE status = ?{type_clause} ORDER BY id {direction}",
                    [status, *type_args],
                )
            )
            for status in statuses
        ]
        page = list(itertools.islice(heapq.merge(*ranges, reverse=newest_first), offset, offset + limit))
        found = {t.id: t for t in self.get_many(page, max_bytes)}
        return [found[i] for i in page]

    def count(self, statuses: Sequence[str] | None = None, task_type: str | None = None) -> int:
        where, args = filters(SQLITE, statuses, task_type)
        return self._db.execute(f"SELECT count(*) FROM tasks{where}", args).fetchone()[0]

    def counts(self) -> builtins.list[tuple[str, str, int]]:
        """(type, status, count) for every pair present."""
        return self._db.execute("SELECT type, status, count(*) FROM tasks GROUP BY status, type").fetchall()

    def dependents(
        self, task_id: int, statuses: Sequence[str] = WAITING, after: int = 0, limit: int = -1
    ) -> builtins.list[int]:
        """Dependents of `task_id` in these statuses, in id order: those with ids above `after`, at
        most `limit` of them (no bound when negative)."""
        rows = self._db.execute(
            f"SELECT d.task_id FROM deps d JOIN tasks t ON t.id = d.task_id "
            f"WHERE d.depends_on = ? AND d.task_id > ? AND t.status IN ({marks(len(statuses))}) "
            "ORDER BY d.task_id LIMIT ?",
            (task_id, after, *statuses, limit),
        )
        return [r[0] for r in rows]

    def with_dependents(self, ids: Sequence[int]) -> builtins.list[int]:
        """Those of `ids` that some waiting task depends on: the only ones a cascade needs to visit."""
        if len(ids) == 1:  # every cancel of one task asks: its statement is built once
            return [r[0] for r in self._db.execute(_ONE_WITH_DEPENDENTS, (ids[0],))]
        out: list[int] = []
        for start in range(0, len(ids), CHUNK):
            part = list(ids[start : start + CHUNK])
            rows = self._db.execute(_WITH_DEPENDENTS.format(marks=marks(len(part))), part)
            out += [r[0] for r in rows]
        return sorted(out)

    def dependency_statuses(self, task_id: int) -> builtins.list[tuple[int, TaskStatus]]:
        rows = self._db.execute(
            "SELECT t.id, t.status FROM deps d JOIN tasks t ON t.id = d.depends_on WHERE d.task_id = ?",
            (task_id,),
        )
        return [(i, TaskStatus(s)) for i, s in rows]

    def failed_not_retried(
        self, task_type: str | None, after: int, up_to: int, limit: int
    ) -> builtins.list[int]:
        """Up to `limit` failed tasks not yet retried with ids in (after, up_to], in id order."""
        type_clause = " AND type = ?" if task_type is not None else ""
        args: list[Any] = [after, up_to] + ([task_type] if task_type is not None else []) + [limit]
        rows = self._db.execute(
            "SELECT id FROM tasks WHERE status = 'failed' AND retried_as IS NULL AND id > ? AND id <= ?"
            f"{type_clause} ORDER BY id LIMIT ?",
            args,
        )
        return [r[0] for r in rows]

    def cancel_requested(self, task_id: int) -> bool:
        row = self._db.execute("SELECT cancel_requested FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return bool(row and row[0])

    def max_id(self) -> int:
        row = self._db.execute("SELECT max(id) FROM tasks").fetchone()
        return row[0] or 0

    def running(self) -> builtins.list[Task]:
        return self._tasks(f"SELECT {COLUMNS} FROM tasks WHERE status = 'running' ORDER BY id")

    def bulk_requests(self, event: str) -> builtins.list[tuple[int, dict[str, Any]]]:
        """(row id, detail) of the requests about many tasks recorded as `event`, oldest first."""
        rows = self._db.execute(
            "SELECT id, detail FROM task_events WHERE task_id IS NULL AND event = ? ORDER BY id", (event,)
        )
        return [(i, detail(d)) for i, d in rows]

    def events(self, task_id: int) -> builtins.list[dict[str, Any]]:
        """A task's recorded requests, the bulk request that cancelled it among them."""
        rows = self._db.execute(
            "SELECT time, event, detail, uid, pid FROM task_events WHERE task_id = ? "
            "OR id = (SELECT bulk_request FROM tasks WHERE id = ?) ORDER BY id",
            (task_id, task_id),
        )
        return event_dicts(rows)

    def submitter(self, task_id: int) -> tuple[int | None, int | None]:
        """The uid and pid of the client that submitted the task, if one did."""
        row = self._db.execute(
            "SELECT submitted_uid, submitted_pid FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
        return (row[0], row[1]) if row else (None, None)
