"""Start-up and shutdown: tasks a previous daemon left behind are settled, running ones stopped at the end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from msearchd.model import (
    StopReason,
    Task,
    TaskStatus,
    format_task_id,
)
from msearchd.service.fanout import FANOUT_EVENT, Fanned
from msearchd.workers import Outcome

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases

log = logging.getLogger("msearchd.service")


class Recovering(ServiceCore):
    """The recovery operations of `TaskService`."""

    if TYPE_CHECKING:

        def _finish(self, task: Task, outcome: Outcome, dependents: bool = True) -> int: ...
        def _settle(self) -> None: ...
        @contextmanager
        def _settling(self) -> Iterator[None]: ...
        def _start_fanout(
            self, work: list[tuple[int, int]], markers: dict[int, list[int]], future: asyncio.Future[Fanned]
        ) -> None: ...
        def flush_progress(self) -> None: ...
        def _share_limits(self) -> None: ...

    def recover(self) -> None:
        """Settle the tasks a previous daemon left running: it stopped without finishing them. With
        a shared store, those of this daemon's predecessor on this machine (and state folder), and
        of any daemon gone without a trace; the others' tasks run on."""
        if not self.store.shared:
            self._settle_left(self.store.running(), "the daemon stopped")
        else:
            gone = self.store.register(self.settings.workers)
            self._share_limits()
            self._take_over([*gone, *self.store.orphans()], "the daemon stopped")
        self._resume_fanouts()
        self.wake()

    def _take_over(self, daemons: Iterable[str], why: str) -> None:
        assert self.store.shared  # only daemons sharing a store take over from each other
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
                stop_reason = StopReason.KILLED if started else StopReason.NOT_STARTED
                self._finish(task, Outcome(TaskStatus.CANCELLED, stop_reason=stop_reason))
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

    def _resume_fanouts(self) -> None:
        """Go on settling the dependents the previous daemon left unsettled when it stopped."""
        markers: dict[int, list[int]] = {}
        for row, detail in self.store.bulk_requests(FANOUT_EVENT):
            markers.setdefault(int(detail["task"]), []).append(row)
        if markers:
            log.warning("settling the dependents of %d task(s), left unsettled by a stop", len(markers))
            future = asyncio.get_running_loop().create_future()
            self._start_fanout([(root, 0) for root in markers], markers, future)

    async def stop(self) -> None:
        """Stop dispatching and stop running tasks; they go back to pending, not lost."""
        self._stopping = True
        self.wake()
        for job in self._fanouts:  # each between two chunks: the next start goes on with it
            job.cancel()
        if self._fanouts:
            await asyncio.wait(self._fanouts)
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
        if self._bulk_ops:  # each ends at its next chunk, and answers
            await asyncio.wait(self._bulk_ops)
        if self._checkpoints:
            await asyncio.wait(self._checkpoints)
        for sub in list(self._subscriptions):
            sub.offer({"event": "shutdown", "task_id_n": 0, "type": "", "message": "daemon stopping"})
