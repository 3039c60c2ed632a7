"""Waiting for a task to reach a state, and subscriptions to the stream of events."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from msearchd.errors import InvalidArgument, NotFound
from msearchd.model import (
    TERMINAL,
    Task,
    TaskStatus,
    format_task_id,
    parse_task_id,
    parse_task_ids,
    validate_type,
)
from msearchd.protocol import MAX_FRAME

SUBSCRIBER_BUFFER = 10_000
# A wait on at most this many tasks reads them whole first: when all are there already, that read is
# the answer. A longer one first reads only which have ended.
READ_FIRST = 64

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases


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


class WaitCall:
    """One `wait` request: the tasks it still waits for, and a future done once none is left, or
    when its time is up.

    One future for the whole call, not one a task: a wait on thousands of tasks costs the dispatcher
    a set removal for each, not a future and a callback. The call awaits that future itself (no
    `asyncio.wait` around it): the answer goes out one turn of the loop after the last outcome.
    """

    __slots__ = ("done", "left", "timed_out")

    def __init__(self, left: set[int], done: asyncio.Future[None]) -> None:
        self.left = left
        self.done = done
        self.timed_out = False

    def reached(self, task_id: int) -> None:
        self.left.discard(task_id)
        if not self.left and not self.done.done():
            self.done.set_result(None)

    def expire(self) -> None:
        if not self.done.done():
            self.timed_out = True
            self.done.set_result(None)


class Waiting(ServiceCore):
    """The wait operations of `TaskService`."""

    if TYPE_CHECKING:

        @staticmethod
        def _statuses(status: str | list[Any] | None) -> list[str] | None: ...

    def wait(
        self, task_ids: list[Any], statuses: list[Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any] | Coroutine[Any, Any, dict[str, Any]]:
        """Block until every task is in one of `statuses` (default: finished), or the timeout passes.

        A few tasks that are all there already: the answer itself, from one read of them, given in
        the loop's turn that read the request. Otherwise an awaitable of it."""
        ids = parse_task_ids(task_ids)
        if not ids:
            raise InvalidArgument("wait needs at least one task id")
        wanted = frozenset(TaskStatus(s) for s in self._statuses(statuses) or []) or TERMINAL
        if len(ids) <= READ_FIRST:  # else (or if one does not exist) as the awaitable finds them
            tasks = self.store.get_many(ids)
            if len(tasks) == len(ids) and all(task.status in wanted for task in tasks):
                return self._wait_answer(ids, tasks, timed_out=False)
        return self._wait(ids, wanted, timeout)

    def _look(self, ids: list[int], wanted: frozenset[TaskStatus]) -> tuple[list[int], list[Task] | None]:
        """The tasks of `ids` not in `wanted` yet; NotFound if one does not exist. A few are read whole,
        and given back too: if all are there, that is the answer. Of more, only how many exist and
        which have ended are read (whole tasks are read once, at the end)."""
        if len(ids) <= READ_FIRST:
            tasks = self.store.get_many(ids)
            known = {task.id: task.status for task in tasks}
            if len(known) == len(ids):
                return [task_id for task_id in ids if known[task_id] not in wanted], tasks
        else:
            found, reached = self.store.reached(ids, wanted)
            if found == len(ids):
                there = set(reached)
                return [task_id for task_id in ids if task_id not in there] if there else ids, None
            known = self.store.statuses(ids)
        missing = next(task_id for task_id in ids if task_id not in known)
        raise NotFound(f"task {format_task_id(missing)} does not exist")

    async def _wait(
        self, ids: list[int], wanted: frozenset[TaskStatus], timeout: float | None
    ) -> dict[str, Any]:
        waiting, tasks = self._look(ids, wanted)
        if not waiting and tasks is not None:
            return self._wait_answer(ids, tasks, timed_out=False)
        loop = asyncio.get_running_loop()
        call = WaitCall(set(waiting), loop.create_future())
        entry = (wanted, call)
        waiters = self._waiters
        for task_id in waiting:
            if (entries := waiters.get(task_id)) is None:
                waiters[task_id] = [entry]
            else:
                entries.append(entry)
        early = not wanted <= TERMINAL  # it hears of starts (see `_hand_out`)
        if early:
            self._waits_before_end += 1
        timer = loop.call_later(timeout, call.expire) if waiting and timeout is not None else None
        try:
            if waiting:
                await call.done
        finally:
            if early:
                self._waits_before_end -= 1
            if timer is not None:
                timer.cancel()
            for task_id in waiting:
                entries = waiters[task_id]
                if len(entries) == 1:
                    del waiters[task_id]
                else:
                    entries.remove(entry)
        # Tasks with more data than one answer carries are not read out whole: the answer is refused.
        return self._wait_answer(ids, self.store.get_many(ids, MAX_FRAME), call.timed_out)

    def _wait_answer(self, ids: list[int], tasks: list[Task], timed_out: bool) -> dict[str, Any]:
        final = {t.id: t for t in tasks}
        return {"tasks": [self.wire(final[i]) for i in ids], "timed_out": timed_out}

    def subscribe(self, task_ids: list[Any] | None = None, types: list[Any] | None = None) -> Subscription:
        ids = {parse_task_id(t) for t in task_ids} if task_ids else None
        kinds = {validate_type(t) for t in types} if types else None
        sub = Subscription(ids, kinds)
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)
