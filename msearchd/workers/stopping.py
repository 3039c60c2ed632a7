"""Stopping tasks of a lease: taken back before they start, or the worker stopped in stages
(SIGTERM to its group, then SIGKILL to all it started); a lease that overran handed back."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from msearchd.lease import Phase
from msearchd.model import StopReason, Task, TaskStatus, format_task_id
from msearchd.workers.channel import send_order
from msearchd.workers.core import PoolCore, WorkerProcess
from msearchd.workers.outcome import NOT_STARTED, Outcome
from msearchd.workers.processes import KILL_TIMEOUT, signal_group

log = logging.getLogger("msearchd.workers")


class Stopping(PoolCore):
    """The stops of `WorkerPool`."""

    def _overrun(self, worker: WorkerProcess, last: int) -> None:
        """The lease ending with entry `last` is due: take back what has not started, if anything."""
        worker.overrun_checks.pop(last, None)
        if self._closing or worker.stopping or worker not in self._workers:
            return
        at, phase = worker.word.read()
        if phase is Phase.RUNNING:
            self._note_start(worker, at)
        if any(at < seq <= last for seq, _ in worker.lease.values()):
            self._background(self._reclaim(worker, at, last))

    async def hand_back(self, wanted: Callable[[Task], bool]) -> int:
        """Put the tasks `wanted` picks that wait their turn in a lease back in the queue: a pause
        holds them back too. Those a worker has reached run on. Returns how many went back."""
        returned = await asyncio.gather(
            *(
                self._return_entries(worker, [seq for seq, task in worker.lease.values() if wanted(task)])
                for worker in list(self._workers)
                if worker.lease and not worker.stopping
            )
        )
        return sum(map(len, returned))

    def _note_start(self, worker: WorkerProcess, seq: int) -> None:
        """Entry `seq` runs: make sure its start is on record. Those after the first of a lease were
        claimed without one, and report it with their end: only one that runs long gets here."""
        task = next((task for at, task in worker.lease.values() if at == seq), None)
        if task is not None and task.started_at is None:
            self._listener.task_started(task)

    async def _reclaim(self, worker: WorkerProcess, at: int, last: int) -> None:
        """Put the entries after `at`, up to `last`, back in the queue, where a free worker takes them
        instead of waiting behind the task that overran."""
        tail = [seq for seq, _ in worker.lease.values() if at < seq <= last]
        returned = await self._return_entries(worker, tail)
        if returned:
            running = worker.current()
            log.info(
                "worker %d: %s overran its lease; %d task(s) after it go back to the queue",
                worker.pid,
                format_task_id(running.id) if running is not None else "a task",
                len(returned),
            )

    async def _return_entries(self, worker: WorkerProcess, seqs: list[int]) -> list[Task]:
        """Put the entries `seqs` of the worker's lease back in the queue, those it has not reached
        (nor a stop or a take-back is about); returns their tasks."""
        at, _ = worker.word.read()
        stopping = self._terminating.keys() | self._taken_back
        wanted = set(seqs)
        mine = {
            seq
            for seq, task in worker.lease.values()
            if seq in wanted and seq > at and task.id not in stopping
        }
        if not mine:
            self._make_idle(worker)
            return []
        where = await self._skip(worker, sorted(mine))
        if where is None:
            return []  # it died meanwhile: _on_exit has dealt with its lease
        now_at, phase = where
        if phase is Phase.RUNNING:
            self._note_start(worker, now_at)
        returned: list[Task] = []
        for task_id, (seq, task) in list(worker.lease.items()):
            skipped = seq > now_at or (seq == now_at and phase is Phase.SKIPPED)
            still_mine = task_id not in self._terminating and task_id not in self._taken_back
            if seq in mine and skipped and still_mine:
                del worker.lease[task_id]
                returned.append(task)
        if returned:
            self._listener.tasks_returned(returned)
        self._make_idle(worker)  # what it ran meanwhile may have been the rest of its lease
        return returned

    def waits_in_lease(self, task_id: int) -> bool:
        """Whether a worker holds this task in its lease and has not reached it yet."""
        worker = self._worker_for(task_id)
        if worker is None or task_id in self._terminating or task_id in self._taken_back:
            return False
        at, _ = worker.word.read()
        return at < worker.lease[task_id][0]

    async def take_back(self, task_id: int) -> bool:
        """Take back a task that waits its turn in a worker's lease: it will not run, and the rest
        of the lease runs on. False if the worker has reached it (it runs: only `terminate` stops
        it), if it went back to the queue meanwhile, or if another stop of it is under way."""
        worker = self._worker_for(task_id)
        if worker is None or not self.waits_in_lease(task_id):
            return False
        seq, task = worker.lease[task_id]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome | None] = loop.create_future()
        self._terminating[task_id] = future
        report: asyncio.Future[Outcome] = loop.create_future()
        self._reports[task_id] = report
        taken = False
        try:
            where = await self._skip(worker, [seq])
            if where is None:  # it died: what it did with the task is in the report
                taken = report.done() and report.result() is NOT_STARTED
            else:
                at, phase = where
                if at > seq and task_id not in self._passed:
                    await asyncio.shield(report)  # it passed the entry: its message says how
                taken = self._not_started(worker, task_id, seq, at, phase)
        finally:
            del self._terminating[task_id]
            self._reports.pop(task_id, None)
            self._passed.discard(task_id)
            if not taken and report.done() and report.result() is not NOT_STARTED:
                self._listener.task_finished(task, report.result())  # it ran: its outcome came here
            future.set_result(NOT_STARTED if taken else None)
        return taken

    def _not_started(
        self, worker: WorkerProcess, task_id: int, seq: int, at: int, phase: Phase | None
    ) -> bool:
        """After a skip of entry `seq`, with the word read at (at, phase): whether the worker passed
        the entry without starting it. If it did and has yet to say so, its `skipped` will find the
        task taken back."""
        passed = task_id in self._passed or at < seq or (at == seq and phase is Phase.SKIPPED)
        if passed and task_id in worker.lease:
            self._taken_back.add(task_id)
        return passed

    async def terminate(self, task_id: int, grace: float) -> Outcome | None:
        """Stop a task of a lease and everything it started; None if no worker has it.

        One that has not started is taken back: it will not run. One that runs gets SIGTERM to the
        worker's process group; after `grace` seconds SIGKILL to the group and to every descendant
        found, wherever it moved. Returns how the task ended: it may have finished on its own first.
        """
        while task_id in self._terminating:  # another stop, or a take-back, is under way
            outcome = await asyncio.shield(self._terminating[task_id])
            if outcome is not None:
                return outcome
        worker = self._worker_for(task_id)
        if worker is None:
            return None
        future: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        self._terminating[task_id] = future
        report = asyncio.get_running_loop().create_future()
        self._reports[task_id] = report
        try:
            outcome = await self._end_entry(worker, task_id, report, grace)
        finally:
            del self._terminating[task_id]
            self._reports.pop(task_id, None)
            self._passed.discard(task_id)
        future.set_result(outcome)
        return outcome

    async def _end_entry(
        self, worker: WorkerProcess, task_id: int, report: asyncio.Future[Outcome], grace: float
    ) -> Outcome:
        seq = worker.lease[task_id][0]
        # Take back this entry and those after it (which go back to the queue when it exits).
        where = await self._skip(worker, [later for later, _ in worker.lease.values() if later >= seq])
        if where is None:  # it died meanwhile, and this task with it unless it had reported
            return (
                report.result()
                if report.done()
                else Outcome(TaskStatus.CANCELLED, stop_reason=StopReason.KILLED)
            )
        at, phase = where
        if self._not_started(worker, task_id, seq, at, phase):
            return NOT_STARTED
        if at == seq and phase is not Phase.DONE and not report.done():
            self._note_start(worker, seq)  # it runs: a crash of the daemon meanwhile interrupted it
            return await self._stop_worker(worker, task_id, grace, report)
        # It ended, or the worker passed it: its outcome, its `skipped` or the worker's exit says how.
        return await asyncio.shield(report)

    async def _skip(self, worker: WorkerProcess, seqs: list[int]) -> tuple[int, Phase | None] | None:
        """Tell the worker to skip the entries `seqs`, then read where it is (None if it died): those
        it had not reached will not run. The order matters, see msearchd.lease."""
        assert worker.writer is not None
        for seq in seqs:
            send_order(worker, {"op": "skip", "seq": seq})
        while worker.writer.get_write_buffer_size() and worker in self._workers:
            await asyncio.sleep(0.001)  # the skips must be in the socket before the word is read
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while worker in self._workers:
            at, phase = worker.word.read()
            if at in seqs and phase is Phase.REACHED and loop.time() < deadline:
                await asyncio.sleep(0.0002)  # deciding between our skip and starting it: microseconds
                continue
            return at, phase
        return None

    async def _stop_worker(
        self, worker: WorkerProcess, task_id: int, grace: float, report: asyncio.Future[Outcome]
    ) -> Outcome:
        assert self._containment is not None
        worker.stopping = True
        log.debug("stopping worker %d running %s", worker.pid, format_task_id(task_id))
        signal_group(worker.pid, signal.SIGTERM)
        killed = False
        try:
            await asyncio.wait_for(asyncio.shield(worker.exited), grace)
        except TimeoutError:
            killed = True
            self._containment.kill(worker.pid)
            try:
                await asyncio.wait_for(asyncio.shield(worker.exited), KILL_TIMEOUT)
            except TimeoutError:
                log.error("worker %d survived SIGKILL for %.0f s", worker.pid, KILL_TIMEOUT)
        # Everything it started goes with it: what left its group, its session or its tree too (the
        # worker's exit logs what outlives this).
        await self._containment.end_worker(worker.pid, KILL_TIMEOUT)
        if report.done():
            return report.result()
        return Outcome(TaskStatus.CANCELLED, stop_reason=StopReason.KILLED if killed else StopReason.SIGTERM)

    async def stop(self, grace: float) -> dict[int, Outcome]:
        """Stop every worker; returns how each task that was running ended. The tasks of leases
        that had not started are returned to the listener."""
        self._closing = True
        self._idle.clear()
        loop = asyncio.get_running_loop()
        stopping: list[tuple[int, Any]] = []
        for worker in list(self._workers):
            if not worker.lease:
                continue
            current = worker.current() or next(iter(worker.lease.values()))[1]
            report = self._reports.get(current.id)
            if report is None:  # a cancel of it under way waits for its report too: they share it
                report = self._reports[current.id] = loop.create_future()
            stopping.append((current.id, self._stop_worker(worker, current.id, grace, report)))
        ids = [task_id for task_id, _ in stopping]
        outcomes = await asyncio.gather(*(stop for _, stop in stopping))
        for task_id in ids:
            self._reports.pop(task_id, None)
        for worker in list(self._workers):
            if worker.writer is not None and not worker.writer.is_closing():
                worker.writer.write_eof()  # an idle worker exits at end of channel
        exits = [w.exited for w in self._workers]
        if exits:
            _, pending = await asyncio.wait(exits, timeout=max(grace, 1.0))
            for worker in self._workers:
                if worker.exited in pending:
                    signal_group(worker.pid, signal.SIGKILL)
            if pending:
                await asyncio.wait(pending, timeout=KILL_TIMEOUT)
        if self._containment is not None:
            survivors = await self._containment.close(KILL_TIMEOUT)
            if survivors:
                log.error("processes %s of the workers outlived SIGKILL", survivors)
        for task in list(self._tasks):
            task.cancel()
        return dict(zip(ids, outcomes, strict=True))
