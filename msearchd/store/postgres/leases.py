"""Tasks changing state in the PostgreSQL store: updates, claims, completions, progress; a run is
this daemon's to change, no other's."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from msearchd.model import StopReason, Task, TaskStatus
from msearchd.protocol import pack
from msearchd.store.postgres.connection import COLUMNS, OWN
from msearchd.store.rows import row_to_task
from msearchd.store.schema import UPDATABLE

if TYPE_CHECKING:
    from msearchd.store.postgres.connection import Connection
else:
    Connection = object  # PgStore puts the real one last among its bases

# A daemon claims only while the others count it alive: once they have taken it for dead (and settled
# its tasks), it starts nothing until it has registered again.
_ALIVE = "EXISTS (SELECT 1 FROM daemons WHERE id = %s)"


def _value(v: Any) -> Any:
    if isinstance(v, TaskStatus | StopReason):
        return str(v)
    return v


class Leases(Connection):
    """Updates of tasks, and the claims and outcomes of their runs."""

    def _update(self, task_id: int, expect: Sequence[str] | None, fields: dict[str, Any], tail: str) -> Any:
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = %s" for name in fields)
        condition = " AND status = ANY(%s)" if expect else ""
        values = [pack(v) if name == "result" and v is not None else _value(v) for name, v in fields.items()]
        if "cancel_requested" in fields:
            values[list(fields).index("cancel_requested")] = bool(fields["cancel_requested"])
        args = [*values, task_id, *([list(expect)] if expect else [])]
        if expect and "running" in expect:  # a run is ended by the daemon that runs it, no other
            condition += " AND (status <> 'running' OR " + OWN + ")"
            args.append(self.daemon_id)
        return self._run(f"UPDATE tasks SET {assignments} WHERE id = %s{condition}{tail}", args)

    def update(self, task_id: int, expect: Sequence[str] | None = None, **fields: Any) -> bool:
        """Change fields of a task, if its status is one of `expect` (when given); False if it did not."""
        return bool(self._update(task_id, expect, fields, "").rowcount > 0)

    def update_returning(
        self, task_id: int, expect: Sequence[str] | None = None, **fields: Any
    ) -> Task | None:
        """Like `update`, and return the task as it now is (None where `update` says False)."""
        row = self._update(task_id, expect, fields, f" RETURNING {COLUMNS}").fetchone()
        return row_to_task(row) if row else None

    def claim_next(self, exclude_types: Sequence[str], now: float, worker_pid: int) -> Task | None:
        """Move the first pending task in (priority, id) order to running for this daemon and return
        it. A task another daemon is claiming at this moment is skipped, not waited for. Nothing is
        claimed before `register`, or after the others have taken this daemon for dead."""
        row = self._run(
            "UPDATE tasks SET status = 'running', started_at = %s, attempts = attempts + 1, progress = 0, "
            "current_operation = NULL, error = NULL, worker_pid = %s, host = %s, cancel_requested = false "
            "WHERE id = (SELECT id FROM tasks WHERE status = 'pending' AND NOT type = ANY(%s) "
            f"ORDER BY priority, id LIMIT 1 FOR UPDATE SKIP LOCKED) AND {_ALIVE} RETURNING {COLUMNS}",
            (now, worker_pid, self.daemon_id, list(exclude_types), self.daemon_id),
        ).fetchone()
        return row_to_task(row) if row else None

    def next_pending(self, limit: int) -> list[tuple[int, str]]:
        """(id, type) of the first `limit` pending tasks, in queue order."""
        rows = self._run(
            "SELECT id, type FROM tasks WHERE status = 'pending' ORDER BY priority, id LIMIT %s", (limit,)
        )
        return [(i, t) for i, t in rows]

    def claim_ids(self, ids: Sequence[int], worker_pid: int) -> list[Task]:
        """Move these tasks, if still pending and not being claimed elsewhere, to running for
        `worker_pid`; returns them in queue order. None has started (see `mark_started`)."""
        rows = self._run(
            "UPDATE tasks SET status = 'running', started_at = NULL, attempts = attempts + 1, progress = 0, "
            "current_operation = NULL, error = NULL, worker_pid = %s, host = %s, cancel_requested = false "
            "WHERE id IN (SELECT id FROM tasks WHERE id = ANY(%s) AND status = 'pending' "
            f"FOR UPDATE SKIP LOCKED) AND {_ALIVE} RETURNING {COLUMNS}",
            (worker_pid, self.daemon_id, list(ids), self.daemon_id),
        ).fetchall()
        return sorted(map(row_to_task, rows), key=lambda t: (t.priority, t.id))

    def mark_started(self, task_id: int, started_at: float) -> None:
        """Record the start of a running task claimed without one (see `claim_ids`)."""
        self._run(
            "UPDATE tasks SET started_at = %s WHERE id = %s AND status = 'running' AND started_at IS NULL "
            f"AND {OWN}",
            (started_at, task_id, self.daemon_id),
        )

    def complete_many(self, rows: Sequence[tuple[float | None, float, Any, int]]) -> None:
        """Record (started_at, finished_at, result, id) of running tasks that completed."""
        with self.transaction():
            self._many(
                "UPDATE tasks SET status = 'completed', progress = 1.0, started_at = "
                "coalesce(%s, started_at), finished_at = %s, error = NULL, stop_reason = NULL, result = %s "
                f"WHERE id = %s AND status = 'running' AND {OWN}",
                [(s, f, None if r is None else pack(r), i, self.daemon_id) for s, f, r, i in rows],
            )

    def unlease(self, ids: Sequence[int]) -> None:
        """Put running tasks that never started back in the queue, as if they had not been claimed."""
        with self.transaction():
            self._run(
                "UPDATE tasks SET status = 'pending', started_at = NULL, attempts = attempts - 1, "
                f"worker_pid = NULL, host = NULL WHERE id = ANY(%s) AND status = 'running' AND {OWN}",
                (list(ids), self.daemon_id),
            )

    def save_progress(self, updates: Iterable[tuple[int, float, str | None]]) -> None:
        with self.transaction():
            self._many(
                "UPDATE tasks SET progress = %s, current_operation = %s WHERE id = %s AND status = 'running' "
                f"AND {OWN}",
                [(p, op, i, self.daemon_id) for i, p, op in updates],
            )
