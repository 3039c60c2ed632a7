"""The dispatcher: tasks handed to workers (alone or leased together), outcomes settled, dependents.

Outcomes of a lease share a commit (`_settling`); the dependents of a finished or cancelled task are
unblocked, handed over or cancelled in its transaction, the rest in chunks of their own (`_fan_out`).
The pool calls back here (`task_started`, `task_progress`, `task_finished`, `tasks_returned`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from msearchd.errors import MsearchError, Unavailable
from msearchd.model import (
    StopReason,
    Task,
    TaskStatus,
    dependency_state,
    format_task_id,
)
from msearchd.store import WAITING, disk_full
from msearchd.workers import Outcome

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases

log = logging.getLogger("msearchd.service")


# Dependents settled (cancelled, unblocked, handed over) in the transaction of the change that
# concerns them; the rest go in chunks of as many, each its own transaction, other requests answered
# in between. A chunk holds the loop about 20 ms.
FANOUT_CHUNK = 1000
# The bulk-request row that says "the dependents of task X are being settled": a restart goes on.
FANOUT_EVENT = "dependents_pending"
PROGRESS_FLUSH_INTERVAL = 1.0
# A worker is handed the next tasks together when they are short: as many as are expected to take
# this long in all, at most LEASE_MAX. A task submitted meanwhile, whatever its priority, waits for
# them, so this bounds that wait.
LEASE_WINDOW = 0.05
# A lease whose tasks have not all started this long after it went out has a task running far longer
# than expected: those after it go back to the queue, for a free worker or a later lease.
LEASE_OVERRUN = 4 * LEASE_WINDOW
# How long the outcome of a task in the middle of a lease may wait to be recorded, so that the
# outcomes of a lease share a commit.
SETTLE_DELAY = 0.01
LEASE_MAX = 64
DURATION_SAMPLES = 3  # runs of a type before its duration is trusted
DURATION_WEIGHT = 0.2  # of the newest run in the moving mean
# The progress of a task reaches the other daemons of a shared store at most this often (its latest value).
PROGRESS_NOTIFY_INTERVAL = 0.2


DISPATCH_RETRY_MAX = 30.0  # seconds between tries of a dispatch that keeps failing


@dataclasses.dataclass(slots=True)
class Fanned:
    """What settling the dependents of tasks did."""

    cancelled: list[int] = dataclasses.field(default_factory=list)
    handed_over: list[int] = dataclasses.field(default_factory=list)

    def add(self, other: Fanned) -> None:
        self.cancelled += other.cancelled
        self.handed_over += other.handed_over


class Durations:
    """How long tasks of each type have been taking lately: what decides whether they are leased."""

    def __init__(self) -> None:
        self._mean: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def record(self, task_type: str, seconds: float) -> None:
        n = self._count.get(task_type, 0)
        mean = self._mean.get(task_type, seconds)
        self._mean[task_type] = mean + (seconds - mean) * max(DURATION_WEIGHT, 1 / (n + 1))
        self._count[task_type] = n + 1

    def expected(self, task_type: str) -> float | None:
        """The recent mean, once there are enough runs to go by; None before."""
        if self._count.get(task_type, 0) < DURATION_SAMPLES:
            return None
        return self._mean[task_type]


class Dispatching(ServiceCore):
    """The dispatch operations of `TaskService`."""

    if TYPE_CHECKING:

        def _current_attempt(self, task_id: int) -> int: ...
        def _late(self) -> bool: ...
        def _retry_busy_limits(self) -> None: ...

    def _cascade_cancel(self, roots: Sequence[int]) -> int:
        """Cancel every waiting task that depends, directly or not, on the cancelled `roots`; returns
        how many it cancelled in the current transaction (see `_fan_out` for the rest)."""
        return len(self._fan_out(self.store.with_dependents(roots)).cancelled)

    def _refresh_dependents(self, task_id: int) -> None:
        """Re-derive the state of the tasks blocked on `task_id` after it finished."""
        self._fan_out([task_id])

    def _fan_out(self, roots: Iterable[int]) -> Fanned:
        """Settle the waiting dependents of `roots` after the roots' states changed, and theirs in
        turn: FANOUT_CHUNK of them in the current transaction (in all, however many tasks it
        finishes), the rest in chunks after it commits."""
        done = Fanned()
        work = deque((root, 0) for root in roots)
        if self.store.begun != self._budget_of:  # the budget is the transaction's, whoever spends it
            self._budget_of, self._budget = self.store.begun, FANOUT_CHUNK
        while work and self._budget > 0:
            root, after = work.popleft()
            part, more, cursor, seen = self._fanout_step(root, after, self._budget)
            done.add(part)
            self._budget -= seen
            if cursor is not None:
                work.appendleft((root, cursor))
            work.extend((r, 0) for r in more)
        if work:
            self._defer(work)
        return done

    def _fanout_step(self, root: int, after: int, limit: int) -> tuple[Fanned, list[int], int | None, int]:
        """Settle up to `limit` waiting dependents of `root` (ids above `after`) by the root's state.

        Returns what it did, the tasks it cancelled that have dependents of their own, where to go on
        (None: done) and how many dependents it looked at.
        """
        done = Fanned()
        task = self.store.get(root)
        if task is None:
            return done, [], None, 0
        ref = format_task_id(root)
        if task.status is TaskStatus.CANCELLED:
            ids = self.store.dependents(root, limit=limit)
            done.cancelled = self.store.cancel_waiting(
                ids, self.clock(), error=f"dependency {ref} was cancelled"
            )
            self._publish_status("cancelled", done.cancelled, stop_reason=StopReason.NOT_STARTED.value)
        elif task.status is TaskStatus.FAILED and task.retried_as is not None:
            target = self._current_attempt(root)
            ids = done.handed_over = self.store.replace_dependency(root, target, limit)
            self._record(ids, "dependency_replaced", old=ref, new=format_task_id(target))
            done.cancelled = [d for d in ids if self._rederive(d)]
        else:
            ids = self.store.dependents(root, statuses=(TaskStatus.BLOCKED.value,), after=after, limit=limit)
            done.cancelled = [d for d in ids if self._rederive(d)]
        cursor = ids[-1] if len(ids) == limit else None
        return done, self.store.with_dependents(done.cancelled), cursor, len(ids)

    def _rederive(self, task_id: int) -> bool:
        """Bring a waiting task in line with its dependencies; True if it was cancelled with one."""
        deps = self.store.dependency_statuses(task_id)
        gone = next((d for d, status in deps if status is TaskStatus.CANCELLED), None)
        if gone is not None:
            error = f"dependency {format_task_id(gone)} was cancelled"
            cancelled = self.store.cancel_waiting([task_id], self.clock(), error=error)
            self._publish_status("cancelled", cancelled, stop_reason=StopReason.NOT_STARTED.value)
            return bool(cancelled)
        status, reason = dependency_state(deps)
        if status is TaskStatus.PENDING:
            task = self.store.update_returning(
                task_id, expect=[TaskStatus.BLOCKED.value], status=status, blocked_reason=None
            )
            if task is not None:
                self._publish("unblocked", task)
                self.wake()
        else:
            self.store.update(task_id, expect=WAITING, blocked_reason=reason)
        return False

    @contextmanager
    def _deferring(self) -> Iterator[list[asyncio.Future[Fanned]]]:
        """Collect, for the caller to await, the fan-outs that what runs inside leaves for later."""
        outer, self._deferred = self._deferred, []
        later = self._deferred
        try:
            yield later
        finally:
            self._deferred = outer

    def _defer(self, work: Iterable[tuple[int, int]]) -> None:
        """Go on with the fan-out from these (root, cursor) once the transaction commits. The roots
        are recorded in it, so that if the daemon stops first, the next one goes on with them."""
        markers: dict[int, list[int]] = {}
        now = self.clock()
        for root, _ in work:
            if root not in markers:
                markers[root] = [self.store.add_bulk_request(now, FANOUT_EVENT, {"task": root}, None, None)]
        future: asyncio.Future[Fanned] = asyncio.get_running_loop().create_future()
        if self._deferred is not None:
            self._deferred.append(future)
        queue = list(work)
        self.store.after_commit(lambda: self._start_fanout(queue, markers, future))

    def _start_fanout(
        self, work: list[tuple[int, int]], markers: dict[int, list[int]], future: asyncio.Future[Fanned]
    ) -> None:
        if self._stopping:  # its marks are in the store: the next start goes on with it
            future.cancel()
            return
        job = asyncio.ensure_future(self._run_fanout(work, markers))
        self._fanouts.add(job)

        def ended(job: asyncio.Task[Fanned]) -> None:
            self._fanouts.discard(job)
            if job.cancelled():
                future.cancel()
            elif (exc := job.exception()) is not None:
                if not isinstance(exc, MsearchError):
                    log.error("settling dependents failed: %s; the next start goes on with it", exc)
                future.set_exception(exc)
                future.exception()  # nobody may be waiting for it: it was logged
            else:
                future.set_result(job.result())

        job.add_done_callback(ended)

    async def _run_fanout(self, work: list[tuple[int, int]], markers: dict[int, list[int]]) -> Fanned:
        """Settle dependents a chunk at a time, each chunk one transaction, other requests in between."""
        done = Fanned()
        queue = deque(work)
        while queue:
            await asyncio.sleep(0)
            root, after = queue[0]
            added: dict[int, list[int]] = {}
            with self.store.transaction():
                part, more, cursor, _ = self._fanout_step(root, after, FANOUT_CHUNK)
                if cursor is None:
                    self.store.delete_events(markers.get(root, []))
                now = self.clock()
                for r in more:
                    if r not in markers and r not in added:
                        added[r] = [self.store.add_bulk_request(now, FANOUT_EVENT, {"task": r}, None, None)]
            done.add(part)
            if cursor is None:
                queue.popleft()
                markers.pop(root, None)
            else:
                queue[0] = (root, cursor)
            markers.update(added)
            queue.extend((r, 0) for r in added)
        return done

    async def _later(self, later: list[asyncio.Future[Fanned]]) -> Fanned:
        """What the fan-outs left for later did, once they are done."""
        done = Fanned()
        for future in later:
            try:
                done.add(await asyncio.shield(future))
            except asyncio.CancelledError:
                if not future.cancelled():
                    raise
                raise Unavailable(
                    "msearchd is stopping; the dependents not settled yet will be when it starts again"
                ) from None
        return done

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
        cascaded = 0
        with self.store.transaction():
            if not self.store.update(task.id, expect=[TaskStatus.RUNNING.value], **fields):
                log.warning(
                    "%s ended (%s) but was no longer running", format_task_id(task.id), outcome.status
                )
                return 0
            if outcome.status is TaskStatus.CANCELLED:
                cascaded = self._cascade_cancel([task.id])
            elif dependents:
                self._refresh_dependents(task.id)
        if self._listened(task.id):
            extra = {"stop_reason": outcome.stop_reason.value} if outcome.stop_reason else {}
            if outcome.error:
                extra["error"] = outcome.error
            if outcome.result is not None:
                extra["result"] = outcome.result
            self._publish(outcome.status.value, dataclasses.replace(task, **fields), **extra)
        return cascaded

    def worker_idle(self) -> None:
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
            held = self._progress_held
            self._publish("progress", task, notify=not held, progress=new[0], current_operation=new[1])
            if held:
                self._progress_out[task_id] = task
            elif self.store.shared:
                self._progress_held = True
                asyncio.get_running_loop().call_later(PROGRESS_NOTIFY_INTERVAL, self._notify_progress)

    def _notify_progress(self) -> None:
        """Tell the other daemons the latest progress of the tasks that reported some since the last
        time, all in one round trip: tasks that report a thousand times a second cost five."""
        out, self._progress_out = self._progress_out, {}
        if not out:
            self._progress_held = False
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
        """Queue the outcome: the dispatcher records those that arrived together in one transaction,
        when the worker asks for more work (its lease is done), or SETTLE_DELAY later at most."""
        self._finished.append((task, outcome))
        if len(self._finished) == 1:
            asyncio.get_running_loop().call_later(SETTLE_DELAY, self.wake)

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
        tasks by type are as they were."""
        finished, running = list(self._finished), self.scheduler.snapshot()
        try:
            with self.store.transaction():
                yield
        except BaseException:
            self._finished = finished  # nothing else ran meanwhile: the transaction does not wait
            self.scheduler.restore(running)
            raise

    def _settle(self) -> None:
        """Record the outcomes the workers reported since the last time."""
        batch, self._finished = self._finished, []
        if self._abandoned:
            batch = [(t, o) for t, o in batch if t.id not in self._abandoned]
        if not batch:
            return
        with_dependents = set(self.store.with_dependents([task.id for task, _ in batch]))
        plain: list[tuple[Task, Outcome]] = []  # completed, and nothing else to do: written together
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
                and task.id not in self._progress
            ):
                plain.append((task, outcome))
            else:
                self._finish(task, outcome, dependents=task.id in with_dependents)
        if plain:
            self.store.complete_many([(o.started_at, o.finished_at, o.result, t.id) for t, o in plain])
            for task, outcome in plain:
                if not self._subscriptions and not self.store.shared:
                    if task.id in self._waiters:  # a waiter needs the status alone: no copy of the task
                        self._deliver_later(task.id, TaskStatus.COMPLETED)
                elif self._listened(task.id):
                    done = dataclasses.replace(
                        task,
                        status=TaskStatus.COMPLETED,
                        progress=1.0,
                        started_at=outcome.started_at or task.started_at,
                        finished_at=outcome.finished_at,
                        result=outcome.result,
                    )
                    extra = {"result": outcome.result} if outcome.result is not None else {}
                    self._publish(TaskStatus.COMPLETED.value, done, **extra)

    async def run_dispatcher(self) -> None:
        """Start pending tasks whenever a worker is idle; sleeps until something changes.

        A failure (a full disk, or a bug) must not stop all work: it is retried, less and less often
        while it lasts, and logged once when it starts and once when it ends.
        """
        failures = 0
        while not self._stopping:
            self._wake.clear()
            try:
                self._dispatch_ready()
            except Exception as exc:
                failures += 1
                delay = min(DISPATCH_RETRY_MAX, 2.0 ** (failures - 1))
                if failures > 1:
                    log.debug("dispatching still fails (attempt %d); next try in %g s", failures, delay)
                elif disk_full(exc):
                    log.error(
                        "cannot record outcomes nor start tasks: the disk holding %s is full (%s); "
                        "retrying until there is room",
                        self.settings.state_dir,
                        exc,
                    )
                else:
                    log.exception("dispatching failed; retrying until it works")
                await asyncio.sleep(delay)
                self._wake.set()
            else:
                if failures:
                    log.info("dispatching works again, after %d failed attempts", failures)
                    failures = 0
            await self._wake.wait()

    def _dispatch_ready(self) -> None:
        """Claim a task for every idle worker in one transaction, then hand them out."""
        pool = self.pool
        held = self._stopping or self._bulk_cancels or self._fenced or self._late()
        idle = pool.idle_pids() if pool is not None and not held else []
        if self.scheduler.all_paused:
            idle = []
        if not idle and not self._finished:
            return
        leases: list[tuple[int, list[Task]]] = []
        with self._settling():
            self._settle()
            for pid in idle:
                lease = self._lease(pid)
                if not lease:
                    break
                leases.append((pid, lease))
        self._retry_busy_limits()
        with self._announcing():
            for pid, lease in leases:
                assert pool is not None
                pool.dispatch(lease, pid, self.log_path, reclaim_after=LEASE_OVERRUN)
                for task in lease:
                    self._publish("started", task, worker_pid=pid, attempt=task.attempts)

    def _lease(self, pid: int) -> list[Task]:
        """The next task for worker `pid`, and after it, while they are known to take well under
        LEASE_WINDOW together, the tasks that follow it in the queue: the worker runs them one after
        the other without waiting for the daemon between them."""
        now = self.clock()
        first = self.store.claim_next(self.scheduler.excluded_types(), now, pid)
        if first is None:
            return []
        self.scheduler.started(first.type)
        expected = self._durations.expected(first.type)
        budget = LEASE_WINDOW - expected if expected is not None else 0.0  # unknown: alone
        ids: list[int] = []
        for task_id, task_type in self.store.next_pending(LEASE_MAX - 1) if budget > 0 else ():
            expected = self._durations.expected(task_type)
            if expected is None or expected > budget or self.scheduler.limited(task_type):
                break
            budget -= expected
            ids.append(task_id)
        more = self.store.claim_ids(ids, pid) if ids else []
        for task in more:
            self.scheduler.started(task.type)
        return [first, *more]

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
