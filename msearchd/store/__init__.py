"""The task store: what the service asks of it (`TaskStore`), and the SQLite implementation (`Store`).

The service, retention and the daemon use only the methods of `TaskStore`; a second implementation
(PostgreSQL, beside `sqlite` as `postgres`) honours the semantics in their docstrings, and offers what
several daemons sharing it need on top (`SharedTaskStore`, used only where `shared` is true). It is
imported only for a postgresql:// store: psycopg is an optional extra. SQL lives in the
implementations, nowhere else.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

from msearchd.model import Task, TaskStatus
from msearchd.selection import Selection
from msearchd.store.rows import CompletedRow, NewRow, new_row
from msearchd.store.schema import MIGRATIONS, SCHEMA_VERSION
from msearchd.store.sqlite import (
    AUTOCHECKPOINT,
    CHUNK,
    WAITING,
    Store,
    UnusableStore,
    disk_full,
)

__all__ = [
    "AUTOCHECKPOINT",
    "CHUNK",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "WAITING",
    "LocalTaskStore",
    "NewRow",
    "ServiceStore",
    "SharedTaskStore",
    "Store",
    "TaskStore",
    "UnusableStore",
    "disk_full",
    "new_row",
]


class TaskStore(Protocol):
    """Tasks, their dependencies and their history, durable; owned by the daemon's loop (one thread).

    Writes happen inside `transaction()`; reads see the current transaction's writes. Changes are
    announced (`after_commit`) only once durable. Errors: a full disk raises an error `disk_full`
    recognises; a store another process holds raises `Unavailable`.
    """

    begun: int
    """Transactions begun so far: two units of work with the same value shared a transaction."""

    @property
    def shared(self) -> bool:
        """Whether other daemons use the store too: a `SharedTaskStore` then, else a `LocalTaskStore`."""

    def close(self) -> None:
        """Release the store; nothing is called on it after."""

    def pause_checkpoints(self) -> None:
        """Keep checkpoints out of this connection's commits until `resume_checkpoints`."""

    def resume_checkpoints(self) -> None:
        """End one `pause_checkpoints`; the last one lets commits checkpoint again."""

    def checkpoint(self) -> None:
        """Make the log of commits part of the main file; safe to call from another thread."""

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the current transaction commits (at once outside one); never on rollback."""

    def transaction(self) -> AbstractContextManager[None]:
        """One atomic, durable unit, its write lock taken at once; nested uses join the outer one."""

    def group(self) -> AbstractContextManager[None]:
        """One commit for every transaction inside (group commit); each still rolls back alone."""

    def transaction_open(self) -> bool:
        """Whether what is written now waits for a commit."""

    def get(self, task_id: int) -> Task | None:
        """The task with this id, as last committed or written in the current transaction; None if none."""

    def get_wire(self, task_id: int) -> dict[str, Any] | None:
        """What `get` reads, in its public shape (`rows.row_to_wire`: `log_path` None, `host` with a
        shared store): a request that answers with the task it changes needs no `Task`."""

    def get_many(self, ids: Sequence[int], max_bytes: int | None = None) -> builtins.list[Task]:
        """The tasks of `ids` that exist, in any order; any number of ids. With `max_bytes`, TooLarge
        once their data and results come to more (see `rows.rows_to_tasks`)."""

    def statuses(self, ids: Iterable[int]) -> dict[int, TaskStatus]:
        """The status of each task of `ids` that exists, without reading whole tasks; any number of ids."""

    def reached(self, ids: Sequence[int], statuses: Collection[TaskStatus]) -> tuple[int, builtins.list[int]]:
        """How many of `ids` (each named once) exist, and those of them in one of `statuses`: what a
        wait needs to know first, with no row read out for a task still on its way; any number of ids."""

    def list(
        self,
        statuses: Sequence[str] | None = None,
        task_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
        newest_first: bool = False,
        max_bytes: int | None = None,
    ) -> builtins.list[Task]:
        """Tasks in id order (newest_first: descending), a page of them; a deep page must cost no more
        than the ids before it. With `max_bytes`, as for `get_many`."""

    def count(self, statuses: Sequence[str] | None = None, task_type: str | None = None) -> int:
        """How many tasks `list` would return with no limit."""

    def counts(self) -> builtins.list[tuple[str, str, int]]:
        """(type, status, count) for every pair present."""

    def dependents(
        self, task_id: int, statuses: Sequence[str] = ..., after: int = 0, limit: int = -1
    ) -> builtins.list[int]:
        """Dependents of `task_id` in these statuses with ids above `after`, in id order; limit < 0: all."""

    def with_dependents(self, ids: Sequence[int]) -> builtins.list[int]:
        """Those of `ids` that some waiting task depends on: the only ones a cascade needs to visit."""

    def dependency_statuses(self, task_id: int) -> builtins.list[tuple[int, TaskStatus]]:
        """(id, status) of each task `task_id` depends on."""

    def failed_not_retried(
        self, task_type: str | None, after: int, up_to: int, limit: int
    ) -> builtins.list[int]:
        """Up to `limit` failed tasks not yet retried with ids in (after, up_to], in id order."""

    def cancel_requested(self, task_id: int) -> bool:
        """Whether a cancel of the running task `task_id` was recorded."""

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
        """Add one task, its dependencies and submitter with it; its id is above every earlier one."""

    def insert_many(
        self,
        specs: Sequence[dict[str, Any]],
        created_at: float,
        submitter: tuple[int | None, int | None] = (None, None),
    ) -> builtins.list[int]:
        """Insert many tasks (each spec as the keywords of `insert`) with one statement; returns their ids."""

    def insert_rows(
        self,
        rows: Sequence[NewRow],
        depends_on: Sequence[tuple[int, Sequence[int]]],
        created_at: float,
        submitter: tuple[int | None, int | None] = (None, None),
    ) -> builtins.list[int]:
        """Insert tasks given as rows (`NewRow`), with the dependencies of some as (index in `rows`,
        ids), all or none; returns their ids in the order of the rows. What a caller that checks
        many tasks makes in one pass, instead of a spec each (see `insert_many`)."""

    def update(self, task_id: int, expect: Sequence[str] | None = None, **fields: Any) -> bool:
        """Change fields of a task, if its status is one of `expect` (when given); False if it did not."""

    def update_returning(
        self, task_id: int, expect: Sequence[str] | None = None, **fields: Any
    ) -> Task | None:
        """Like `update`, and return the task as it now is (None where `update` says False)."""

    def change_priority(
        self, task_id: int, priority: int, old: int, time: float, uid: int | None, pid: int | None
    ) -> bool:
        """Give a waiting task this priority, its history recording the change from `old` as asked by
        (uid, pid) at `time`; False, nothing written, if it does not wait."""

    def claim_next(self, exclude_types: Sequence[str], now: float, worker_pid: int) -> Task | None:
        """Claim the first pending task by (priority, id) of a type not excluded: running, attempts + 1."""

    def next_pending(self, limit: int) -> builtins.list[tuple[int, str]]:
        """(id, type) of the first `limit` pending tasks, in queue order."""

    def claim_ids(self, ids: Sequence[int], worker_pid: int) -> builtins.list[Task]:
        """Claim those of `ids` still pending for a worker, `started_at` left empty; in queue order."""

    def mark_started(self, task_id: int, started_at: float) -> None:
        """Record the start of a running task claimed without one (see `claim_ids`)."""

    def complete_many(self, rows: Sequence[CompletedRow]) -> None:
        """Record how running tasks completed (see `CompletedRow`)."""

    def unlease(self, ids: Sequence[int]) -> None:
        """Put running tasks that never started back in the queue, as if they had not been claimed."""

    def cancel_waiting(self, ids: Sequence[int], now: float, error: str | None = None) -> builtins.list[int]:
        """Cancel those of `ids` still pending or blocked; returns the ones it cancelled."""

    def cancel_one(
        self, task_id: int, requested_at: float, now: float, by: str, uid: int | None, pid: int | None
    ) -> bool:
        """Cancel a waiting task at `now`, its history recording the request (`by`, at `requested_at`,
        from uid and pid); False, nothing written, if it does not wait. Its dependents are the caller's."""

    def max_id(self) -> int:
        """The highest task id given so far (0 with none): ids only grow, never reused."""

    def replace_dependency(self, old: int, new: int, limit: int = ...) -> builtins.list[int]:
        """Point up to `limit` waiting dependents of `old` at `new`, first by id; returns them."""

    def add_events(
        self, rows: Iterable[tuple[int, float, str, dict[str, Any] | None, int | None, int | None]]
    ) -> None:
        """Record (task_id, time, event, detail, uid, pid) rows."""

    def add_bulk_request(
        self, time: float, event: str, detail: dict[str, Any], uid: int | None, pid: int | None
    ) -> int:
        """Record one request about many tasks; they point at it when it changes them."""

    def delete_events(self, ids: Sequence[int]) -> None:
        """Remove history rows (bulk requests done with) by row id."""

    def bulk_requests(self, event: str) -> builtins.list[tuple[int, dict[str, Any]]]:
        """(row id, detail) of the requests about many tasks recorded as `event`, oldest first."""

    def events(self, task_id: int) -> builtins.list[dict[str, Any]]:
        """A task's recorded requests, the bulk request that cancelled it among them."""

    def submitter(self, task_id: int) -> tuple[int | None, int | None]:
        """The uid and pid of the client that submitted the task, if one did."""

    def prunable(self, finished_before: float, keep: int, limit: int) -> builtins.list[int]:
        """Up to `limit` finished tasks, oldest first, past age or count, nothing unfinished refers to."""

    def stale_bulk_requests(self, before: float, keep: Sequence[str]) -> builtins.list[int]:
        """Bulk requests older than `before` that no task points at, but those recorded as one of `keep`."""

    def prune(self, ids: Sequence[int]) -> builtins.list[int]:
        """Remove those of `ids` still prunable, with dependencies and events; returns the ones removed."""

    def running(self) -> builtins.list[Task]:
        """Every task in status running, leased but not started ones among them."""

    def save_progress(self, updates: Iterable[tuple[int, float, str | None]]) -> None:
        """Record (id, progress, current_operation) of running tasks; others are left alone."""

    def unfinished_with_key(self, key: str) -> Task | None:
        """The pending, blocked or running task that holds `key`, if one does."""

    def insert_keyed(self, key: str, **spec: Any) -> int | None:
        """Insert a task (keywords of `insert`) holding `key`; None, and nothing written, when an
        unfinished task holds it already: the store, not the caller, keeps a key to one such task."""

    def keys(self, ids: Sequence[int]) -> dict[int, str]:
        """The keys of those of `ids` that have one."""

    def select_window(
        self,
        selection: Selection,
        statuses: Sequence[str],
        after: int,
        up_to: int,
        *,
        with_data: bool = False,
        not_retried: bool = False,
    ) -> builtins.list[tuple[int, str, str, int, dict[str, Any] | None]]:
        """(id, type, status, priority, data) of the tasks with ids in (after, up_to] in these statuses
        that the selection's fields but `where` select, in id order; data only with `with_data`."""

    def cancel_for_request(self, ids: Sequence[int], now: float, request: int) -> builtins.list[int]:
        """Cancel those of `ids` still waiting, for the bulk request `request`; returns them, sorted."""

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
    ) -> tuple[int, builtins.list[int], int]:
        """Cancel, for the bulk request `request`, the first `limit` by id of the waiting tasks with ids in
        (after, up_to] in these statuses that the selection's fields but `where` select: what
        `select_window` and `cancel_for_request` do, without reading the rows out. Returns how many it
        cancelled, their ids sorted (only with `ids`: a cancel nobody hears of needs none, and reading
        them out is a tenth of its cost), and the last id it went through: `up_to`, or the
        `limit`-th task's."""

    def cancelled_with_dependents(self, request: int, after: int, up_to: int) -> builtins.list[int]:
        """`with_dependents` of the tasks with ids in (after, up_to] that the bulk request `request`
        cancelled, sorted: found from the dependencies, without the ids of what it cancelled."""

    def reprioritize(self, ids: Sequence[int], priority: int) -> builtins.list[tuple[int, int]]:
        """Give those of `ids` still waiting this priority; (id, old priority) of those it changed."""

    def pauses(self) -> builtins.list[tuple[str, float, int | None, int | None]]:
        """(type, since, uid, pid) of each paused type, by type; '*' is the whole queue."""

    def add_pauses(
        self, types: Sequence[str], time: float, uid: int | None, pid: int | None
    ) -> builtins.list[str]:
        """Pause these types; returns those not paused before (the others keep who paused them)."""

    def remove_pauses(self, types: Sequence[str] | None) -> builtins.list[str]:
        """Resume these types (all, when None); returns those that were paused, sorted."""

    def queue_requests(self, events: Sequence[str], limit: int) -> builtins.list[dict[str, Any]]:
        """The latest `limit` requests about the whole queue recorded as one of `events`, oldest first."""


