"""Pausing the queue (all of it or some types), resuming it, and draining it; the pauses are stored."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from msearchd.config import Settings
from msearchd.errors import InvalidArgument
from msearchd.model import TERMINAL, TaskStatus, format_task_id, validate_timeout
from msearchd.selection import type_matches, validate_type_pattern
from msearchd.service.core import QUEUE_CHANNEL, requester
from msearchd.store import ServiceStore

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases

log = logging.getLogger("msearchd.service")

ALL_TYPES = "*"  # the pause of the whole queue
QUEUE_EVENTS = ("queue_paused", "queue_resumed")
QUEUE_HISTORY = 50  # requests about the queue that its state shows
# A task that a drain waits for is done with once it ends or goes back to the queue.
_SETTLED = [*(s.value for s in TERMINAL), TaskStatus.PENDING.value]


class Pausing(ServiceCore):
    """The queue operations of `TaskService`."""

    if TYPE_CHECKING:

        def wait(
            self, task_ids: list[Any], statuses: list[Any] | None = None, timeout: float | None = None
        ) -> dict[str, Any] | Coroutine[Any, Any, dict[str, Any]]: ...

    def __init__(
        self, store: ServiceStore, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(store, settings, clock)
        self._apply_pauses()  # as the last daemon left them

    def _apply_pauses(self) -> set[str]:
        """Make the scheduler hold back what the store says is paused (at start, at each change, and
        when another daemon sharing the store says it changed it); returns the paused types."""
        types = {row[0] for row in self.store.pauses()}
        self.scheduler.pause(types - {ALL_TYPES}, ALL_TYPES in types)
        return types

    def _paused_now(self) -> set[str]:
        """The types this daemon holds back as paused ('*': all)."""
        return set(self.scheduler.paused) | ({ALL_TYPES} if self.scheduler.all_paused else set())

    def _heard_of_pauses(self, message: dict[str, Any]) -> None:
        """Another daemon sharing the store paused or resumed: hold back (or start) what the store says
        now, and tell this daemon's subscribers what changed here. The types are read from the store,
        not carried: a note may come late, or after another change, and a resume of everything names
        any number of them."""
        before = self._paused_now()
        after = self._apply_pauses()
        paused = message["event"] == "queue_paused"
        changed = after - before if paused else before - after
        if changed:
            self._tell_subscribers({**message, "types": sorted(changed)})
        if paused and changed and self.pool is not None and self.pool.busy_count:
            job = asyncio.ensure_future(self._hand_back_paused(sorted(changed)))
            self._background.add(job)
            job.add_done_callback(self._background.discard)
        self.wake()

    async def _hand_back_paused(self, types: list[str]) -> None:
        """What this daemon's workers hold of types another daemon paused, and have not started, does
        not start either: back to the queue, just after the pause answered there."""
        if self.pool is None:
            return
        returned = await self.pool.hand_back(lambda task: type_matches(task.type, types))
        log.info(
            "another daemon paused %s: %d task(s) this daemon's workers held and had not started are "
            "back in the queue",
            ", ".join(types),
            returned,
        )

    def _pause_types(self, types: object) -> list[str]:
        """Types or globs of types (`file_embed_*`), stored as given: a resume names what a pause named."""
        if types is None or types == []:
            return [ALL_TYPES]
        if not isinstance(types, list):
            raise InvalidArgument("types must be a list of task types or patterns")
        return sorted({validate_type_pattern(t) for t in types})

    def _queue_changed(self, event: str, types: list[str]) -> dict[str, Any]:
        uid, pid = requester()
        now = self.clock()
        self.store.add_bulk_request(now, event, {"types": types}, uid, pid)
        payload = {
            "event": event,
            "task_id_n": 0,  # about no task: only a subscriber to every task hears of it
            "type": "",
            "time": now,
            "types": types,
            "uid": uid,
            "pid": pid,
        }
        self.store.after_commit(lambda: self._tell_subscribers(payload))
        if self.store.shared:  # the other daemons' starts, subscribers and dispatchers
            note = {k: v for k, v in payload.items() if k != "types"}
            self._notify(QUEUE_CHANNEL, {"from": self.store.daemon_id, **note})
        return payload

    def _tell_subscribers(self, payload: dict[str, Any]) -> None:
        for sub in list(self._subscriptions):
            if sub.wants(payload):
                sub.offer(payload)

    def pause(self, types: list[Any] | None = None) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """No new task of these types (of any, when none are named) starts; running ones go on.
        Those a worker holds in its lease and has not started go back to the queue before the
        answer: they have not started, so they do not. (Those of the other daemons of a shared
        store, as each hears of the pause.)"""
        names = self._pause_types(types)
        uid, pid = requester()
        with self.store.transaction():
            added = self.store.add_pauses(names, self.clock(), uid, pid)
            if added:  # pausing what is paused already changes nothing: no history entry
                self._queue_changed("queue_paused", added)
        self._apply_pauses()
        if self.pool is None or not self.pool.busy_count:  # no lease out: nothing to put back
            return self.queue_state()
        return self._paused(names)

    async def _paused(self, names: list[str]) -> dict[str, Any]:
        """The answer to a pause, once what the workers hold of the paused types and have not
        started is back in the queue."""
        if self.pool is not None:
            await self.pool.hand_back(lambda task: type_matches(task.type, names))
        return self.queue_state()

    def resume(self, types: list[Any] | None = None) -> dict[str, Any]:
        """Let the named types (every paused one, when none are named) start again."""
        names = None if not types else self._pause_types(types)
        with self.store.transaction():
            resumed = self.store.remove_pauses(names)
            if resumed:
                self._queue_changed("queue_resumed", resumed)
        self._apply_pauses()
        self.wake()
        return self.queue_state()

    def drain(
        self, types: list[Any] | None = None, timeout: float | None = None
    ) -> Awaitable[dict[str, Any]]:
        """Pause at once, then wait until none of the paused types runs (for a backup, a reboot, an
        upgrade); the requests after it see the pause."""
        validate_timeout(timeout)
        paused = self.pause(types)
        names = set(self._pause_types(types))
        return self._drained(paused, names, None if timeout is None else time.monotonic() + timeout)

    async def _drained(
        self, paused: dict[str, Any] | Awaitable[dict[str, Any]], names: set[str], deadline: float | None
    ) -> dict[str, Any]:
        if not isinstance(paused, dict):
            await paused  # what had not started went back to the queue
        while True:
            busy = [t.id for t in self.store.running() if type_matches(t.type, names)]
            left = None if deadline is None else deadline - time.monotonic()
            if not busy or (left is not None and left <= 0):
                running = [format_task_id(i) for i in busy]
                return {**self.queue_state(), "drained": not busy, "running": running}
            waited = self.wait(busy, statuses=_SETTLED, timeout=left)
            if not isinstance(waited, dict):  # else they settled as it looked
                await waited

    def queue_state(self) -> dict[str, Any]:
        pauses = self.store.pauses()
        return {
            "paused": [{"type": t, "since": since, "uid": uid, "pid": pid} for t, since, uid, pid in pauses],
            "all_paused": any(t == ALL_TYPES for t, *_ in pauses),
            "history": self.store.queue_requests(QUEUE_EVENTS, QUEUE_HISTORY),
        }
