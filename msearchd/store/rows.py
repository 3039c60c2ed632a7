"""What both stores share about rows: the columns of a task and their mapping to `Task`, the SQL
fragments that read alike in both dialects, and the packing of data and history.

A task row is `task_columns(...)`: the fields of `TASK_FIELDS`, then the ids it depends on (as each
database aggregates them), the daemon that runs it, whether its run left a log, and its result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from msgpack import unpackb

from msearchd.errors import TooLarge
from msearchd.model import Task, TaskStatus, format_task_id
from msearchd.protocol import pack
from msearchd.store.schema import STATUS_BY_NAME, STOP_REASON_BY_NAME

TASK_FIELDS = (
    "id, type, status, priority, data, progress, current_operation, attempts, error, blocked_reason, "
    "stop_reason, retry_of, retried_as, created_at, started_at, finished_at, worker_pid"
)
# The columns a new task is written with (the rest keep their defaults).
INSERT_FIELDS = (
    "type, status, priority, data, blocked_reason, retry_of, created_at, submitted_uid, submitted_pid"
)
FINISHED = "('completed', 'failed', 'cancelled')"
# A finished task `t` nothing unfinished refers to: no waiting or running task depends on it, and its
# retry (if any) has finished.
UNREFERENCED = (
    "NOT EXISTS (SELECT 1 FROM deps d JOIN tasks w ON w.id = d.task_id WHERE d.depends_on = t.id "
    "AND w.status IN ('pending', 'blocked', 'running')) AND (t.retried_as IS NULL OR NOT EXISTS "
    "(SELECT 1 FROM tasks r WHERE r.id = t.retried_as AND r.status IN ('pending', 'blocked', 'running')))"
)


def prunable_ids(conn: Any, mark: str, finished_before: float, keep: int, limit: int) -> list[int]:
    """`prunable` read on `conn`, whose driver binds values at `mark`: both stores run the same
    statements, each on a connection of its own."""
    newest_kept = None
    if keep >= 0:
        row = conn.execute(
            f"SELECT id FROM tasks WHERE status IN {FINISHED} ORDER BY id DESC LIMIT 1 OFFSET {mark}",
            (keep,),
        ).fetchone()
        newest_kept = row[0] if row else None
    rows = conn.execute(
        f"SELECT id FROM tasks t WHERE status IN {FINISHED} AND (finished_at < {mark} OR id <= {mark}) "
        f"AND {UNREFERENCED} ORDER BY id LIMIT {mark}",
        (finished_before, newest_kept if newest_kept is not None else 0, limit),
    )
    return [r[0] for r in rows]


def task_columns(depends_on: str, host: str) -> str:
    """The select list of a whole task: `depends_on` aggregates its dependencies, `host` names the
    daemon that runs it (NULL where one daemon owns the store)."""
    return f"{TASK_FIELDS}, {depends_on}, {host}, logged, result"


# What a task takes in an answer besides its data and result: its other fields and their names
# (about 400 bytes of msgpack; more with a long error or operation).
TASK_OVERHEAD_BYTES = 512


def rows_to_tasks(rows: Iterable[Sequence[Any]], max_bytes: int | None = None) -> list[Task]:
    """The tasks of rows read as `task_columns`. With `max_bytes`: TooLarge as soon as their data and
    results, with TASK_OVERHEAD_BYTES each, come to more, the rows after it not unpacked: an answer
    that could not be sent costs no more memory than one that can. It says how many fitted."""
    if max_bytes is None:
        return [row_to_task(r) for r in rows]
    tasks: list[Task] = []
    left = max_bytes
    for row in rows:
        left -= len(row[4]) + len(row[-1] or b"") + TASK_OVERHEAD_BYTES
        if left < 0:
            raise TooLarge(
                f"the tasks asked for hold more than {max_bytes:,} bytes of data and results (with "
                f"{TASK_OVERHEAD_BYTES} for each task's other fields): ask for fewer at a time "
                f"({len(tasks):,} fit)",
                fits=len(tasks),
            )
        tasks.append(row_to_task(row))
    return tasks


def row_to_task(row: Sequence[Any]) -> Task:
    """The task of a row read as `task_columns`. Dependencies come as SQLite's group_concat text
    (in no order) or as a PostgreSQL array (in order).

    Every request that names a task reads one: the row is unpacked at once and `Task` built from
    positional arguments, in the order of its fields, which is half the cost of keywords."""
    # fmt: off
    (task_id, task_type, status, priority, data, progress, current_operation, attempts, error,
     blocked_reason, stop_reason, retry_of, retried_as, created_at, started_at, finished_at, worker_pid,
     deps, host, logged, result) = row
    # fmt: on
    return Task(
        task_id,
        task_type,
        STATUS_BY_NAME[status],
        priority,
        unpackb(data),
        (sorted(int(d) for d in deps.split(",")) if isinstance(deps, str) else list(deps)) if deps else [],
        progress,
        current_operation,
        attempts,
        error,
        blocked_reason,
        STOP_REASON_BY_NAME[stop_reason] if stop_reason else None,
        retry_of,
        retried_as,
        created_at,
        started_at,
        finished_at,
        worker_pid,
        None,  # log_path: the service knows where logs are
        unpackb(result) if result is not None else None,
        host,
        logged if logged is None else bool(logged),  # SQLite gives 0 or 1
    )


def row_to_wire(row: Sequence[Any], shared: bool = False) -> dict[str, Any]:
    """The public shape of the task of a row read as `task_columns`: `row_to_task(row).to_wire()`,
    without the `Task`, and with its host when `shared`. What a control write answers with: the
    task it changed, read once, is not needed as a `Task` (about a sixth of the request's Python). Its
    `log_path` is None: only the service knows where logs are."""
    # fmt: off
    (task_id, task_type, status, priority, data, progress, current_operation, attempts, error,
     blocked_reason, stop_reason, retry_of, retried_as, created_at, started_at, finished_at, worker_pid,
     deps, host, _logged, result) = row
    # fmt: on
    if deps:
        deps = sorted(int(d) for d in deps.split(",")) if isinstance(deps, str) else list(deps)
    wire = {
        "id": format_task_id(task_id),
        "type": task_type,
        "status": status,
        "priority": priority,
        "data": unpackb(data),
        "depends_on": [format_task_id(d) for d in deps] if deps else [],
        "progress": progress,
        "current_operation": current_operation,
        "attempts": attempts,
        "error": error,
        "blocked_reason": blocked_reason,
        "stop_reason": stop_reason or None,
        "retry_of": format_task_id(retry_of) if retry_of else None,
        "retried_as": format_task_id(retried_as) if retried_as else None,
        "created_at": created_at,
        "started_at": started_at,
        "finished_at": finished_at,
        "worker_pid": worker_pid,
        "log_path": None,
        "result": unpackb(result) if result is not None else None,
    }
    if shared:
        wire["host"] = host
    return wire


# A running task that completed, as `complete_many` takes it: (started_at, finished_at, result,
# logged, current_operation, id); a current_operation of None keeps the one saved.
CompletedRow = tuple[float | None, float, Any, bool | None, str | None, int]
# A new task as `insert_rows` takes it: (type, status, priority, data packed, blocked_reason).
NewRow = tuple[str, str, int, bytes, str | None]
# The columns of a `NewRow`, then those every row of one batch shares (`BATCH_FIELDS`).
NEW_ROW_FIELDS = "type, status, priority, data, blocked_reason"
BATCH_FIELDS = "created_at, submitted_uid, submitted_pid"


def new_row(spec: dict[str, Any]) -> NewRow:
    """A task given as the keywords of `insert` (but its dependencies) as `insert_rows` takes it."""
    return (
        spec["task_type"],
        str(spec["status"]),
        spec["priority"],
        pack(spec["data"]),
        spec.get("blocked_reason"),
    )


def spec_row(spec: dict[str, Any], created_at: float, uid: int | None, pid: int | None) -> tuple[Any, ...]:
    """The values of `INSERT_FIELDS` for a task given as the keywords of `insert`."""
    return (*new_row(spec), spec.get("retry_of"), created_at, uid, pid)


class SpecInserts:
    """`insert` over a store's `_insert_row` and `_insert_deps`, `insert_many` over its `insert_rows`:
    the specs made rows."""

    if TYPE_CHECKING:
        _grouping: bool
        _depth: int

        def _begin_group(self) -> None: ...
        def _insert_row(self, row: tuple[Any, ...]) -> int: ...
        def _insert_deps(self, pairs: list[tuple[int, int]]) -> None: ...
        def transaction(self) -> AbstractContextManager[None]: ...
        def insert_rows(  # each store puts its own among its bases
            self,
            rows: Sequence[NewRow],
            depends_on: Sequence[tuple[int, Sequence[int]]],
            created_at: float,
            submitter: tuple[int | None, int | None] = ...,
        ) -> list[int]: ...

    def insert(
        self,
        *,
        task_type: str,
        data: dict[str, Any],
        priority: int,
        status: TaskStatus,
        depends_on: Sequence[int] = (),
        blocked_reason: str | None = None,
        retry_of: int | None = None,
        created_at: float,
        submitter: tuple[int | None, int | None] = (None, None),
    ) -> int:
        row = (task_type, str(status), priority, pack(data), blocked_reason, retry_of, created_at, *submitter)
        if not depends_on and self._grouping and not self._depth:
            # One statement is atomic by itself: in a group it needs no savepoint of its own.
            self._begin_group()
            return self._insert_row(row)
        with self.transaction():
            task_id = self._insert_row(row)
            if depends_on:
                self._insert_deps([(task_id, d) for d in depends_on])
        return task_id

    def insert_many(
        self,
        specs: Sequence[dict[str, Any]],
        created_at: float,
        submitter: tuple[int | None, int | None] = (None, None),
    ) -> list[int]:
        """Insert many tasks (each spec as the keywords of `insert`); returns their ids, in order."""
        rows = [new_row(s) for s in specs]
        depends_on = [(i, s["depends_on"]) for i, s in enumerate(specs) if s.get("depends_on")]
        return self.insert_rows(rows, depends_on, created_at, submitter)


def detail(packed: bytes | None) -> dict[str, Any]:
    """The detail of a history row (packed; none is empty)."""
    return unpackb(packed) if packed else {}


def event_dicts(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """History rows (time, event, detail, uid, pid) as the service shows them."""
    return [{"time": t, "event": e, **detail(d), "uid": u, "pid": p} for t, e, d, u, p in rows]


def window_rows(
    rows: Iterable[Sequence[Any]],
) -> list[tuple[int, str, str, int, dict[str, Any] | None]]:
    """(id, type, status, priority, data) rows of a selection window, the data unpacked where read."""
    return [(i, t, s, p, unpackb(d) if d is not None else None) for i, t, s, p, d in rows]
