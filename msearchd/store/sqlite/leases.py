"""Tasks changing state in the SQLite store: updates, claims for workers, completions, progress."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from msearchd.model import Task
from msearchd.protocol import pack
from msearchd.store.clauses import SQLITE, types_except
from msearchd.store.rows import CompletedRow, row_to_task
from msearchd.store.schema import UPDATABLE
from msearchd.store.sqlite.cancel import INSERT_EVENT
from msearchd.store.sqlite.connection import CHUNK, COLUMNS, marks

if TYPE_CHECKING:
    from msearchd.store.sqlite.connection import Connection
else:
    Connection = object  # Store puts the real one last among its bases

_CHANGE_PRIORITY = "UPDATE tasks SET priority = ? WHERE id = ? AND status IN ('pending', 'blocked')"


class Leases(Connection):
    """Updates of tasks, and the claims and outcomes of their runs."""

    def _update(self, task_id: int, expect: Sequence[str] | None, fields: dict[str, Any], tail: str) -> Any:
        if type(expect) is list:
            expect = tuple(expect)
        key = (*fields, expect, tail)
        sql = self._update_sql.get(key)
        if sql is None:
            unknown = set(fields) - UPDATABLE
            if unknown:
                raise ValueError(f"not updatable: {sorted(unknown)}")
            assignments = ", ".join(f"{name} = ?" for name in fields)
            condition = f" AND status IN ({marks(len(expect))})" if expect else ""
            sql = self._update_sql[key] = f"UPDATE tasks SET {assignments} WHERE id = ?{condition}{tail}"
        # Statuses and stop reasons are str enums: sqlite3 binds them as their names.
        values = (
            fields.values()
            if "result" not in fields
            else [pack(v) if name == "result" else v for name, v in fields.items()]
        )
        return self._db.execute(sql, (*values, task_id, *(expect or ())))

    def update(self, task_id: int, expect: Sequence[str] | None = None, **fields: Any) -> bool:
        """Change fields of a task, if its status is one of `expect` (when given); False if it did not."""
        return self._update(task_id, expect, fields, "").rowcount > 0

    def change_priority(
        self, task_id: int, priority: int, old: int, time: float, uid: int | None, pid: int | None
    ) -> bool:
        if self._db.execute(_CHANGE_PRIORITY, (priority, task_id)).rowcount == 0:
            return False
        detail = pack({"old": old, "new": priority})
        self._db.execute(INSERT_EVENT, (task_id, time, "priority_changed", detail, uid, pid))
        return True

    def update_returning(
        self, task_id: int, expect: Sequence[str] | None = None, **fields: Any
    ) -> Task | None:
        """Like `update`, and return the task as it now is (None where `update` says False)."""
        row = self._update(task_id, expect, fields, f" RETURNING {COLUMNS}").fetchone()
        return row_to_task(row) if row else None

    def claim_next(self, exclude_types: Sequence[str], now: float, worker_pid: int) -> Task | None:
        """Move the first pending task in (priority, id) order to running and return it.

        Call it inside a transaction: several claims then share one commit.
        """
        extra, args = types_except(SQLITE, exclude_types)
        row = self._db.execute(
            f"UPDATE tasks SET status = 'running', started_at = ?, attempts = attempts + 1, progress = 0, "
            f"current_operation = NULL, error = NULL, worker_pid = ? WHERE id = (SELECT id FROM tasks "
            f"INDEXED BY tasks_queue WHERE status = 'pending'{extra} ORDER BY priority, id LIMIT 1) "
            f"RETURNING {COLUMNS}",
            (now, worker_pid, *args),
        ).fetchone()
        return row_to_task(row) if row else None

    def next_pending(self, limit: int) -> list[tuple[int, str]]:
        """(id, type) of the first `limit` pending tasks, in queue order."""
        return self._db.execute(
            "SELECT id, type FROM tasks INDEXED BY tasks_queue WHERE status = 'pending' "
            "ORDER BY priority, id LIMIT ?",
            (limit,),
        ).fetchall()

    def claim_ids(self, ids: Sequence[int], worker_pid: int) -> list[Task]:
        """Move these tasks, if still pending, to running for `worker_pid`, to run after the task it
        runs now; returns them in queue order. None has started: `started_at` stays empty until its
        start is known (see `mark_started`), and a task found running without one never started."""
        rows = self._db.execute(
            f"UPDATE tasks SET status = 'running', started_at = NULL, attempts = attempts + 1, progress = 0, "
            f"current_operation = NULL, error = NULL, worker_pid = ? WHERE id IN ({marks(len(ids))}) "
            f"AND status = 'pending' RETURNING {COLUMNS}",
            (worker_pid, *ids),
        ).fetchall()
        return sorted(map(row_to_task, rows), key=lambda t: (t.priority, t.id))

    def mark_started(self, task_id: int, started_at: float) -> None:
        """Record the start of a running task claimed without one (see `claim_ids`)."""
        self._db.execute(
            "UPDATE tasks SET started_at = ? WHERE id = ? AND status = 'running' AND started_at IS NULL",
            (started_at, task_id),
        )

    def complete_many(self, rows: Sequence[CompletedRow]) -> None:
        """Record how running tasks completed (see `CompletedRow`)."""
        with self.transaction():
            self._db.executemany(
                "UPDATE tasks SET status = 'completed', progress = 1.0, started_at = "
                "coalesce(?, started_at), finished_at = ?, error = NULL, stop_reason = NULL, result = ?, "
                "logged = ?, current_operation = coalesce(?, current_operation) "
                "WHERE id = ? AND status = 'running'",
                [(s, f, None if r is None else pack(r), g, o, i) for s, f, r, g, o, i in rows],
            )

    def unlease(self, ids: Sequence[int]) -> None:
        """Put running tasks that never started back in the queue, as if they had not been claimed."""
        with self.transaction():
            for start in range(0, len(ids), CHUNK):
                part = list(ids[start : start + CHUNK])
                self._db.execute(
                    "UPDATE tasks SET status = 'pending', started_at = NULL, attempts = attempts - 1, "
                    f"worker_pid = NULL WHERE id IN ({marks(len(part))}) AND status = 'running'",
                    part,
                )

    def save_progress(self, updates: Iterable[tuple[int, float, str | None]]) -> None:
        with self.transaction():
            self._db.executemany(
                "UPDATE tasks SET progress = ?, current_operation = ? WHERE id = ? AND status = 'running'",
                [(p, op, i) for i, p, op in updates],
            )
