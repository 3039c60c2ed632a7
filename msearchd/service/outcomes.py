"""What the workers report: starts, progress, outcomes; the outcomes of a lease share a commit.

The pool calls back here (`task_started`, `task_progress`, `task_finished`, `tasks_returned`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from msearchd.errors import Unavailable
from msearchd.model import StopReason, Task, TaskStatus, format_task_id
from msearchd.store.rows import CompletedRow
from msearchd.workers import Outcome

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases

log = logging.getLogger("msearchd.service")


PROGRESS_FLUSH_INTERVAL = 1.0
# How long the outcome of a task in the middle of a lease may wait to be recorded, so that the
# outcomes of a lease share a commit.
SETTLE_DELAY = 0.01
# The progress of a task reaches the other daemons of a shared store at most this often (its latest value).
PROGRESS_NOTIFY_INTERVAL = 0.2


class Reporting(ServiceCore):
    """What `TaskService` does with the reports of the workers."""

    if TYPE_CHECKING:

        def _cascade_cancel(self, roots: Sequence[int]) -> int: ...
        def _refresh_dependents(self, task_id: int) -> None: ...
        def _dispatch_now(self) -> bool: ...

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
        if outcome.result is not None:
            fields["result"] = outcome.result
        if outcome.logged is not None:
            fields["logged"] = outcome.logged
        cascaded = 0
        with self.store.transaction():
            if not self.store.update(task.id, expect=(TaskStatus.RUNNING.value,), **fields):
                log.warning(
                    "%s ended (%s) but was no longer running", format_task_id(task.id), outcome.status
                )
                return 0
            if outcome.status is TaskStatus.CANCELLED:
                cascaded = self._cascade_cancel([task.id])
            elif dependents:
                self._refresh_dependents(task.id)
        if self._listened(task.id):
            extra: dict[str, Any] = {"stop_reason": outcome.stop_reason.value} if outcome.stop_reason else {}
            if outcome.error:
                extra["error"] = outcome.error
            if outcome.result is not None:
                extra["result"] = outcome.result
            self._publish(outcome.status.value, dataclasses.replace(task, **fields), **extra)
        return cascaded

    def worker_idle(self) -> None:
        if not (self._finished and self._dispatch_now()):
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
            held = self._peers.progress_held
            self._publish("progress", task, notify=not held, progress=new[0], current_operation=new[1])
            if held:
                self._peers.progress_out[task_id] = task
            elif self.store.shared:
                self._peers.progress_held = True
                asyncio.get_running_loop().call_later(PROGRESS_NOTIFY_INTERVAL, self._notify_progress)

    def _notify_progress(self) -> None:
        """Tell the other daemons the latest progress of the tasks that reported some since the last
        time, all in one round trip: tasks that report a thousand times a second cost five."""
        out, self._peers.progress_out = self._peers.progress_out, {}
        if not out:
            self._peers.progress_held = False
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
        """Queue the outcome: those that arrived together are recorded in one transaction when the
        worker asks for more work (its lease is done: at once, see `worker_idle`), or by the
        dispatcher SETTLE_DELAY later at most."""
        self._finished.append((task, outcome))
        if self._settle_timer is None:
            self._settle_timer = asyncio.get_running_loop().call_later(SETTLE_DELAY, self._settle_due)

    def _settle_due(self) -> None:
        """SETTLE_DELAY has passed since an outcome came: record it, unless that is done already (a
        dispatcher turn for nothing would cost an idle pool a transaction)."""
        self._settle_timer = None
        if self._finished:
            self.wake()

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
        tasks by type are as they were, and so is the last progress of theirs (written with them)."""
        finished, running = list(self._finished), self.scheduler.snapshot()
        live = {t.id: self._progress[t.id] for t, _ in finished if t.id in self._progress}
        try:
            with self.store.transaction():
                yield
        except BaseException:
            self._finished = finished  # nothing else ran meanwhile: the transaction does not wait
            self._progress.update(live)
            self.scheduler.restore(running)
            raise
        if not self._finished and self._settle_timer is not None:
            # Recorded: the turn it would give the dispatcher is for nothing. Cancelled, it does not
            # wake the daemon at all: a task that ran alone in its lease costs one wake-up, not two.
            self._settle_timer.cancel()
            self._settle_timer = None

    def _settle(self) -> None:
        """Record the outcomes the workers reported since the last time."""
        batch, self._finished = self._finished, []
        if self._peers.abandoned:
            batch = [(t, o) for t, o in batch if t.id not in self._peers.abandoned]
        if not batch:
            return
        with_dependents = set(self.store.with_dependents([task.id for task, _ in batch]))
        # Completed, and nothing else to do: written together, with the last operation they reported.
        plain: list[tuple[Task, Outcome, str | None]] = []
        rows: list[CompletedRow] = []  # theirs, as the store writes them
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
            ):
                live = self._progress.pop(task.id, None)
                if live is not None:
                    self._dirty.discard(task.id)
                operation = live and live[1]
                plain.append((task, outcome, operation))
                started, finished = outcome.started_at, outcome.finished_at
                rows.append((started, finished, outcome.result, outcome.logged, operation, task.id))
            else:
                self._finish(task, outcome, dependents=task.id in with_dependents)
        if plain:
            self.store.complete_many(rows)
            if not self._subscriptions and not self.store.shared:
                # Waiters need the status alone: no copy of each task, one delivery for them all.
                waited = [task.id for task, _, _ in plain if task.id in self._waiters]
                if waited:
                    self._deliver_later(waited, TaskStatus.COMPLETED)
                return
            for task, outcome, operation in plain:
                if self._listened(task.id):
                    done = dataclasses.replace(
                        task,
                        status=TaskStatus.COMPLETED,
                        progress=1.0,
                        current_operation=operation or task.current_operation,
                        started_at=outcome.started_at or task.started_at,
                        finished_at=outcome.finished_at,
                        result=outcome.result,
                        logged=outcome.logged,
                    )
                    extra = {"result": outcome.result} if outcome.result is not None else {}
                    self._publish(TaskStatus.COMPLETED.value, done, **extra)

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
