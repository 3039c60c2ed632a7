"""TaskService: every operation on tasks, used by every transport.

Transports decode a request, call a method here and encode the answer; nothing here knows about
sockets. All methods run on the daemon's event loop, which owns the store: a method's store work
between two awaits is atomic with respect to every other request.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import msgpack

from msearchd import __version__
from msearchd.config import Settings
from msearchd.errors import InvalidArgument, InvalidState, MsearchError, NotFound, Unavailable
from msearchd.handlers import command
from msearchd.model import (
    TERMINAL,
    StopReason,
    Task,
    TaskStatus,
    default_priority,
    dependency_state,
    format_task_id,
    parse_task_id,
    validate_priority,
    validate_type,
)
from msearchd.protocol import PROTOCOL_VERSION, check_params, pack
from msearchd.scheduler import Scheduler
from msearchd.store import WAITING, Store
from msearchd.workers import Outcome, WorkerPool

log = logging.getLogger("msearchd.service")

# Who asked for the operation under way, (uid, pid), as the transport saw it; recorded in task histories.
REQUESTER: contextvars.ContextVar[tuple[int | None, int | None]] = contextvars.ContextVar(
    "requester", default=(None, None)
)

LIST_LIMIT_MAX = 10_000
# Rows a bulk cancel changes per transaction: small enough that other requests wait tens of ms at most.
BULK_CHUNK = 1000
# A retry writes a new task and its history: a chunk of these holds the loop about 10 ms.
RETRY_CHUNK = 200
PROGRESS_FLUSH_INTERVAL = 1.0
# A worker is handed the next tasks together when they are short: as many as are expected to take
# this long in all, at most LEASE_MAX. A task submitted meanwhile, whatever its priority, waits for
# them, so this bounds that wait.
LEASE_WINDOW = 0.05
# A lease whose tasks have not all started this long after it went out has a task running far longer
# than expected: those after it go back to the queue, for a free worker or a later lease.
LEASE_OVERRUN = 4 * LEASE_WINDOW
# How long the outcome of a task in the middle of a lease may wait to be recorded, so that the
# outcomes of a lease share a commit.
SETTLE_DELAY = 0.01
LEASE_MAX = 64
DURATION_SAMPLES = 3  # runs of a type before its duration is trusted
DURATION_WEIGHT = 0.2  # of the newest run in the moving mean
SUBSCRIBER_BUFFER = 10_000
# With a store that several daemons share: each writes its heartbeat this often; one whose heartbeat
# is DAEMON_EXPIRY seconds old is taken for dead, and its running tasks go back to the queue. A daemon
# that could not write its heartbeat for FENCE_AFTER seconds stops its running tasks first, so that
# a task never runs on two daemons at once.
HEARTBEAT_INTERVAL = 2.0
DAEMON_EXPIRY = 10.0
FENCE_AFTER = 5.0
# The grace period of the tasks stopped then: short enough that they are gone before the others
# take this daemon for dead, though the fence may start a heartbeat interval late.
FENCE_GRACE = DAEMON_EXPIRY - FENCE_AFTER - HEARTBEAT_INTERVAL - 1.0
# Events of another daemon after which this one may find a task to start.
WORK_EVENTS = frozenset({"submitted", "unblocked", "requeued", "priority_changed"})
# The progress of a task reaches the other daemons at most this often (its latest value).
PROGRESS_NOTIFY_INTERVAL = 0.2
# A notified event carries at most this much of a task's error.
NOTIFIED_ERROR_MAX = 1000
# Notification channels between daemons sharing a store.
EVENTS_CHANNEL = "msearch_events"
CANCEL_CHANNEL = "msearch_cancel"


class Subscription:
    """A bounded stream of events for one client, which never holds the daemon up.

    Progress is coalesced: a task has at most one progress event waiting, updated in place to the latest
    value. State changes are never dropped: a subscriber that lets too many of them pile up is sent an
    `overflow` event instead, and disconnected.
    """

    def __init__(self, task_ids: set[int] | None, types: set[str] | None) -> None:
        self.task_ids = task_ids
        self.types = types
        self._events: deque[dict[str, Any]] = deque()
        self._progress: dict[int, dict[str, Any]] = {}
        self._ready = asyncio.Event()
        self.overflowed = False

    def wants(self, event: dict[str, Any]) -> bool:
        if self.task_ids is not None and event["task_id_n"] not in self.task_ids:
            return False
        return self.types is None or event["type"] in self.types

    def offer(self, event: dict[str, Any]) -> None:
        if self.overflowed:
            return
        if event["event"] == "progress":
            waiting = self._progress.get(event["task_id_n"])
            if waiting is not None:
                waiting.update(event)
                return
            event = self._progress[event["task_id_n"]] = dict(event)
        elif len(self._events) >= SUBSCRIBER_BUFFER:
            self.overflowed = True
            self._events.clear()
            self._progress.clear()
            event = {"event": "overflow", "message": "subscriber fell too far behind; reconnect to resume"}
        self._events.append(event)
        self._ready.set()

    async def next(self) -> dict[str, Any]:
        while not self._events:
            self._ready.clear()
            await self._ready.wait()
        event = self._events.popleft()
        if event["event"] == "progress":
            self._progress.pop(event["task_id_n"], None)
        return event


def _type_filter(value: object) -> str | None:
    """A type to filter by: none, or a valid name (a typo'd name would match nothing, silently)."""
    return None if value is None else validate_type(value)


class Durations:
    """How long tasks of each type have been taking lately: what decides whether they are leased."""

    def __init__(self) -> None:
        self._mean: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def record(self, task_type: str, seconds: float) -> None:
        n = self._count.get(task_type, 0)
        mean = self._mean.get(task_type, seconds)
        self._mean[task_type] = mean + (seconds - mean) * max(DURATION_WEIGHT, 1 / (n + 1))
        self._count[task_type] = n + 1

    def expected(self, task_type: str) -> float | None:
        """The recent mean, once there are enough runs to go by; None before."""
        if self._count.get(task_type, 0) < DURATION_SAMPLES:
            return None
        return self._mean[task_type]


class TaskService:
    def __init__(self, store: Store, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.scheduler = Scheduler(settings.type_limits)
        self.pool: WorkerPool | None = None
        self.started_at = clock()
        self._wake = asyncio.Event()
        self._stopping = False
        self._bulk_cancels = 0  # bulk cancels under way: no task starts meanwhile
        self._progress: dict[int, tuple[float, str | None]] = {}
        self._dirty: set[int] = set()
        self._flush_wanted = asyncio.Event()
        self._waiters: dict[int, list[tuple[frozenset[TaskStatus], asyncio.Future[None]]]] = {}
        self._subscriptions: set[Subscription] = set()
        self._default_priority: dict[str, int] = {}
        self._finished: list[tuple[Task, Outcome]] = []
        self._durations = Durations()
        self._log_dir = str(settings.log_dir)
        self._checkpoints: set[asyncio.Task[None]] = set()
        # With a shared store: the tasks this daemon stopped when it lost the store; their outcomes
        # are not this daemon's to record any more (see `_fence`).
        self._abandoned: set[int] = set()
        self._last_beat = time.monotonic()
        self._fenced = False  # it stopped its tasks for want of a heartbeat: it starts none now
        self._background: set[asyncio.Task[Any]] = set()
        self._progress_out: dict[int, Task] = {}  # progress not yet told to the other daemons
        self._progress_held = False  # progress was told less than PROGRESS_NOTIFY_INTERVAL ago
        # Cancels asked of other daemons, by task: each answers how many dependents went with it.
        self._cancel_replies: dict[int, list[asyncio.Future[int]]] = {}

    def batch(self) -> AbstractContextManager[None]:
        """Requests made inside share one commit at the end (group commit); each stays atomic alone.

        A transport uses it for requests that arrived together, and answers them once it is over.
        """
        return self.store.group()

    # --- helpers ------------------------------------------------------------------------------------

    def _require(self, ref: object) -> Task:
        task_id = parse_task_id(ref)
        task = self.store.get(task_id)
        if task is None:
            raise NotFound(f"task {format_task_id(task_id)} does not exist")
        return task

    def log_path(self, task_id: int) -> str:
        return f"{self._log_dir}/{format_task_id(task_id)}.log"

    def wire(self, task: Task) -> dict[str, Any]:
        live = self._progress.get(task.id)
        if live is not None and task.status is TaskStatus.RUNNING:
            task.progress, task.current_operation = live
        if task.started_at is not None:
            path = self.log_path(task.id)
            if os.path.exists(path):  # noqa: PTH110 - a str: no Path object per task on the hot path
                task.log_path = path
        wire = task.to_wire()
        if self.store.shared:
            wire["host"] = task.host
        return wire

    def _publish(
        self, event: str, task: Task, *, deliver: bool = True, notify: bool = True, **extra: Any
    ) -> None:
        """Tell waiters and subscribers about a change, once it is committed: this daemon's
        (`deliver`), and with a shared store the other daemons' (`notify`)."""
        status = task.status
        payload = None
        shared = self.store.shared
        if self._subscriptions or shared:
            payload = {
                "event": event,
                "task_id": format_task_id(task.id),
                "task_id_n": task.id,
                "type": task.type,
                "status": str(status),
                "time": self.clock(),
                **extra,
            }
        if deliver and (payload is not None or task.id in self._waiters):
            self.store.after_commit(lambda: self._deliver(task.id, status, payload))
        if shared and notify:  # the other daemons hear of it when it commits, as this one does
            message = {"from": self.store.daemon_id, **(payload or {})}
            if isinstance(message.get("error"), str):
                message["error"] = message["error"][:NOTIFIED_ERROR_MAX]
            self._notify(EVENTS_CHANNEL, message)

    def _deliver(self, task_id: int, status: TaskStatus, payload: dict[str, Any] | None) -> None:
        for statuses, future in self._waiters.get(task_id, ()):
            if status in statuses and not future.done():
                future.set_result(None)
        if payload is not None:
            for sub in list(self._subscriptions):
                if sub.wants(payload):
                    sub.offer(payload)

    def _listened(self, task_id: int) -> bool:
        """Whether anyone may hear of a change to the task: a subscriber, a waiter, another daemon."""
        return bool(self._subscriptions) or task_id in self._waiters or self.store.shared

    def _notify(self, channel: str, message: dict[str, Any]) -> None:
        try:
            self.store.notify(channel, pack(message))
        except Unavailable:
            if self.store.transaction_open():
                raise  # what it tells about is lost with it

    def _publish_status(self, event: str, task_ids: Iterable[int], **extra: Any) -> None:
        """Publish a state change for tasks changed in bulk, reading them back only if anyone listens."""
        ids = [i for i in task_ids if self._listened(i)]
        with self._announcing():
            for task in self.store.get_many(ids):
                self._publish(event, task, **extra)

    def _announcing(self) -> AbstractContextManager[None]:
        """Announcements made inside reach the other daemons of a shared store together."""
        return self.store.notes_together() if self.store.shared else contextlib.nullcontext()

    def wake(self) -> None:
        """Let the dispatcher run, if it has anything to do: it shares the loop with the requests."""
        pool = self.pool
        if self._finished or self._stopping or pool is None or pool.idle_count:
            self._wake.set()

    def _record(self, task_ids: Iterable[int], event: str, **detail: Any) -> None:
        """Add an entry to the history of each task, naming who asked."""
        uid, pid = REQUESTER.get()
        now = self.clock()
        self.store.add_events((i, now, event, detail or None, uid, pid) for i in task_ids)

    # --- submit -------------------------------------------------------------------------------------

    def _prepare(
        self, task_type: object, data: object, priority: object, depends_on: object
    ) -> dict[str, Any]:
        """Validate one submission and work out where it starts; no writes."""
        task_type = validate_type(task_type)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise InvalidArgument("task data must be a map")
        if task_type == "command" and "command" not in self.settings.handlers:
            command.validate(data)
        if priority is None:
            prio = self._default_priority.get(task_type)
            if prio is None:
                prio = self._default_priority[task_type] = default_priority(
                    task_type, self.settings.priorities
                )
        else:
            prio = validate_priority(priority)
        if not depends_on:
            return {
                "task_type": task_type,
                "data": data,
                "priority": prio,
                "status": TaskStatus.PENDING,
                "depends_on": [],
                "blocked_reason": None,
            }
        if not isinstance(depends_on, list):
            raise InvalidArgument("depends_on must be a list of task ids")
        deps = [self._current_attempt(parse_task_id(d)) for d in dict.fromkeys(depends_on)]
        dep_tasks = {t.id: t for t in self.store.get_many(deps)}
        for dep in deps:
            if dep not in dep_tasks:
                raise NotFound(f"dependency {format_task_id(dep)} does not exist")
            if dep_tasks[dep].status is TaskStatus.CANCELLED:
                raise InvalidState(f"dependency {format_task_id(dep)} is cancelled")
        status, reason = dependency_state((d, dep_tasks[d].status) for d in deps)
        return {
            "task_type": task_type,
            "data": data,
            "priority": prio,
            "status": status,
            "depends_on": sorted(set(deps)),
            "blocked_reason": reason,
        }

    def _current_attempt(self, task_id: int) -> int:
        """Follow a failed task's retries to the newest attempt, so new dependents wait for that one."""
        seen = {task_id}
        while True:
            task = self.store.get(task_id)
            if task is None or task.status is not TaskStatus.FAILED or task.retried_as is None:
                return task_id
            task_id = task.retried_as
            if task_id in seen:
                return task_id
            seen.add(task_id)

    def submit(
        self,
        type: str,
        data: dict[str, Any] | None = None,
        priority: int | None = None,
        depends_on: list[Any] | None = None,
    ) -> dict[str, Any]:
        spec = self._prepare(type, data, priority, depends_on)
        now = self.clock()
        task_id = self.store.insert(**spec, created_at=now, submitter=REQUESTER.get())
        return self._submitted(task_id, spec, now)

    def _submitted(self, task_id: int, spec: dict[str, Any], now: float) -> dict[str, Any]:
        """Announce a task just written, and answer with it."""
        task = Task(
            id=task_id,
            type=spec["task_type"],
            status=spec["status"],
            priority=spec["priority"],
            data=spec["data"],
            depends_on=spec["depends_on"],
            blocked_reason=spec["blocked_reason"],
            created_at=now,
        )
        self._publish("submitted", task)
        if task.status is TaskStatus.PENDING:
            self.wake()
        return self.wire(task)

    def submit_each(self, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any] | MsearchError]:
        """Submit the tasks of separate requests that arrived together (checked params of `submit`).

        Each is accepted or refused on its own, exactly as `submit` would, in order; those without
        dependencies are written together, with one statement.
        """
        results: list[dict[str, Any] | MsearchError] = []
        waiting: list[tuple[int, dict[str, Any]]] = []  # (index in results, spec), not yet written

        def write_waiting() -> None:
            if not waiting:
                return
            now, submitter = self.clock(), REQUESTER.get()
            if len(waiting) == 1:
                ids = [self.store.insert(**waiting[0][1], created_at=now, submitter=submitter)]
            else:
                ids = self.store.insert_many([spec for _, spec in waiting], now, submitter)
            for (index, spec), task_id in zip(waiting, ids, strict=True):
                results[index] = self._submitted(task_id, spec, now)
            waiting.clear()

        for params in requests:
            try:
                if params.get("depends_on"):
                    write_waiting()  # it may name a task submitted just before it
                    results.append(self.submit(**params))
                    continue
                spec = self._prepare(params["type"], params.get("data"), params.get("priority"), None)
            except MsearchError as exc:
                results.append(exc)
                continue
            waiting.append((len(results), spec))
            results.append(spec)  # replaced by the answer once written
        write_waiting()
        return results

    def submit_many(self, tasks: list[Any]) -> dict[str, Any]:
        """Submit many tasks in one transaction: all are accepted, or none."""
        specs = []
        for i, item in enumerate(tasks):
            if not isinstance(item, dict):
                raise InvalidArgument(f"tasks[{i}] must be a map")
            try:
                params = check_params("submit", item)
                specs.append(
                    self._prepare(
                        params["type"], params.get("data"), params.get("priority"), params.get("depends_on")
                    )
                )
            except (InvalidArgument, InvalidState, NotFound) as exc:
                raise type(exc)(f"tasks[{i}]: {exc.message}") from None
        ids = self.store.insert_many(specs, self.clock(), REQUESTER.get())
        self._publish_status("submitted", ids)
        self.wake()
        return {"task_ids": [format_task_id(i) for i in ids]}

    def follow_up(self, parent_id: int, params: dict[str, Any]) -> str:
        params = check_params("submit", params)
        task = self.submit(**params)
        log.info("%s submitted follow-up %s", format_task_id(parent_id), task["id"])
        return str(task["id"])

    # --- reads --------------------------------------------------------------------------------------

    def get(self, task_id: Any) -> dict[str, Any]:
        return self.wire(self._require(task_id))

    @staticmethod
    def _statuses(status: str | list[Any] | None) -> list[str] | None:
        if status is None:
            return None
        values = status.split(",") if isinstance(status, str) else status
        out = []
        for value in values:
            try:
                out.append(str(TaskStatus(str(value).strip())))
            except ValueError:
                names = ", ".join(s.value for s in TaskStatus)
                raise InvalidArgument(f"unknown status {value!r}; one of: {names}") from None
        return out

    def list_tasks(
        self,
        status: str | list[Any] | None = None,
        type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise InvalidArgument(f"limit must be from 1 to {LIST_LIMIT_MAX}, got {limit}")
        if offset < 0:
            raise InvalidArgument(f"offset must be zero or more, got {offset}")
        tasks = self.store.list(self._statuses(status), _type_filter(type), limit, offset)
        return [self.wire(t) for t in tasks]

    def count(self, status: str | list[Any] | None = None, type: str | None = None) -> int:
        return self.store.count(self._statuses(status), _type_filter(type))

    def _workers(self) -> dict[str, int]:
        pool = self.pool
        return {"busy": pool.busy_count if pool else 0, "total": pool.size if pool else 0}

    def stats(self) -> dict[str, Any]:
        by_status = {s.value: 0 for s in TaskStatus}
        by_type: dict[str, dict[str, int]] = {}
        for task_type, status, n in self.store.counts():
            by_status[status] += n
            by_type.setdefault(task_type, {})[status] = n
        running = [
            {k: w[k] for k in ("id", "type", "progress", "current_operation", "started_at")}
            for w in map(self.wire, self.store.running())
        ]
        answer = {
            "total": sum(by_status.values()),
            "by_status": by_status,
            "by_type": by_type,
            "workers": self._workers(),
            "running": running,
        }
        if self.store.shared:
            answer["daemons"] = self.store.daemons()
        return answer

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime": self.clock() - self.started_at,
            "socket": str(self.settings.socket_path),
            "state_dir": str(self.settings.state_dir),
            "workers": self._workers(),
            "pending": self.store.count([TaskStatus.PENDING.value]),
        }

    # --- finishing ----------------------------------------------------------------------------------

    def _cascade_cancel(self, roots: Sequence[int]) -> int:
        """Cancel every waiting task that depends, directly or not, on `roots`; returns how many."""
        count = 0
        frontier = self.store.with_dependents(roots)
        while frontier:
            nxt: list[int] = []
            for root in frontier:
                dependents = self.store.dependents(root)
                if dependents:
                    done = self.store.cancel_waiting(
                        dependents, self.clock(), error=f"dependency {format_task_id(root)} was cancelled"
                    )
                    self._publish_status("cancelled", done, stop_reason=StopReason.NOT_STARTED.value)
                    nxt += done
            count += len(nxt)
            frontier = self.store.with_dependents(nxt)
        return count

    def _refresh_dependents(self, task_id: int) -> None:
        """Re-derive the state of the tasks blocked on `task_id` after it finished or was replaced."""
        for dep_id in self.store.dependents(task_id, statuses=(TaskStatus.BLOCKED.value,)):
            status, reason = dependency_state(self.store.dependency_statuses(dep_id))
            if status is TaskStatus.PENDING:
                task = self.store.update_returning(dep_id, status=status, blocked_reason=None)
                assert task is not None
                self._publish("unblocked", task)
                self.wake()
            else:
                self.store.update(dep_id, blocked_reason=reason)

    def _finish(self, task: Task, outcome: Outcome, dependents: bool = True) -> int:
        """Record how a running task ended and what follows for its dependents (`dependents`: it may
        have some); returns how many were cancelled with it."""
        live = self._progress.pop(task.id, None)
        self._dirty.discard(task.id)
        fields: dict[str, Any] = {
            "status": outcome.status,
            "finished_at": outcome.finished_at or self.clock(),
            "error": outcome.error,
            "stop_reason": outcome.stop_reason,
        }
        if outcome.started_at is not None:
            fields["started_at"] = outcome.started_at
        elif task.started_at is None:
            # It ran after another task of its lease, and its worker died before saying when it
            # started: by its end at the latest.
            fields["started_at"] = fields["finished_at"]
        if outcome.stop_reason is StopReason.NOT_STARTED:  # taken back from a worker before its turn
            fields["started_at"], fields["attempts"] = None, max(task.attempts - 1, 0)
        if live is not None:
            fields["progress"], fields["current_operation"] = live
        if outcome.status is TaskStatus.COMPLETED:
            fields["progress"] = 1.0
        cascaded = 0
        with self.store.transaction():
            if not self.store.update(task.id, expect=[TaskStatus.RUNNING.value], **fields):
                log.warning(
                    "%s ended (%s) but was no longer running", format_task_id(task.id), outcome.status
                )
                return 0
            if outcome.status is TaskStatus.CANCELLED:
                cascaded = self._cascade_cancel([task.id])
            elif dependents:
                self._refresh_dependents(task.id)
        if self._listened(task.id):
            extra = {"stop_reason": outcome.stop_reason.value} if outcome.stop_reason else {}
            if outcome.error:
                extra["error"] = outcome.error
            self._publish(outcome.status.value, dataclasses.replace(task, **fields), **extra)
        return cascaded

    # --- pool callbacks -----------------------------------------------------------------------------

    def worker_idle(self) -> None:
        self.wake()

    def task_progress(self, task: Task, progress: float | None, operation: str | None) -> None:
        task_id = task.id
        old_progress, old_op = self._progress.get(task_id, (0.0, None))
        new = (
            old_progress if progress is None else float(progress),
            old_op if operation is None else operation,
        )
        self._progress[task_id] = new
        self._dirty.add(task_id)
        self._flush_wanted.set()
        if self._listened(task.id):
            held = self._progress_held
            self._publish("progress", task, notify=not held, progress=new[0], current_operation=new[1])
            if held:
                self._progress_out[task_id] = task
            elif self.store.shared:
                self._progress_held = True
                asyncio.get_running_loop().call_later(PROGRESS_NOTIFY_INTERVAL, self._notify_progress)

    def _notify_progress(self) -> None:
        """Tell the other daemons the latest progress of the tasks that reported some since the last
        time, all in one round trip: tasks that report a thousand times a second cost five."""
        out, self._progress_out = self._progress_out, {}
        if not out:
            self._progress_held = False
            return
        asyncio.get_running_loop().call_later(PROGRESS_NOTIFY_INTERVAL, self._notify_progress)
        try:
            with self._announcing():
                for task_id, task in out.items():
                    live = self._progress.get(task_id)
                    if live is not None:  # else it ended meanwhile, and its end was told
                        self._publish(
                            "progress", task, deliver=False, progress=live[0], current_operation=live[1]
                        )
        except Unavailable as exc:
            log.warning("progress not told to the other daemons: %s", exc.message)

    def task_finished(self, task: Task, outcome: Outcome) -> None:
        """Queue the outcome: the dispatcher records those that arrived together in one transaction,
        when the worker asks for more work (its lease is done), or SETTLE_DELAY later at most."""
        self._finished.append((task, outcome))
        if len(self._finished) == 1:
            asyncio.get_running_loop().call_later(SETTLE_DELAY, self.wake)

    def task_started(self, task: Task) -> None:
        """A task that waited its turn in a lease was seen running, and runs long: record its start,
        so that a crash of the daemon from now on counts as an interrupted run of it."""
        task.started_at = self.clock()
        try:
            with self.store.transaction():
                self.store.mark_started(task.id, task.started_at)
        except Exception as exc:  # a full disk: its outcome records its start
            log.warning("cannot record the start of %s: %s", format_task_id(task.id), exc)

    def tasks_returned(self, tasks: list[Task]) -> None:
        """Tasks of a lease that never started: back in the queue, their start not counted."""
        for task in tasks:
            self.scheduler.finished(task.type)
        ids = [task.id for task in tasks]
        self.store.unlease(ids)
        self._publish_status("requeued", ids, reason="handed back before it started")  # `started` was told
        self.wake()

    @contextmanager
    def _settling(self) -> Iterator[None]:
        """A transaction that records outcomes and may start tasks. If it fails (a full disk), none
        of it was written: the outcomes stay queued for the next try, and the counts of running
        tasks by type are as they were."""
        finished, running = list(self._finished), self.scheduler.snapshot()
        try:
            with self.store.transaction():
                yield
        except BaseException:
            self._finished = finished  # nothing else ran meanwhile: the transaction does not wait
            self.scheduler.restore(running)
            raise

    def _settle(self) -> None:
        """Record the outcomes the workers reported since the last time."""
        batch, self._finished = self._finished, []
        if self._abandoned:
            batch = [(t, o) for t, o in batch if t.id not in self._abandoned]
        if not batch:
            return
        with_dependents = set(self.store.with_dependents([task.id for task, _ in batch]))
        plain: list[tuple[Task, Outcome]] = []  # completed, and nothing else to do: written together
        for task, outcome in batch:
            self.scheduler.finished(task.type)
            if outcome.started_at is not None and outcome.finished_at is not None:
                self._durations.record(task.type, outcome.finished_at - outcome.started_at)
            if outcome.status is TaskStatus.FAILED:
                log.info("%s failed: %s", format_task_id(task.id), outcome.error)
            if (
                outcome.status is TaskStatus.COMPLETED
                and outcome.finished_at is not None
                and task.id not in with_dependents
                and task.id not in self._progress
            ):
                plain.append((task, outcome))
            else:
                self._finish(task, outcome, dependents=task.id in with_dependents)
        if plain:
            self.store.complete_many([(o.started_at, o.finished_at, t.id) for t, o in plain])
            for task, outcome in plain:
                if self._listened(task.id):
                    done = dataclasses.replace(
                        task,
                        status=TaskStatus.COMPLETED,
                        progress=1.0,
                        started_at=outcome.started_at or task.started_at,
                        finished_at=outcome.finished_at,
                    )
                    self._publish(TaskStatus.COMPLETED.value, done)

    # --- dispatch -----------------------------------------------------------------------------------

    async def run_dispatcher(self) -> None:
        """Start pending tasks whenever a worker is idle; sleeps until something changes."""
        while not self._stopping:
            self._wake.clear()
            try:
                self._dispatch_ready()
            except Exception:  # a bug here must not stop all work; it is logged, and retried
                log.exception("dispatching failed")
                await asyncio.sleep(1.0)
                self._wake.set()
            await self._wake.wait()

    def _dispatch_ready(self) -> None:
        """Claim a task for every idle worker in one transaction, then hand them out."""
        pool = self.pool
        held = self._stopping or self._bulk_cancels or self._fenced or self._late()
        idle = pool.idle_pids() if pool is not None and not held else []
        if not idle and not self._finished:
            return
        leases: list[tuple[int, list[Task]]] = []
        with self._settling():
            self._settle()
            for pid in idle:
                lease = self._lease(pid)
                if not lease:
                    break
                leases.append((pid, lease))
        with self._announcing():
            for pid, lease in leases:
                assert pool is not None
                pool.dispatch(lease, pid, self.log_path, reclaim_after=LEASE_OVERRUN)
                for task in lease:
                    self._publish("started", task, worker_pid=pid, attempt=task.attempts)

    def _lease(self, pid: int) -> list[Task]:
        """The next task for worker `pid`, and after it, while they are known to take well under
        LEASE_WINDOW together, the tasks that follow it in the queue: the worker runs them one after
        the other without waiting for the daemon between them."""
        now = self.clock()
        first = self.store.claim_next(self.scheduler.excluded_types(), now, pid)
        if first is None:
            return []
        self.scheduler.started(first.type)
        expected = self._durations.expected(first.type)
        budget = LEASE_WINDOW - expected if expected is not None else 0.0  # unknown: alone
        ids: list[int] = []
        for task_id, task_type in self.store.next_pending(LEASE_MAX - 1) if budget > 0 else ():
            expected = self._durations.expected(task_type)
            if expected is None or expected > budget or self.scheduler.limited(task_type):
                break
            budget -= expected
            ids.append(task_id)
        more = self.store.claim_ids(ids, pid) if ids else []
        for task in more:
            self.scheduler.started(task.type)
        return [first, *more]

    async def run_progress_flusher(self) -> None:
        """Persist progress at a bounded rate, and only while tasks report it."""
        while True:
            await self._flush_wanted.wait()
            await asyncio.sleep(PROGRESS_FLUSH_INTERVAL)
            self._flush_wanted.clear()
            try:
                self.flush_progress()
            except Unavailable as exc:  # kept for the next flush
                log.warning("progress not saved: %s", exc.message)
                self._flush_wanted.set()

    def flush_progress(self) -> None:
        if self._dirty:
            self.store.save_progress((i, *self._progress[i]) for i in self._dirty if i in self._progress)
            self._dirty.clear()

    # --- control ------------------------------------------------------------------------------------

    async def _stop_running(self, task: Task, by: str, asked_elsewhere: bool = False) -> tuple[Outcome, int]:
        """Stop a running task for good; returns how it ended and how many dependents were cancelled.
        `asked_elsewhere`: another daemon recorded the request, and this one runs the task."""
        with self._settling():
            self._settle()  # it may have finished already, its outcome not yet recorded
        current = self.store.get(task.id)
        if current is None or current.status is not TaskStatus.RUNNING:
            return Outcome(current.status if current else TaskStatus.CANCELLED), 0
        if self.store.shared and self.store.host_of(task.id) != self.store.daemon_id:
            return await self._stop_elsewhere(current, by)
        if not asked_elsewhere:
            with self.store.transaction():
                self.store.update(task.id, cancel_requested=1)
                self._record([task.id], "cancel_requested", by=by, running=True)
            self._publish("cancel_requested", task)
        outcome = None
        if self.pool is not None:
            outcome = await self.pool.terminate(task.id, self.settings.grace)
        if outcome is None:  # no worker has it: it ended meanwhile, its outcome may wait to be recorded
            with self._settling():
                self._settle()
        current = self.store.get(task.id)
        assert current is not None
        if current.status is not TaskStatus.RUNNING:  # a concurrent cancel recorded it already
            return Outcome(current.status, current.error, current.stop_reason), 0
        if outcome is None:
            outcome = Outcome(TaskStatus.CANCELLED, stop_reason=StopReason.KILLED)
        self.scheduler.finished(current.type)
        return outcome, self._finish(current, outcome)

    async def _stop_elsewhere(self, task: Task, by: str) -> tuple[Outcome, int]:
        """Ask the daemon that runs the task to stop it, and wait for its answer: within the grace
        period and a second, or the answer says that daemon did not stop it."""
        ref = format_task_id(task.id)
        reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._cancel_replies.setdefault(task.id, []).append(reply)
        cascaded = 0
        try:
            with self.store.transaction():
                self.store.update(task.id, cancel_requested=1)
                self._record([task.id], "cancel_requested", by=by, running=True)
                self._notify(CANCEL_CHANNEL, {"task_id": task.id, "by": by})
            self._publish("cancel_requested", task)
            with contextlib.suppress(TimeoutError):
                cascaded = await asyncio.wait_for(reply, self.settings.grace + 1.0)
        finally:
            replies = [r for r in self._cancel_replies.get(task.id, []) if r is not reply]
            if replies:
                self._cancel_replies[task.id] = replies
            else:
                self._cancel_replies.pop(task.id, None)
        current = self.store.get(task.id)
        assert current is not None
        if current.status is TaskStatus.RUNNING:
            host = self.store.host_of(task.id)
            raise Unavailable(
                f"{ref} runs on {host}, which did not stop it within {self.settings.grace + 1:g} s; "
                f"it stops when that daemon sees the request, or is taken for dead"
            )
        return Outcome(current.status, current.error, current.stop_reason), cascaded

    async def _stop_for_another(self, task_id: int, by: str) -> None:
        """Stop a task of this daemon that another daemon was asked to cancel, and answer it."""
        task = self.store.get(task_id)
        cascaded = 0
        if task is not None and task.status is TaskStatus.RUNNING:
            _, cascaded = await self._stop_running(task, by=by, asked_elsewhere=True)
        self._notify(CANCEL_CHANNEL, {"reply": task_id, "cancelled_dependents": cascaded})

    def cancel(self, task_id: Any, running: bool = False) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """Cancel a task. The answer comes at once for a waiting task; for a running one, an awaitable
        that completes once nothing of the task is left. A task that waits its turn in a worker's
        lease has not started: it is cancelled like a pending one, `running` or not."""
        return self._cancel(self._require(task_id), running, take_back=True)

    def _cancel(
        self, task: Task, running: bool, take_back: bool
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        ref = format_task_id(task.id)
        if task.status in TERMINAL:
            raise InvalidState(
                f"{ref} is already {task.status}; only pending, blocked or running tasks can be cancelled"
            )
        if task.status is TaskStatus.RUNNING:
            if running:
                return self._cancel_running(task)
            if take_back and self.pool is not None and self.pool.waits_in_lease(task.id):
                return self._cancel_handed_out(task)
            raise InvalidState(f"{ref} is running; add running=true to stop it")
        return self._cancel_waiting(task, by="cancel")

    def _cancel_waiting(self, task: Task, by: str) -> dict[str, Any]:
        with self.store.transaction():
            self._record([task.id], "cancel_requested", by=by, running=False)
            now = self.clock()  # after the request's time: the history lists the request first
            changed = self.store.update(
                task.id,
                expect=WAITING,
                status=TaskStatus.CANCELLED,
                finished_at=now,
                stop_reason=StopReason.NOT_STARTED,
                blocked_reason=None,
            )
            assert changed  # nothing ran between the read and this write
            cascaded = self._cascade_cancel([task.id])
        # The task read above is this call's own copy: it becomes what was just written.
        task.status, task.finished_at = TaskStatus.CANCELLED, now
        task.stop_reason, task.blocked_reason = StopReason.NOT_STARTED, None
        self._publish("cancelled", task, stop_reason=StopReason.NOT_STARTED.value)
        return {"task": self.wire(task), "cancelled_dependents": cascaded}

    async def _take_back(self, task: Task, by: str) -> int | None:
        """Cancel a task that waits its turn in a worker's lease, as if it were pending: it never
        runs. Returns how many dependents were cancelled with it; None if the worker started it
        meanwhile."""
        assert self.pool is not None
        taken = await self.pool.take_back(task.id)
        current = self._require(task.id)
        if taken and current.status is TaskStatus.RUNNING:
            self.scheduler.finished(current.type)
            with self.store.transaction():
                self._record([task.id], "cancel_requested", by=by, running=False)
                outcome = Outcome(TaskStatus.CANCELLED, stop_reason=StopReason.NOT_STARTED)
                return self._finish(current, outcome)
        if current.status.waiting:  # its lease overran meanwhile: it is back in the queue
            return int(self._cancel_waiting(current, by)["cancelled_dependents"])
        return None

    async def _cancel_handed_out(self, task: Task) -> dict[str, Any]:
        cascaded = await self._take_back(task, by="cancel")
        if cascaded is None:  # it runs, or ended, now: answer for that
            with self._settling():
                self._settle()  # if it ended, its outcome may wait to be recorded
            answer = self._cancel(self._require(task.id), running=False, take_back=False)
            assert isinstance(answer, dict)
            return answer
        return {"task": self.get(task.id), "cancelled_dependents": cascaded}

    async def _cancel_running(self, task: Task) -> dict[str, Any]:
        outcome, cascaded = await self._stop_running(task, by="cancel")
        if outcome.status is not TaskStatus.CANCELLED:
            raise InvalidState(f"{format_task_id(task.id)} {outcome.status} before the cancel took effect")
        return {"task": self.get(task.id), "cancelled_dependents": cascaded}

    async def _checkpoint_later(self) -> None:
        """Checkpoint on a thread what a bulk change wrote, then let commits checkpoint again."""
        try:
            await asyncio.to_thread(self.store.checkpoint)
        except Exception:
            log.exception("checkpoint after a bulk change failed; the next commits will retry it")
        finally:
            self.store.resume_checkpoints()

    async def _cancel_many(self, task_type: str | None, running: bool) -> dict[str, Any]:
        """Cancel waiting tasks in bounded chunks, letting other requests through between them."""
        self.store.pause_checkpoints()
        try:
            return await self._cancel_waiting_and_running(task_type, running)
        finally:
            task = asyncio.ensure_future(self._checkpoint_later())
            self._checkpoints.add(task)
            task.add_done_callback(self._checkpoints.discard)

    async def _cancel_waiting_and_running(self, task_type: str | None, running: bool) -> dict[str, Any]:
        by = "cancel-all" if task_type is None else "cancel-by-type"
        uid, pid = REQUESTER.get()
        detail: dict[str, Any] = {"by": by, "running": running}
        if task_type is not None:
            detail["task_type"] = task_type
        with self.store.transaction():
            request = self.store.add_bulk_request(self.clock(), "cancel_requested", detail, uid, pid)
        max_id = self.store.max_id()
        cancelled = cascaded = failed = 0
        # Requests go on between chunks; starting tasks does not: the dispatcher, taking tasks by
        # priority, would start ones this request is about to cancel.
        self._bulk_cancels += 1
        try:
            while True:
                with self.store.transaction():
                    ids = self.store.cancel_waiting_batch(
                        task_type, max_id, self.clock(), BULK_CHUNK, request
                    )
                    if task_type is not None:
                        cascaded += self._cascade_cancel(ids)
                if not ids:
                    break
                cancelled += len(ids)
                self._publish_status("cancelled", ids, stop_reason=StopReason.NOT_STARTED.value)
                await asyncio.sleep(0)
            if task_type is None:  # tasks submitted meanwhile may depend on ones it cancelled
                with self.store.transaction():
                    cascaded += self._cascade_cancel(
                        self.store.bulk_cancelled_with_newer_dependents(request, max_id)
                    )
        finally:
            self._bulk_cancels -= 1
            self.wake()
        targets = [t for t in self.store.running() if task_type is None or t.type == task_type]
        if running:
            results = await asyncio.gather(*(self._stop_running(t, by=by) for t in targets))
            for outcome, n in results:
                cascaded += n
                if outcome.status is TaskStatus.CANCELLED:
                    cancelled += 1
                else:
                    failed += 1
        elif self.pool is not None:  # those handed to a worker that has not started them are waiting
            handed_out = [t for t in targets if self.pool.waits_in_lease(t.id)]
            for n in await asyncio.gather(*(self._take_back(t, by=by) for t in handed_out)):
                if n is not None:
                    cancelled += 1
                    cascaded += n
        return {
            "cancelled": cancelled,
            "failed": failed,
            "total": cancelled + failed,
            "cancelled_dependents": cascaded,
        }

    async def cancel_all(self, running: bool = False) -> dict[str, Any]:
        return await self._cancel_many(None, running)

    async def cancel_by_type(self, task_type: str, running: bool = False) -> dict[str, Any]:
        validate_type(task_type)
        return {**await self._cancel_many(task_type, running), "task_type": task_type}

    def set_priority(self, task_id: Any, priority: int) -> dict[str, Any]:
        priority = validate_priority(priority)
        task = self._require(task_id)
        if not task.status.waiting:
            ref = format_task_id(task.id)
            raise InvalidState(f"{ref} is {task.status}; only a pending or blocked task's priority changes")
        old = task.priority
        with self.store.transaction():
            changed = self.store.update(task.id, expect=WAITING, priority=priority)
            assert changed  # nothing ran between the read and this write
            self._record([task.id], "priority_changed", old=old, new=priority)
        task.priority = priority
        self._publish("priority_changed", task, old_priority=old, priority=priority)
        if task.status is TaskStatus.PENDING:
            self.wake()
        return self.wire(task)

    def retry(self, task_id: Any) -> dict[str, Any]:
        old = self._require(task_id)
        ref = format_task_id(old.id)
        if old.status is not TaskStatus.FAILED:
            raise InvalidState(f"{ref} is {old.status}; only failed tasks can be retried")
        if old.retried_as is not None:
            raise InvalidState(f"{ref} was already retried as {format_task_id(old.retried_as)}")
        with self.store.transaction():
            spec = self._prepare(old.type, old.data, old.priority, old.depends_on)
            new_id = self.store.insert(
                **spec, retry_of=old.id, created_at=self.clock(), submitter=REQUESTER.get()
            )
            self.store.update(old.id, retried_as=new_id)
            self._record([old.id], "retried", new_task_id=format_task_id(new_id))
            handed_over = self.store.replace_dependency(old.id, new_id)
            for dependent in handed_over:
                _, reason = dependency_state(self.store.dependency_statuses(dependent))
                self.store.update(dependent, blocked_reason=reason)
            self._record(handed_over, "dependency_replaced", old=ref, new=format_task_id(new_id))
        new = self.store.get(new_id)
        assert new is not None
        self._publish("retried", old, new_task_id=format_task_id(new_id))
        self._publish("submitted", new, retry_of=ref)
        if new.status is TaskStatus.PENDING:
            self.wake()
        return {
            "task_id": ref,
            "new_task_id": format_task_id(new_id),
            "task": self.wire(new),
            "handed_over": [format_task_id(d) for d in handed_over],
        }

    async def retry_failed(self, task_type: str | None = None) -> list[dict[str, Any]]:
        """Retry every failed task not yet retried, oldest first, so that a pipeline re-forms in order.
        A night of failures can be tens of thousands: they go a chunk at a time, each chunk one
        commit, and other requests are answered in between. Tasks that fail meanwhile (these
        retries among them) are not part of the request."""
        task_type = _type_filter(task_type)
        results: list[dict[str, Any]] = []
        after, max_id = 0, self.store.max_id()
        while batch := self.store.failed_not_retried(task_type, after, max_id, RETRY_CHUNK):
            with self.store.transaction():
                for task_id in batch:
                    try:
                        answer = self.retry(task_id)
                        results.append({"task_id": answer["task_id"], "new_task_id": answer["new_task_id"]})
                    except (InvalidState, NotFound) as exc:  # refused before it wrote anything
                        results.append({"task_id": format_task_id(task_id), "error": exc.message})
            after = batch[-1]
            await asyncio.sleep(0)
        return results

    async def wait(
        self, task_ids: list[Any], statuses: list[Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Block until every task is in one of `statuses` (default: finished), or the timeout passes."""
        ids = list(dict.fromkeys(parse_task_id(t) for t in task_ids))
        if not ids:
            raise InvalidArgument("wait needs at least one task id")
        wanted = frozenset(TaskStatus(s) for s in self._statuses(statuses) or []) or TERMINAL
        tasks = {t.id: t for t in self.store.get_many(ids)}
        for task_id in ids:
            if task_id not in tasks:
                raise NotFound(f"task {format_task_id(task_id)} does not exist")
        loop = asyncio.get_running_loop()
        futures: dict[int, asyncio.Future[None]] = {}
        for task_id, task in tasks.items():
            if task.status not in wanted:
                futures[task_id] = loop.create_future()
                self._waiters.setdefault(task_id, []).append((wanted, futures[task_id]))
        timed_out = False
        try:
            if futures:
                _, pending = await asyncio.wait(futures.values(), timeout=timeout)
                timed_out = bool(pending)
        finally:
            for task_id, future in futures.items():
                entries = [e for e in self._waiters.get(task_id, []) if e[1] is not future]
                if entries:
                    self._waiters[task_id] = entries
                else:
                    self._waiters.pop(task_id, None)
        final = {t.id: t for t in self.store.get_many(ids)}
        return {"tasks": [self.wire(final[i]) for i in ids], "timed_out": timed_out}

    def history(self, task_id: Any) -> list[dict[str, Any]]:
        """What happened to a task, oldest first: its lifecycle, and every request about it and by whom."""
        task = self._require(task_id)
        recorded = self.store.events(task.id)
        changes = [e["old"] for e in recorded if e["event"] == "priority_changed"]
        first: dict[str, Any] = {
            "time": task.created_at,
            "event": "submitted",
            "priority": changes[0] if changes else task.priority,
        }
        if task.retry_of is not None:
            first["retry_of"] = format_task_id(task.retry_of)
        uid, pid = self.store.submitter(task.id)
        if uid is not None:
            first.update(uid=uid, pid=pid)
        entries = [first, *recorded]
        if task.started_at is not None:
            entries.append(
                {
                    "time": task.started_at,
                    "event": "started",
                    "attempt": task.attempts,
                    "worker_pid": task.worker_pid,
                }
            )
        if task.finished_at is not None:
            end: dict[str, Any] = {"time": task.finished_at, "event": str(task.status)}
            if task.stop_reason:
                end["stop_reason"] = str(task.stop_reason)
            if task.error:
                end["error"] = task.error
            entries.append(end)
        return sorted(entries, key=lambda e: e["time"])

    def subscribe(self, task_ids: list[Any] | None = None, types: list[Any] | None = None) -> Subscription:
        ids = {parse_task_id(t) for t in task_ids} if task_ids else None
        kinds = {validate_type(t) for t in types} if types else None
        sub = Subscription(ids, kinds)
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)

    # --- start and stop -----------------------------------------------------------------------------

    def recover(self) -> None:
        """Settle the tasks a previous daemon left running: it stopped without finishing them. With
        a shared store, those of this daemon's predecessor on this machine (and state folder), and
        of any daemon gone without a trace; the others' tasks run on."""
        if not self.store.shared:
            self._settle_left(self.store.running(), "the daemon stopped")
        else:
            gone = self.store.register(self.settings.workers)
            self._take_over([*gone, *self.store.orphans()], "the daemon stopped")
        self.wake()

    def _take_over(self, daemons: Iterable[str], why: str) -> None:
        for daemon_id in daemons:
            tasks = self.store.adopt(daemon_id)
            if tasks:
                log.warning("taking over %d running task(s) of daemon %s", len(tasks), daemon_id)
            self._settle_left(tasks, why)

    def _settle_left(self, tasks: Iterable[Task], why: str) -> None:
        """Settle running tasks that no daemon runs any more; `why` says what stopped them."""
        for task in tasks:
            ref = format_task_id(task.id)
            # Handed to a worker in a lease, after another task, and never started (see claim_ids).
            started = task.started_at is not None
            if self.store.cancel_requested(task.id):
                log.warning("%s: its cancel was under way when %s; now cancelled", ref, why)
                reason = StopReason.KILLED if started else StopReason.NOT_STARTED
                self._finish(task, Outcome(TaskStatus.CANCELLED, stop_reason=reason))
            elif not started:
                log.info("%s was handed to a worker but had not started; back to pending", ref)
                reason = f"{why} before it started"
                with self.store.transaction():
                    self.store.unlease([task.id])
                    self._record([task.id], "requeued", reason=reason)
                self._publish_status("requeued", [task.id], reason=reason)
            elif task.attempts >= self.settings.max_attempts:
                log.warning(
                    "%s was interrupted on attempt %d of %d; marking it failed",
                    ref,
                    task.attempts,
                    self.settings.max_attempts,
                )
                self._finish(
                    task,
                    Outcome(
                        TaskStatus.FAILED,
                        error=f"interrupted {task.attempts} times by a daemon stop; not retried",
                    ),
                )
            else:
                log.warning(
                    "%s was interrupted (attempt %d of %d); back to pending",
                    ref,
                    task.attempts,
                    self.settings.max_attempts,
                )
                reason = f"interrupted: {why} without finishing it"
                with self.store.transaction():
                    self.store.update(task.id, status=TaskStatus.PENDING, worker_pid=None)
                    self._record([task.id], "requeued", reason=reason)
                self._publish_status("requeued", [task.id], reason=reason)

    # --- several daemons, one store -----------------------------------------------------------------

    async def run_cluster(self) -> None:
        """With a shared store: the heartbeat, the takeover of dead daemons' tasks, and what the
        other daemons notify (events, cancels). A store of its own needs none of it."""
        if self.store.shared:
            await asyncio.gather(self._heartbeats(), self._listen())

    def _late(self) -> bool:
        """With a shared store: the heartbeat is so old that the others may soon take this daemon
        for dead (its loop stalled): it starts nothing until the next one."""
        return self.store.shared and time.monotonic() - self._last_beat > FENCE_AFTER

    async def _heartbeats(self) -> None:
        self._last_beat = time.monotonic()
        while not self._stopping:
            try:
                await self._beat()
            except Unavailable as exc:
                if time.monotonic() - self._last_beat > FENCE_AFTER:
                    await self._fence(exc.message)
            except Exception:  # a bug here must not stop the heartbeat; it is logged, and retried
                log.exception("heartbeat failed")
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def _beat(self) -> None:
        pool = self.pool
        late = time.monotonic() - self._last_beat
        if late > FENCE_AFTER:  # the loop stalled: the others may be about to take this daemon for dead
            await self._fence(f"the last heartbeat is {late:.0f} s old")
        if not self.store.heartbeat(pool.busy_count if pool else 0):
            await self._fence("the other daemons took this one for dead")
            self.store.register(self.settings.workers)
        self._last_beat = time.monotonic()
        if self._fenced:
            abandoned = [t for t in self.store.running_here() if t.id in self._abandoned]
            self._settle_left(abandoned, "this daemon lost its store")
            self._abandoned.clear()
            self._fenced = False
            log.info("the store answers again; starting tasks again")
            self.wake()
        expired = self.store.expire_daemons(DAEMON_EXPIRY)
        for daemon_id in expired:
            log.warning("daemon %s gave no heartbeat for %g s: taken for dead", daemon_id, DAEMON_EXPIRY)
        gone = [*expired, *self.store.orphans()]
        if gone:
            self._take_over(gone, "its daemon stopped answering")
            self.wake()

    async def _fence(self, why: str) -> None:
        """Stop every task this daemon runs, and start none, until its heartbeat is written again:
        past DAEMON_EXPIRY the others put them back in the queue, and one may start them."""
        if not self._fenced:
            log.warning("%s: stopping the running tasks and starting none until the store answers", why)
        self._fenced = True
        if self.pool is None:
            return
        ids = [i for i in self.pool.task_ids() if i not in self._abandoned]
        self._abandoned.update(ids)
        await asyncio.gather(*(self.pool.terminate(i, min(self.settings.grace, FENCE_GRACE)) for i in ids))

    async def _listen(self) -> None:
        """What the other daemons notify, on a connection of its own that comes back when lost."""
        while not self._stopping:
            try:
                async for channel, raw in self.store.listen(
                    [EVENTS_CHANNEL, CANCEL_CHANNEL], self._listening
                ):
                    self._heard(channel, msgpack.unpackb(raw, raw=False))
            except Exception as exc:
                log.warning("lost the notifications of the other daemons (%s); listening again", exc)
                await asyncio.sleep(HEARTBEAT_INTERVAL)

    def _listening(self) -> None:
        """Listening (again): what was notified before is missed, so waits and the queue are looked
        at afresh."""
        for task_id, status in self.store.statuses(list(self._waiters)).items():
            self._deliver(task_id, status, None)
        self.wake()

    def _heard(self, channel: str, message: dict[str, Any]) -> None:
        if channel == CANCEL_CHANNEL:
            if "reply" in message:
                for reply in self._cancel_replies.get(message["reply"], ()):
                    if not reply.done():
                        reply.set_result(message["cancelled_dependents"])
                return
            if self.store.host_of(message["task_id"]) != self.store.daemon_id:
                return  # another daemon's task, or one that is no daemon's any more
            stop = asyncio.ensure_future(self._stop_for_another(message["task_id"], message["by"]))
            self._background.add(stop)
            stop.add_done_callback(self._background.discard)
            return
        if message.pop("from") == self.store.daemon_id:
            return
        self._deliver(message["task_id_n"], TaskStatus(message["status"]), message)
        if message["event"] in WORK_EVENTS:
            self.wake()

    async def stop(self) -> None:
        """Stop dispatching and stop running tasks; they go back to pending, not lost."""
        self._stopping = True
        self.wake()
        if self.pool is not None:
            outcomes = await self.pool.stop(self.settings.grace)
            self.flush_progress()  # while the interrupted tasks still count as running
            with self._settling():
                self._settle()  # what finished before the stop
            for task_id, outcome in outcomes.items():
                task = self.store.get(task_id)
                if task is None or task.status is not TaskStatus.RUNNING:
                    continue
                if outcome.stop_reason is StopReason.NOT_STARTED and not self.store.cancel_requested(task_id):
                    with self.store.transaction():  # its worker stopped before it reached it
                        self.store.unlease([task_id])
                elif outcome.status is TaskStatus.CANCELLED and not self.store.cancel_requested(task_id):
                    log.info("%s stopped with the daemon; back to pending", format_task_id(task_id))
                    with self.store.transaction():
                        self.store.update(task_id, status=TaskStatus.PENDING, worker_pid=None)
                        self._record([task_id], "requeued", reason="stopped with the daemon")
                else:
                    self._finish(task, outcome)
        self.flush_progress()
        if self._checkpoints:
            await asyncio.wait(self._checkpoints)
        for sub in list(self._subscriptions):
            sub.offer({"event": "shutdown", "task_id_n": 0, "type": "", "message": "daemon stopping"})
