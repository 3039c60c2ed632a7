"""Cancelling: a task waiting, handed out to a worker or running, all tasks (of a type) in chunks, and the
waiting tasks a handler replaces."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from msearchd.errors import InvalidState, Unavailable
from msearchd.model import (
    TERMINAL,
    StopReason,
    Task,
    TaskStatus,
    format_task_id,
    parse_task_id,
    validate_type,
)
from msearchd.service.core import CANCEL_CHANNEL, REQUESTER
from msearchd.service.fanout import Fanned
from msearchd.store import WAITING
from msearchd.workers import Outcome

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases

log = logging.getLogger("msearchd.service")


# Rows a bulk cancel changes per transaction: small enough that other requests wait tens of ms at most.
BULK_CHUNK = 1000


class Cancelling(ServiceCore):
    """The cancel operations of `TaskService`."""

    if TYPE_CHECKING:

        def get(self, task_id: Any) -> dict[str, Any]: ...
        def _cascade_cancel(self, roots: Sequence[int]) -> int: ...
        @contextmanager
        def _deferring(self) -> Iterator[list[asyncio.Future[Fanned]]]: ...
        def _finish(self, task: Task, outcome: Outcome, dependents: bool = True) -> int: ...
        async def _later(self, later: list[asyncio.Future[Fanned]]) -> Fanned: ...
        def _settle(self) -> None: ...
        @contextmanager
        def _settling(self) -> Iterator[None]: ...

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

    def _cancel_waiting(self, task: Task, by: str) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """Cancel a pending or blocked task; an awaitable answer when its dependents are too many to
        cancel at once."""
        with self._deferring() as later, self.store.transaction():
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
        answer = {"task": self.wire(task), "cancelled_dependents": cascaded}
        return self._count_later(answer, later) if later else answer

    def follow_up_cancel(self, parent_id: int, task_ids: list[Any]) -> list[str]:
        """Cancel those of `task_ids` that still wait, for a handler that replaces work it queued
        before (a scan that finds a file changed again); running and ended ones are left alone."""
        by = f"task {format_task_id(parent_id)}"
        cancelled = []
        for task in self.store.get_many([parse_task_id(t) for t in task_ids]):
            if task.status.waiting:
                answer = self._cancel_waiting(task, by=by)
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
            answer = self._cancel_waiting(current, by)
            if not isinstance(answer, dict):
                answer = await answer
            return int(answer["cancelled_dependents"])
        return None

    async def _cancel_handed_out(self, task: Task) -> dict[str, Any]:
        cascaded = await self._take_back(task, by="cancel")
        if cascaded is None:  # it runs, or ended, now: answer for that
            with self._settling():
                self._settle()  # if it ended, its outcome may wait to be recorded
            answer = self._cancel(self._require(task.id), running=False, take_back=False)
            return answer if isinstance(answer, dict) else await answer
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

    def _stopped_meanwhile(self, done: str) -> None:
        """Between two chunks of a bulk request: end it if the daemon is stopping, saying how far it got."""
        if self._stopping:
            raise Unavailable(f"msearchd is stopping; {done} before it stopped, the others were not")

    async def _cancel_many(self, task_type: str | None, running: bool) -> dict[str, Any]:
        """Cancel waiting tasks in bounded chunks, letting other requests through between them."""
        self.store.pause_checkpoints()
        try:
            with self._bulk():
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
        later: list[asyncio.Future[Fanned]] = []
        # Requests go on between chunks; starting tasks does not: the dispatcher, taking tasks by
        # priority, would start ones this request is about to cancel.
        self._bulk_cancels += 1
        try:
            while True:
                self._stopped_meanwhile(f"{cancelled} tasks were cancelled")
                with self._deferring() as more, self.store.transaction():
                    ids = self.store.cancel_waiting_batch(
                        task_type, max_id, self.clock(), BULK_CHUNK, request
                    )
                    if task_type is not None:
                        cascaded += self._cascade_cancel(ids)
                later += more
                if not ids:
                    break
                cancelled += len(ids)
                self._publish_status("cancelled", ids, stop_reason=StopReason.NOT_STARTED.value)
                await asyncio.sleep(0)
            if task_type is None:  # tasks submitted meanwhile may depend on ones it cancelled
                with self._deferring() as more, self.store.transaction():
                    cascaded += self._cascade_cancel(
                        self.store.bulk_cancelled_with_newer_dependents(request, max_id)
                    )
                later += more
        finally:
            self._bulk_cancels -= 1
            self.wake()
        if later:
            cascaded += len((await self._later(later)).cancelled)
        self._stopped_meanwhile(f"{cancelled} tasks were cancelled")
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
