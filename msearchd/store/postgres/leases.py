"""Tasks changing state in the PostgreSQL store: updates, claims, completions, progress; a run is
this daemon's to change, no other's."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from msearchd.model import StopReason, Task, TaskStatus
from msearchd.protocol import pack
from msearchd.store.clauses import POSTGRES, types_except
from msearchd.store.postgres.cancel import INSERT_EVENT
from msearchd.store.postgres.connection import COLUMNS, OWN
from msearchd.store.rows import CompletedRow, row_to_task
from msearchd.store.schema import UPDATABLE

if TYPE_CHECKING:
    from msearchd.store.postgres.connection import Connection
else:
    Connection = object  # PgStore puts the real one last among its bases

# A daemon claims only while the others count it alive: once they have taken it for dead (and settled
# its tasks), it starts nothing until it has registered again.
_ALIVE = "EXISTS (SELECT 1 FROM daemons WHERE id = %s)"
# A pending task that a claim may take: of a type not held by a bulk cancel (by name, or by a glob's
# pattern: the patterns are read once a statement, not once a row), and of a type under a cluster
# limit only where this transaction holds that limit's row and found room under it (the first
# parameter). The types a daemon excludes (paused ones may be globs) are added by `types_except`.
# While the queue holds a pause that the claiming daemon does not exclude (the second parameter), made
# through another daemon that this one has not heard of yet, nothing is claimable: no start slips
# through between a pause's commit and its notification.
_CLAIMABLE = (
    "status = 'pending' "
    "AND (type = ANY(%s) OR type NOT IN (SELECT type FROM cluster_limits)) "
    "AND NOT EXISTS (SELECT 1 FROM start_holds WHERE type IS NULL AND pattern IS NULL) "
    "AND type NOT IN (SELECT type FROM start_holds WHERE type IS NOT NULL) "
    "AND NOT type ~ ANY(ARRAY(SELECT pattern FROM start_holds WHERE pattern IS NOT NULL)) "
    "AND NOT EXISTS (SELECT 1 FROM queue_pauses WHERE NOT type = ANY(%s))"
)


def _value(v: Any) -> Any:
    if isinstance(v, TaskStatus | StopReason):
        return str(v)
    return v


class Leases(Connection):
    """Updates of tasks, and the claims and outcomes of their runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Types under a cluster limit, as the database said at the last heartbeat (see `claim_next`).
        self.limited_types: frozenset[str] = frozenset()
        self.limits_busy = False  # a claim passed over a type whose limit another daemon held
        # Room under the cluster limits whose rows the transaction `_room_of` holds, by type.
        self._room: dict[str, int] = {}
        self._room_of = -1
        self._excluded: list[str] = []  # the types the last `claim_next` excluded (see `claim_ids`)

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

    def change_priority(
        self, task_id: int, priority: int, old: int, time: float, uid: int | None, pid: int | None
    ) -> bool:
        changed = self._run(
            "UPDATE tasks SET priority = %s WHERE id = %s AND status IN ('pending', 'blocked')",
            (priority, task_id),
        ).rowcount
        if not changed:
            return False
        detail = pack({"old": old, "new": priority})
        self._run(INSERT_EVENT, (task_id, time, "priority_changed", detail, uid, pid))
        return True

    def update_returning(
        self, task_id: int, expect: Sequence[str] | None = None, **fields: Any
    ) -> Task | None:
        """Like `update`, and return the task as it now is (None where `update` says False)."""
        row = self._update(task_id, expect, fields, f" RETURNING {COLUMNS}").fetchone()
        return row_to_task(row) if row else None

    def claim_next(self, exclude_types: Sequence[str], now: float, worker_pid: int) -> Task | None:
        """Move the first pending task in (priority, id) order to running for this daemon and return
        it. A task another daemon is claiming at this moment is skipped, not waited for. Nothing is
        claimed before `register`, or after the others have taken this daemon for dead; nothing of
        a type that a bulk cancel holds; nothing beyond a cluster limit (`set_cluster_limits`); nothing
        at all while a pause (`add_pauses`) is in force that `exclude_types` does not name."""
        with self.transaction():
            self._excluded = list(exclude_types)
            room = self._cluster_room(exclude_types)
            full = [t for t, n in room.items() if n <= 0]
            extra, args = types_except(POSTGRES, [*exclude_types, *full])
            row = self._run(
                "UPDATE tasks SET status = 'running', started_at = %s, attempts = attempts + 1, "
                "progress = 0, current_operation = NULL, error = NULL, worker_pid = %s, host = %s, "
                f"cancel_requested = false WHERE id = (SELECT id FROM tasks WHERE {_CLAIMABLE}{extra} "
                f"ORDER BY priority, id LIMIT 1 FOR UPDATE SKIP LOCKED) AND {_ALIVE} RETURNING {COLUMNS}",
                (
                    now,
                    worker_pid,
                    self.daemon_id,
                    [t for t, n in room.items() if n > 0],
                    self._excluded,
                    *args,
                    self.daemon_id,
                ),
            ).fetchone()
        if row is None:
            return None
        task = row_to_task(row)
        if task.type in room:
            room[task.type] -= 1
        return task

    def _cluster_room(self, exclude_types: Sequence[str]) -> dict[str, int]:
        """How many more tasks of each type under a cluster limit may start, for the types with
        pending tasks whose limit row this transaction locks (once per transaction). A row another
        daemon holds is passed over (`limits_busy`), not waited for: that daemon is claiming too.

        The running tasks are counted after the lock is taken, in a statement of their own: it
        sees what every daemon that held the row before committed."""
        if self._room_of == self.begun:
            return self._room
        self._room_of, self._room = self.begun, {}
        if not self.limited_types.difference(exclude_types):
            return self._room  # the claim itself refuses the types this daemon does not know of yet
        rows = self._run(
            "WITH wanted AS (SELECT type FROM cluster_limits l WHERE NOT type = ANY(%s) AND EXISTS "
            "(SELECT 1 FROM tasks t WHERE t.type = l.type AND t.status = 'pending')), "
            "held AS (SELECT l.type, l.max_running FROM cluster_limits l JOIN wanted USING (type) "
            "ORDER BY l.type FOR UPDATE OF l SKIP LOCKED) "
            "SELECT wanted.type, held.max_running FROM wanted LEFT JOIN held USING (type)",
            (list(exclude_types),),
        ).fetchall()
        if any(most is None for _, most in rows):
            self.limits_busy = True
        most_of = {t: most for t, most in rows if most is not None}
        if most_of:
            running = dict(
                self._run(
                    "SELECT type, count(*) FROM tasks WHERE status = 'running' AND type = ANY(%s) "
                    "GROUP BY type",
                    (list(most_of),),
                ).fetchall()
            )
            self._room = {t: most - running.get(t, 0) for t, most in most_of.items()}
        return self._room

    def next_pending(self, limit: int) -> list[tuple[int, str]]:
        """(id, type) of the first `limit` pending tasks, in queue order, but those another daemon is
        claiming. They stay locked until the transaction ends, so that daemons claiming at once
        lease different tasks rather than race for the same ones (see `claim_ids`)."""
        rows = self._run(
            "SELECT id, type FROM tasks WHERE status = 'pending' ORDER BY priority, id LIMIT %s "
            "FOR UPDATE SKIP LOCKED",
            (limit,),
        )
        return [(i, t) for i, t in rows]

    def claim_ids(self, ids: Sequence[int], worker_pid: int) -> list[Task]:
        """Move these tasks, if still pending and not being claimed elsewhere, to running for
        `worker_pid`; returns them in queue order. None has started (see `mark_started`). A task of
        a type under a cluster limit is left alone: only `claim_next` counts those. The pauses in force
        must be among the types the `claim_next` before it excluded (the caller leaves those out of
        `ids`), or none is claimed."""
        rows = self._run(
            "UPDATE tasks SET status = 'running', started_at = NULL, attempts = attempts + 1, progress = 0, "
            "current_operation = NULL, error = NULL, worker_pid = %s, host = %s, cancel_requested = false "
            f"WHERE id IN (SELECT id FROM tasks WHERE id = ANY(%s) AND {_CLAIMABLE} "
            f"FOR UPDATE SKIP LOCKED) AND {_ALIVE} RETURNING {COLUMNS}",
            (worker_pid, self.daemon_id, list(ids), [], self._excluded, self.daemon_id),
        ).fetchall()
        return sorted(map(row_to_task, rows), key=lambda t: (t.priority, t.id))

    def mark_started(self, task_id: int, started_at: float) -> None:
        """Record the start of a running task claimed without one (see `claim_ids`)."""
        self._run(
            "UPDATE tasks SET started_at = %s WHERE id = %s AND status = 'running' AND started_at IS NULL "
            f"AND {OWN}",
            (started_at, task_id, self.daemon_id),
        )

    def complete_many(self, rows: Sequence[CompletedRow]) -> None:
        """Record how running tasks completed (see `CompletedRow`)."""
        if not rows:
            return
        started, finished, results, logged, operations, ids = zip(*rows, strict=True)
        self._run(  # one statement for all: the server parses and plans it once
            "UPDATE tasks SET status = 'completed', progress = 1.0, started_at = "
            "coalesce(c.started_at, tasks.started_at), finished_at = c.finished_at, error = NULL, "
            "stop_reason = NULL, result = c.result, logged = c.logged, current_operation = "
            "coalesce(c.current_operation, tasks.current_operation) FROM unnest(%s::float8[], "
            "%s::float8[], %s::bytea[], %s::boolean[], %s::text[], %s::bigint[]) AS c(started_at, "
            f"finished_at, result, logged, current_operation, id) WHERE tasks.id = c.id "
            f"AND status = 'running' AND {OWN}",
            (
                list(started),
                list(finished),
                [None if r is None else pack(r) for r in results],
                list(logged),
                list(operations),
                list(ids),
                self.daemon_id,
            ),
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
