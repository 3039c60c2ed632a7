"""Waiting for a task to reach a state, and subscriptions to the stream of events."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from msearchd.errors import InvalidArgument, NotFound
from msearchd.model import (
    TERMINAL,
    TaskStatus,
    format_task_id,
    parse_task_id,
    parse_task_ids,
    validate_type,
)

SUBSCRIBER_BUFFER = 10_000

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

    async def wait(
        self, task_ids: list[Any], statuses: list[Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Block until every task is in one of `statuses` (default: finished), or the timeout passes."""
        ids = parse_task_ids(task_ids)
        if not ids:
            raise InvalidArgument("wait needs at least one task id")
        wanted = frozenset(TaskStatus(s) for s in self._statuses(statuses) or []) or TERMINAL
        # Whole tasks are read once, at the end; first only how many exist, and which are there already.
        found, reached = self.store.reached(ids, wanted)
        if found < len(ids):
            states = self.store.statuses(ids)
            missing = next(task_id for task_id in ids if task_id not in states)
            raise NotFound(f"task {format_task_id(missing)} does not exist")
        if reached:
            there = set(reached)
            waiting = [task_id for task_id in ids if task_id not in there]
        else:
            waiting = ids
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
        final = {t.id: t for t in self.store.get_many(ids)}
        return {"tasks": [self.wire(final[i]) for i in ids], "timed_out": call.timed_out}

    def subscribe(self, task_ids: list[Any] | None = None, types: list[Any] | None = None) -> Subscription:
        ids = {parse_task_id(t) for t in task_ids} if task_ids else None
        kinds = {validate_type(t) for t in types} if types else None
        sub = Subscription(ids, kinds)
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)
