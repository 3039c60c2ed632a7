"""The core of `TaskService`: the loop's state, who asked (`REQUESTER`), group commit, events to waiters.

Every operation family is a mixin beside this module; this one holds what they all share.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from msearchd.config import Settings
from msearchd.errors import NotFound, Unavailable
from msearchd.model import (
    TERMINAL,
    Task,
    TaskStatus,
    format_task_id,
    parse_task_id,
)
from msearchd.protocol import pack
from msearchd.retention import Retention
from msearchd.scheduler import Scheduler
from msearchd.service.dispatch import Durations
from msearchd.service.fanout import FANOUT_EVENT, Fanned, FanoutBudget
from msearchd.service.wait import Subscription, WaitCall
from msearchd.store import WAITING, ServiceStore
from msearchd.workers import Outcome, WorkerPool

# Who asked for the operation under way, (uid, pid), as the transport saw it; recorded in task histories.
REQUESTER: contextvars.ContextVar[tuple[int | None, int | None]] = contextvars.ContextVar(
    "requester", default=(None, None)
)
# Its `get`, bound once: CPython 3.11 makes a bound method at each `REQUESTER.get()`.
requester = REQUESTER.get
# A notified event carries at most this much of a task's error.
NOTIFIED_ERROR_MAX = 1000
# Notification channels between daemons sharing a store.
EVENTS_CHANNEL = "msearch_events"
CANCEL_CHANNEL = "msearch_cancel"
# Said once per commit that may give the other daemons a task to start: a daemon reads the events of
# the others only while it has waiters or subscribers (see service.cluster), this one always.
WORK_CHANNEL = "msearch_work"
WORK_EVENTS = frozenset({"submitted", "unblocked", "requeued", "priority_changed"})
# Said when the queue's pauses change, for the other daemons to read them again.
QUEUE_CHANNEL = "msearch_queue"


class Peers:
    """What a daemon of a shared store keeps about its part among the others.

    Apart from the service's own attributes, which stay fewer than 30: from 30 on, CPython 3.11
    keeps an instance's attributes in a dict of its own, and then every `self.method()` of the
    service misses the interpreter's cache of method lookups (about 0.5% of a control write's
    instructions)."""

    __slots__ = (
        "abandoned",
        "cancel_replies",
        "fenced",
        "last_beat",
        "progress_held",
        "progress_out",
        "take_back_replies",
        "work_told",
    )

    def __init__(self) -> None:
        # The tasks this daemon stopped when it lost the store; their outcomes are not this daemon's
        # to record any more (see `_fence`).
        self.abandoned: set[int] = set()
        self.last_beat = time.monotonic()
        self.fenced = False  # it stopped its tasks for want of a heartbeat: it starts none now
        self.progress_out: dict[int, Task] = {}  # progress not yet told to the other daemons
        self.progress_held = False  # progress was told less than PROGRESS_NOTIFY_INTERVAL ago
        # Cancels asked of other daemons, by task: each answers how many dependents went with it.
        self.cancel_replies: dict[int, list[asyncio.Future[int]]] = {}
        self.work_told = -1  # the transaction that told the other daemons of work already
        # Tasks asked of other daemons to take back from a worker's lease: how many dependents went
        # with each, or None where it was not taken back.
        self.take_back_replies: dict[int, list[asyncio.Future[int | None]]] = {}


class ServiceCore:
    """The state every operation shares, and publishing changes to waiters and subscribers."""

    def __init__(
        self, store: ServiceStore, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        limits = dict(settings.type_limits)
        if not store.shared:  # the only daemon: the limits of the whole cluster are its own
            for task_type, most in (settings.cluster_type_limits or {}).items():
                limits[task_type] = min(most, limits.get(task_type, most))
        self.scheduler = Scheduler(limits)
        self.pool: WorkerPool | None = None
        self.started_at = clock()
        self._wake = asyncio.Event()
        self._stopping = False
        self._bulk_cancels = 0  # bulk cancels under way: no task starts meanwhile
        self._bulk_ops: set[asyncio.Task[Any]] = set()  # requests that go in chunks (see _bulk)
        self._progress: dict[int, tuple[float, str | None]] = {}
        self._dirty: set[int] = set()
        self._flush_wanted = asyncio.Event()
        self._waiters: dict[int, list[tuple[frozenset[TaskStatus], WaitCall]]] = {}
        self._waits_before_end = 0  # waits for a state short of the end: they hear of starts
        self._subscriptions: set[Subscription] = set()
        self._default_priority: dict[str, int] = {}
        self._finished: list[tuple[Task, Outcome]] = []
        self._settle_timer: asyncio.TimerHandle | None = None  # the dispatcher's turn for them, at the latest
        self._durations = Durations()
        self._log_dir = str(settings.log_dir)
        self._checkpoints: set[asyncio.Task[None]] = set()
        self._fanouts: set[asyncio.Task[Fanned]] = set()
        self._deferred: list[asyncio.Future[Fanned]] | None = None  # see _deferring
        self._fanout_budget = FanoutBudget()
        self._dispatch_failures = 0  # turns of the dispatcher that failed in a row; it backs off meanwhile
        self._background: set[asyncio.Task[Any]] = set()
        self._peers = Peers()
        self.retention = Retention(store, settings, self.log_path, self._running_ids, (FANOUT_EVENT,), clock)

    def _require(self, ref: object) -> Task:
        task_id = parse_task_id(ref)
        task = self.store.get(task_id)
        if task is None:
            raise NotFound(f"task {format_task_id(task_id)} does not exist")
        return task

    def _read_waiting(self, task_id: int) -> tuple[str, dict[str, Any] | None]:
        """The task's status, and, if it waits (pending or blocked), the task as `wire` shows it, read
        without a `Task`: a control write of a waiting task answers with the task it changed, and
        building a `Task` to show it was about a sixth of the request's Python."""
        answer = self.store.get_wire(task_id)
        if answer is None:
            raise NotFound(f"task {format_task_id(task_id)} does not exist")
        status = answer["status"]
        if status not in WAITING:
            return status, None
        if answer["started_at"] is not None:  # it ran, and went back to the queue: `wire` finds its log
            task = self.store.get(task_id)
            assert task is not None  # read just now, and nothing ran since
            return status, self.wire(task)
        return status, answer

    def _running_ids(self) -> list[int]:
        return [task.id for task in self.store.running()]

    def log_path(self, task_id: int) -> str:
        return f"{self._log_dir}/{format_task_id(task_id)}.log"

    def wire(self, task: Task) -> dict[str, Any]:
        live = self._progress.get(task.id)
        if live is not None and task.status is TaskStatus.RUNNING:
            task.progress, task.current_operation = live
        if task.started_at is not None:
            path = self.log_path(task.id)
            logged = task.logged
            if logged is None or (self.store.shared and task.host not in (None, self.store.daemon_id)):
                # No worker of this daemon said (it runs, or ran elsewhere): look for the file.
                logged = os.path.exists(path)  # noqa: PTH110 - a str: no Path object per task
            if logged:
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
        self._announce(event, task.id, task.type, task.status, deliver, notify, extra)

    def _announce(
        self,
        event: str,
        task_id: int,
        task_type: str,
        status: TaskStatus,
        deliver: bool = True,
        notify: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """`_publish` of a task known by its id, type and new status."""
        if not self._listened(task_id):
            return  # nobody to tell: most changes are such
        payload = None
        if self._subscriptions or self.store.shared:
            payload = {
                "event": event,
                "task_id": format_task_id(task_id),
                "task_id_n": task_id,
                "type": task_type,
                "status": str(status),
                "time": self.clock(),
                **(extra or {}),
            }
        if deliver and (payload is not None or task_id in self._waiters):
            self.store.after_commit(lambda: self._deliver(task_id, status, payload))
        if self.store.shared and notify:  # the other daemons hear of it when it commits, as this one does
            message = {"from": self.store.daemon_id, **(payload or {})}
            if isinstance(message.get("error"), str):
                message["error"] = message["error"][:NOTIFIED_ERROR_MAX]
            self._notify(EVENTS_CHANNEL, message)
            if event in WORK_EVENTS or (status in TERMINAL and task_type in self.store.limited_types):
                self._tell_work()  # a task to start, or room under a cluster limit

    def _tell_work(self) -> None:
        """Wake the other daemons' dispatchers: once per transaction, however many tasks it changed."""
        assert self.store.shared  # see _announce
        if self.store.transaction_open():
            if self._peers.work_told == self.store.begun:
                return
            self._peers.work_told = self.store.begun
        self._notify(WORK_CHANNEL, {"from": self.store.daemon_id})

    def _deliver_later(self, task_ids: list[int], status: TaskStatus) -> None:
        """Tell the waiters of these tasks, once committed, when no subscriber needs the whole event."""

        def deliver() -> None:
            waiters = self._waiters
            for task_id in task_ids:
                for statuses, call in waiters.get(task_id, ()):
                    if status in statuses:
                        call.reached(task_id)

        self.store.after_commit(deliver)

    def _deliver(self, task_id: int, status: TaskStatus, payload: dict[str, Any] | None) -> None:
        for statuses, call in self._waiters.get(task_id, ()):
            if status in statuses:
                call.reached(task_id)
        if payload is not None:
            for sub in list(self._subscriptions):
                if sub.wants(payload):
                    sub.offer(payload)

    def _listened(self, task_id: int) -> bool:
        """Whether anyone may hear of a change to the task: a subscriber, a waiter, another daemon."""
        return bool(self._subscriptions) or task_id in self._waiters or self.store.shared

    def _anyone_listening(self) -> bool:
        """Whether anyone may hear of a change to some task: `_listened` for any task at all."""
        return bool(self._subscriptions or self._waiters) or self.store.shared

    def _notify(self, channel: str, message: dict[str, Any]) -> None:
        assert self.store.shared  # only a shared store has other daemons to tell
        try:
            self.store.notify(channel, pack(message))
        except Unavailable:
            if self.store.transaction_open():
                raise  # what it tells about is lost with it

    def _publish_status(
        self,
        event: str,
        task_ids: Iterable[int],
        each: Mapping[int, Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> None:
        """Publish a state change for tasks changed in bulk, reading them back only if anyone listens;
        `each` adds what differs from task to task (as a single change's event has it)."""
        if self._subscriptions or self.store.shared:  # as `_listened`, asked once for all of them
            ids = list(task_ids)
        elif self._waiters:
            ids = [i for i in task_ids if i in self._waiters]
        else:
            return
        with self._announcing():
            for task in self.store.get_many(ids):
                self._publish(event, task, **(each[task.id] if each else {}), **extra)

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
        uid, pid = requester()
        now = self.clock()
        self.store.add_events([(i, now, event, detail or None, uid, pid) for i in task_ids])
