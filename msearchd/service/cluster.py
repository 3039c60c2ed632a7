"""Several daemons, one store: heartbeats, the takeover of dead daemons' tasks, the fence of a daemon
that lost the store, and what the other daemons notify (events, cancels). A store of its own (SQLite)
needs none of it: `run_cluster` returns at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import msgpack

from msearchd.errors import Unavailable
from msearchd.model import Task, TaskStatus
from msearchd.service.core import CANCEL_CHANNEL, EVENTS_CHANNEL, QUEUE_CHANNEL, WORK_CHANNEL

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases

log = logging.getLogger("msearchd.service")

# Each daemon writes its heartbeat this often; one whose heartbeat is DAEMON_EXPIRY seconds old is
# taken for dead, and its running tasks go back to the queue. A daemon that could not write its
# heartbeat for FENCE_AFTER seconds stops its running tasks first, so that a task never runs on two
# daemons at once.
HEARTBEAT_INTERVAL = 2.0
DAEMON_EXPIRY = 10.0
FENCE_AFTER = 5.0
# The grace period of the tasks stopped then: short enough that they are gone before the others
# take this daemon for dead, though the fence may start a heartbeat interval late.
FENCE_GRACE = DAEMON_EXPIRY - FENCE_AFTER - HEARTBEAT_INTERVAL - 1.0
# A claim that passed over a cluster limit while another daemon held it tries again this much later:
# that daemon's claim is over by then.
LIMIT_RETRY = 0.02


class Clustering(ServiceCore):
    """The operations of `TaskService` that only a store shared by several daemons needs."""

    if TYPE_CHECKING:

        def _take_over(self, daemons: Iterable[str], why: str) -> None: ...
        def _settle_left(self, tasks: Iterable[Task], why: str) -> None: ...
        async def _stop_for_another(self, task_id: int, by: str) -> None: ...
        async def _take_back_for_another(self, task_id: int, message: dict[str, Any]) -> None: ...
        def _apply_pauses(self) -> set[str]: ...
        def _heard_of_pauses(self, message: dict[str, Any]) -> None: ...

    async def run_cluster(self) -> None:
        """With a shared store: the heartbeat, the takeover of dead daemons' tasks, and what the
        other daemons notify (events, cancels). A store of its own needs none of it."""
        if self.store.shared:
            await asyncio.gather(self._heartbeats(), self._listen())

    def _share_limits(self) -> None:
        """Make this daemon's `cluster_type_limits`, if its settings have some, those of every daemon:
        the store holds them, so that all count against the same number."""
        assert self.store.shared  # see recover
        limits = self.settings.cluster_type_limits
        if limits is None:
            return
        before = self.store.set_cluster_limits(limits)
        if before != limits:
            log.info(
                "limits of running tasks for the whole cluster are now %s (were %s)",
                _limits_text(limits),
                _limits_text(before),
            )

    def _retry_busy_limits(self) -> None:
        """After a claim that passed over a cluster limit another daemon held: claim again soon."""
        if self.store.shared and self.store.limits_busy:
            self.store.limits_busy = False
            asyncio.get_running_loop().call_later(LIMIT_RETRY, self.wake)

    def _late(self) -> bool:
        """With a shared store: the heartbeat is so old that the others may soon take this daemon
        for dead (its loop stalled): it starts nothing until the next one."""
        return self.store.shared and time.monotonic() - self._peers.last_beat > FENCE_AFTER

    async def _heartbeats(self) -> None:
        self._peers.last_beat = time.monotonic()
        while not self._stopping:
            try:
                await self._beat()
            except Unavailable as exc:
                if time.monotonic() - self._peers.last_beat > FENCE_AFTER:
                    await self._fence(exc.message)
            except Exception:  # a bug here must not stop the heartbeat; it is logged, and retried
                log.exception("heartbeat failed")
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def _beat(self) -> None:
        assert self.store.shared  # see run_cluster
        pool = self.pool
        late = time.monotonic() - self._peers.last_beat
        if late > FENCE_AFTER:  # the loop stalled: the others may be about to take this daemon for dead
            await self._fence(f"the last heartbeat is {late:.0f} s old")
        if not self.store.heartbeat(pool.busy_count if pool else 0):
            await self._fence("the other daemons took this one for dead")
            self.store.register(self.settings.workers)
        self._peers.last_beat = time.monotonic()
        if self._peers.fenced:
            abandoned = [t for t in self.store.running_here() if t.id in self._peers.abandoned]
            self._settle_left(abandoned, "this daemon lost its store")
            self._peers.abandoned.clear()
            self._peers.fenced = False
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
        if not self._peers.fenced:
            log.warning("%s: stopping the running tasks and starting none until the store answers", why)
        self._peers.fenced = True
        if self.pool is None:
            return
        ids = [i for i in self.pool.task_ids() if i not in self._peers.abandoned]
        self._peers.abandoned.update(ids)
        await asyncio.gather(*(self.pool.terminate(i, min(self.settings.grace, FENCE_GRACE)) for i in ids))

    async def _listen(self) -> None:
        """What the other daemons notify, on a connection of its own that comes back when lost."""
        assert self.store.shared  # see run_cluster
        while not self._stopping:
            try:
                channels = [EVENTS_CHANNEL, CANCEL_CHANNEL, WORK_CHANNEL, QUEUE_CHANNEL]
                async for channel, raw in self.store.listen(channels, self._listening, self._wants):
                    self._heard(channel, msgpack.unpackb(raw))
            except Exception as exc:
                log.warning("lost the notifications of the other daemons (%s); listening again", exc)
                await asyncio.sleep(HEARTBEAT_INTERVAL)

    def _wants(self, channel: str) -> bool:
        """Whether to read what comes on a channel now: the other daemons' events only while this one
        has someone to tell of them (a waiter, a subscriber). Each daemon decoding every event of
        every other costs each of them CPU for every task of the cluster."""
        return channel != EVENTS_CHANNEL or bool(self._subscriptions or self._waiters)

    def _listening(self) -> None:
        """Listening (again): what was notified before is missed, so waits, pauses and the queue are
        looked at afresh."""
        for task_id, status in self.store.statuses(list(self._waiters)).items():
            self._deliver(task_id, status, None)
        self._apply_pauses()
        self.wake()

    def _heard(self, channel: str, message: dict[str, Any]) -> None:
        assert self.store.shared  # see _listen
        if channel == CANCEL_CHANNEL:
            if "released" in message:  # a bulk cancel is over: tasks it held back may start
                self.wake()
                return
            if "reply" in message:
                for reply in self._peers.cancel_replies.get(message["reply"], ()):
                    if not reply.done():
                        reply.set_result(message["cancelled_dependents"])
                return
            if "taken_back" in message:
                for answer in self._peers.take_back_replies.get(message["taken_back"], ()):
                    if not answer.done():
                        answer.set_result(message["cancelled_dependents"])
                return
            task_id = cast(int, message.get("task_id", message.get("take_back")))  # a cancel names its task
            if self.store.host_of(task_id) != self.store.daemon_id:
                return  # another daemon's task, or one that is no daemon's any more
            if "take_back" in message:
                job = self._take_back_for_another(task_id, message)
            else:
                job = self._stop_for_another(task_id, message["by"])
            stop = asyncio.ensure_future(job)
            self._background.add(stop)
            stop.add_done_callback(self._background.discard)
            return
        if message.pop("from") == self.store.daemon_id:
            return
        if channel == WORK_CHANNEL:
            self.wake()
            return
        if channel == QUEUE_CHANNEL:
            self._heard_of_pauses(message)
            return
        self._deliver(message["task_id_n"], TaskStatus(message["status"]), message)


def _limits_text(limits: dict[str, int]) -> str:
    return ", ".join(f"{t} = {n}" for t, n in sorted(limits.items())) or "none"