class LocalTaskStore(TaskStore, Protocol):
    """A store only this daemon uses (SQLite)."""

    @property
    def shared(self) -> Literal[False]: ...


class SharedTaskStore(TaskStore, Protocol):
    """A store several daemons share (PostgreSQL): what the service asks of it on top, only where
    `shared` is true. A running task belongs to the daemon that claimed it (its `host`)."""

    @property
    def shared(self) -> Literal[True]: ...

    daemon_id: str
    """This daemon among those of the store: HOSTNAME:PID."""

    limited_types: frozenset[str]
    """The types under a cluster limit, as last learnt (claims count against the store's own)."""

    limits_busy: bool
    """A claim passed over a type whose cluster limit another daemon held: claim again soon."""

    def host_of(self, task_id: int) -> str | None:
        """The daemon that runs the task, if one does."""

    def running_here(self) -> list[Task]:
        """The running tasks of this daemon."""

    def register(self, workers: int) -> list[str]:
        """Enter this daemon; returns the earlier daemons of its machine and state folder (gone)."""

    def heartbeat(self, busy: int) -> bool:
        """Tell the others this daemon lives; False if they took it for dead."""

    def expire_daemons(self, timeout: float) -> list[str]:
        """Remove the daemons whose heartbeat is older than `timeout` seconds; returns them."""

    def orphans(self) -> list[str]:
        """Daemons that hold running tasks but are registered no more."""

    def adopt(self, daemon_id: str) -> list[Task]:
        """Make the running tasks of a gone daemon this daemon's, to settle; each is taken once."""

    def set_cluster_limits(self, limits: dict[str, int]) -> dict[str, int]:
        """Make these the running-task limits of every daemon together; returns those before."""

    def hold_starts(self, types: Sequence[str] | None) -> list[int]:
        """Keep every daemon from starting tasks of these types (exact ones or globs; any, when
        None) until released; returns the holds."""

    def release_starts(self, holds: Sequence[int]) -> None:
        """End holds of `hold_starts`."""

    def deregister(self) -> None:
        """Leave the store: this daemon's tasks are settled, nothing is left to take over."""

    def daemons(self) -> list[dict[str, Any]]:
        """Every daemon of the store, with its workers and the age of its heartbeat."""

    def notify(self, channel: str, payload: bytes) -> None:
        """Send `payload` to the daemons listening on `channel` once the current transaction commits."""

    def notes_together(self) -> AbstractContextManager[None]:
        """Notifications made inside, outside a transaction, go in one round trip at the end."""

    def listen(
        self,
        channels: Sequence[str],
        ready: Callable[[], None] | None = None,
        wanted: Callable[[str], bool] | None = None,
    ) -> AsyncIterator[tuple[str, bytes]]:
        """What the daemons notify on `channels`; `ready` is called once it listens. What comes on a
        channel `wanted` refuses at that moment is dropped unread."""


ServiceStore = LocalTaskStore | SharedTaskStore
"""What the service runs on: a store of its own, or one it shares, told apart by `shared`."""
