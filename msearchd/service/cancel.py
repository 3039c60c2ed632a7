"""Cancelling: a task waiting, handed out to a worker or running, the waiting tasks a handler replaces, and
all tasks (of a type): the cancels of a selection (see `matching`)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from msearchd.errors import InvalidState, MsearchError, Unavailable
from msearchd.model import (
    CANCELLED_STATUS,
    TERMINAL,
    StopReason,
    Task,
    TaskStatus,
    format_task_id,
    parse_task_id,
    validate_type,
)
from msearchd.selection import Selection
from msearchd.service.core import CANCEL_CHANNEL, REQUESTER, requester
from msearchd.service.fanout import Fanned
from msearchd.workers import Outcome

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases

log = logging.getLogger("msearchd.service")


T = TypeVar("T")
# What a waiting task's answer says once cancelled: the names, not the enums (a StrEnum's `value` is
# a property, read at a cost each time).
_CANCELLED = str(TaskStatus.CANCELLED)
_NOT_STARTED = str(StopReason.NOT_STARTED)


def uncancellable(task: Task, running: bool = False) -> InvalidState | None:
    """Why a cancel leaves this task alone: it ended, or it runs and the cancel may not stop it
    (`running`); None when a cancel takes it."""
    ref = format_task_id(task.id)
    if task.status in TERMINAL:
        return InvalidState(
            f"{ref} is already {task.status}; only pending, blocked or running tasks can be cancelled"
        )
    if task.status is TaskStatus.RUNNING and not running:
        return InvalidState(f"{ref} is running; add running=true to stop it")
    return None


def left_the_queue(task_id: int) -> InvalidState:
    return InvalidState(
        f"{format_task_id(task_id)} left the queue before the cancel took effect (another daemon "
        "started or cancelled it): ask again"
    )


def ended_first(task_id: int, status: TaskStatus) -> InvalidState:
    return InvalidState(f"{format_task_id(task_id)} {status} before the cancel took effect")


class Cancelling(ServiceCore):
    """The cancel operations of `TaskService`."""

    if TYPE_CHECKING:

        def get(self, task_id: Any) -> dict[str, Any]: ...
        def _cascade_cancel(self, roots: Sequence[int]) -> int: ...
        def _deferring(self) -> AbstractContextManager[list[asyncio.Future[Fanned]]]: ...
        def _finish(self, task: Task, outcome: Outcome, dependents: bool = True) -> int: ...
        async def _later(self, later: list[asyncio.Future[Fanned]]) -> Fanned: ...
        def _settle(self) -> None: ...
        @contextmanager
        def _settling(self) -> Iterator[None]: ...
        async def _cancel_selection(
            self,
            selection: Selection,
            newest: int,
            running: bool,
            detail: dict[str, Any],
            outcomes: dict[int, MsearchError | None] | None = None,
        ) -> dict[str, Any]: ...

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
        with self._deferring() as later:
            cascaded = self._finish(current, outcome)
        if later:
            cascaded += len((await self._later(later)).cancelled)
        return outcome, cascaded

    async def _stop_elsewhere(self, task: Task, by: str) -> tuple[Outcome, int]:
        """Ask the daemon that runs the task to stop it, and wait for its answer: within the grace
        period and a second, or the answer says that daemon did not stop it."""
        assert self.store.shared  # the task runs on another daemon of the store
        ref = format_task_id(task.id)
        cascaded = 0
        with _answer_of(self._peers.cancel_replies, task.id) as reply:
            with self.store.transaction():
                self.store.update(task.id, cancel_requested=1)
                self._record([task.id], "cancel_requested", by=by, running=True)
                self._notify(CANCEL_CHANNEL, {"task_id": task.id, "by": by})
            self._publish("cancel_requested", task)
            with contextlib.suppress(TimeoutError):
                cascaded = await asyncio.wait_for(reply, self.settings.grace + 1.0)
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

    async def _take_back_for_another(self, task_id: int, message: dict[str, Any]) -> None:
        """Take back a task of this daemon's leases that another daemon was asked to cancel, as if it
        were pending, and answer how many dependents went with it (None: it runs, or ended)."""
        REQUESTER.set((message["uid"], message["pid"]))
        cascaded = None
        try:
            task = self.store.get(task_id)
            leased = self.pool is not None and self.pool.waits_in_lease(task_id)
            if task is not None and task.status is TaskStatus.RUNNING and leased:
                cascaded = await self._take_back(task, by=message["by"])
        finally:
            self._notify(CANCEL_CHANNEL, {"taken_back": task_id, "cancelled_dependents": cascaded})

    async def _take_back_elsewhere(self, task: Task, by: str) -> int | None:
        """Ask the daemon that runs the task to take it back if it waits its turn in a lease there
        (see `_take_back`); None if it runs there, ended, or that daemon did not answer in time."""
        uid, pid = requester()
        with _answer_of(self._peers.take_back_replies, task.id) as reply:
            self._notify(CANCEL_CHANNEL, {"take_back": task.id, "by": by, "uid": uid, "pid": pid})
            try:
                return await asyncio.wait_for(reply, self.settings.grace + 1.0)
            except TimeoutError:
                return None

    def _elsewhere(self, task: Task) -> bool:
        """Whether another daemon of a shared store runs the task."""
        return self.store.shared and task.host not in (None, self.store.daemon_id)

    def _maybe_handed_out(self, task: Task) -> bool:
        """Whether a running task may wait its turn in a worker's lease: another daemon's may."""
        return self._elsewhere(task) or (self.pool is not None and self.pool.waits_in_lease(task.id))

    async def _take_back_anywhere(self, task: Task, by: str) -> int | None:
        """`_take_back` by whichever daemon runs the task."""
        if self._elsewhere(task):
            return await self._take_back_elsewhere(task, by)
        return await self._take_back(task, by)

    def cancel(self, task_id: Any, running: bool = False) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """Cancel a task. The answer comes at once for a waiting task; for a running one, an awaitable
        that completes once nothing of the task is left. A task that waits its turn in a worker's
        lease has not started, on this daemon or another: it is cancelled like a pending one,
        `running` or not."""
        task_id = parse_task_id(task_id)
        _, answer = self._read_waiting(task_id)
        if answer is not None:
            cancelled = self._cancel_waiting(task_id, answer, by="cancel")
            if cancelled is not None:
                return cancelled
        # Running or ended (or it left the queue since it was read): see the task whole.
        return self._cancel(self._require(task_id), running, take_back=True)

    def _cancel(
        self, task: Task, running: bool, take_back: bool
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        refused = uncancellable(task, running)
        if refused is None:
            if task.status is TaskStatus.RUNNING:
                return self._cancel_running(task)
            cancelled = self._cancel_waiting(task.id, self.wire(task), by="cancel")
            if cancelled is not None:
                return cancelled
            raise left_the_queue(task.id)
        if take_back and task.status is TaskStatus.RUNNING and self._maybe_handed_out(task):
            return self._cancel_handed_out(task)
        raise refused

    def _cancel_waiting(
        self, task_id: int, answer: dict[str, Any], by: str
    ) -> dict[str, Any] | Awaitable[dict[str, Any]] | None:
        """Cancel a pending or blocked task, `answer` its `wire` as read (made what is written); an
        awaitable answer when its dependents are too many to cancel at once. None, nothing done, if
        it does not wait any more: another daemon of a shared store started it since it was read."""
        uid, pid = requester()
        with self._deferring() as later, self.store.transaction():
            requested_at = self.clock()
            now = self.clock()  # after the request's time: the history lists the request first
            if not self.store.cancel_one(task_id, requested_at, now, by, uid, pid):
                return None
            cascaded = self._cascade_cancel([task_id])
        answer["status"], answer["finished_at"] = _CANCELLED, now
        answer["stop_reason"], answer["blocked_reason"] = _NOT_STARTED, None
        self._announce(
            "cancelled", task_id, answer["type"], CANCELLED_STATUS, extra={"stop_reason": _NOT_STARTED}
        )
        cancelled = {"task": answer, "cancelled_dependents": cascaded}
        return self._count_later(cancelled, later) if later else cancelled

    def follow_up_cancel(self, parent_id: int, task_ids: list[Any]) -> list[str]:
        """Cancel those of `task_ids` that still wait, for a handler that replaces work it queued
        before (a scan that finds a file changed again); running and ended ones are left alone."""
        by = f"task {format_task_id(parent_id)}"
        cancelled = []
        for task in self.store.get_many([parse_task_id(t) for t in task_ids]):
            if task.status.waiting:
                answer = self._cancel_waiting(task.id, self.wire(task), by=by)
                if answer is None:  # another daemon started it meanwhile
                    continue
                if inspect.iscoroutine(answer):  # it would only count the dependents settled later,
                    answer.close()  # which are settled all the same
                cancelled.append(format_task_id(task.id))
        return cancelled

    async def _count_later(
        self, answer: dict[str, Any], later: list[asyncio.Future[Fanned]]
    ) -> dict[str, Any]:
        answer["cancelled_dependents"] += len((await self._later(later)).cancelled)
        return answer

    async def _take_back(self, task: Task, by: str) -> int | None:
        """Cancel a task that waits its turn in a worker's lease, as if it were pending: it never
        runs. Returns how many dependents were cancelled with it; None if the worker started it
        meanwhile."""
        assert self.pool is not None
        taken = await self.pool.take_back(task.id)
        current = self._require(task.id)
        if taken and current.status is TaskStatus.RUNNING:
            self.scheduler.finished(current.type)
            with self._deferring() as later, self.store.transaction():
                self._record([task.id], "cancel_requested", by=by, running=False)
                outcome = Outcome(TaskStatus.CANCELLED, stop_reason=StopReason.NOT_STARTED)
                cascaded = self._finish(current, outcome)
            return cascaded + len((await self._later(later)).cancelled)
        if current.status.waiting:  # its lease overran meanwhile: it is back in the queue
            answer = self._cancel_waiting(current.id, self.wire(current), by)
            if answer is None:  # and another daemon started it since
                return None
            if not isinstance(answer, dict):
                answer = await answer
            return int(answer["cancelled_dependents"])
        return None

    async def _cancel_handed_out(self, task: Task) -> dict[str, Any]:
        cascaded = await self._take_back_anywhere(task, by="cancel")
        if cascaded is None:  # it runs, or ended, now: answer for that
            with self._settling():
                self._settle()  # if it ended, its outcome may wait to be recorded
            answer = self._cancel(self._require(task.id), running=False, take_back=False)
            return answer if isinstance(answer, dict) else await answer
        return {"task": self.get(task.id), "cancelled_dependents": cascaded}

    async def _cancel_running(self, task: Task) -> dict[str, Any]:
        outcome, cascaded = await self._stop_running(task, by="cancel")
        if outcome.status is not TaskStatus.CANCELLED:
            raise ended_first(task.id, outcome.status)
        return {"task": self.get(task.id), "cancelled_dependents": cascaded}

    @contextmanager
    def _bulk(self) -> Iterator[None]:
        """Mark the current request as one going in chunks: a stop waits for it to answer."""
        task = asyncio.current_task()
        assert task is not None
        self._bulk_ops.add(task)
        try:
            yield
        finally:
            self._bulk_ops.discard(task)

    @contextmanager
    def _holding_starts(self, types: Sequence[str] | None) -> Iterator[None]:
        """Start no task of these types (exact ones or globs; of any, when None) while a bulk cancel
        works through the queue, here and, with a shared store, on every daemon: taking tasks by
        priority, they would start ones it is about to cancel. Other requests go on meanwhile."""
        if types is None:
            self._bulk_cancels += 1
        else:
            for task_type in types:
                self.scheduler.hold(task_type)
        try:
            holds = self.store.hold_starts(types) if self.store.shared else []
            try:
                yield
            finally:
                if holds:
                    self._release_starts(holds)
        finally:
            if types is None:
                self._bulk_cancels -= 1
            else:
                for task_type in types:
                    self.scheduler.release(task_type)
            self.wake()

    def _release_starts(self, holds: list[int]) -> None:
        """End holds on starts, and tell the other daemons: they may have passed over tasks for them."""
        assert self.store.shared  # the only store that holds starts
        try:
            self.store.release_starts(holds)
        except Unavailable as exc:
            log.warning("%s; the hold on starts ends with the next heartbeat", exc.message)
        self._notify(CANCEL_CHANNEL, {"released": holds})

    def _stopped_meanwhile(self, done: str) -> None:
        """Between two chunks of a bulk request: end it if the daemon is stopping, saying how far it got."""
        if self._stopping:
            raise Unavailable(f"msearchd is stopping; {done} before it stopped, the others were not")

    async def cancel_all(self, running: bool = False) -> dict[str, Any]:
        """The cancel of a selection that holds every task."""
        detail = {"by": "cancel-all", "running": running}
        return await self._cancel_selection(Selection(), self.store.max_id(), running, detail)

    async def cancel_by_type(self, task_type: str, running: bool = False) -> dict[str, Any]:
        """The cancel of a selection that holds one type."""
        validate_type(task_type)
        detail = {"by": "cancel-by-type", "running": running, "task_type": task_type}
        selection = Selection(types=(task_type,))
        answer = await self._cancel_selection(selection, self.store.max_id(), running, detail)
        return {**answer, "task_type": task_type}


@contextmanager
def _answer_of(replies: dict[int, list[asyncio.Future[T]]], task_id: int) -> Iterator[asyncio.Future[T]]:
    """A future that another daemon's answer about the task completes (see `_heard`), while inside."""
    reply: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    replies.setdefault(task_id, []).append(reply)
    try:
        yield reply
    finally:
        others = [r for r in replies.get(task_id, []) if r is not reply]
        if others:
            replies[task_id] = others
        else:
            replies.pop(task_id, None)
