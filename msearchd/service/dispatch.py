"""The dispatcher: tasks handed to workers, alone or leased together, whenever a worker is idle."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING

from msearchd.lease import REPORT_DELAY
from msearchd.model import Task
from msearchd.service.outcomes import SETTLE_DELAY
from msearchd.store import disk_full

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases

log = logging.getLogger("msearchd.service")


# A worker is handed the next tasks together when they are short: as many as are expected to take
# this long in all, at most LEASE_MAX. A task submitted meanwhile, whatever its priority, waits for
# them (and for what is left of the lease before them, TOP_UP_AHEAD at most), so this bounds that wait.
LEASE_WINDOW = 0.05
# A lease whose tasks have not all started this long after it went out has a task running far longer
# than expected: those after it go back to the queue, for a free worker or a later lease.
LEASE_OVERRUN = 4 * LEASE_WINDOW
LEASE_MAX = 64
# A worker at work on short tasks is handed its next lease while it has less than this ahead of it
# (by the expected durations), so that it goes from one lease into the next instead of waiting for the
# daemon at each end. The dispatcher hears of a busy worker this often at least: it reports its
# outcomes REPORT_DELAY after the first, and they are recorded SETTLE_DELAY after they came.
TOP_UP_AHEAD = REPORT_DELAY + SETTLE_DELAY
DURATION_SAMPLES = 3  # runs of a type before its duration is trusted
DURATION_WEIGHT = 0.2  # of the newest run in the moving mean
DISPATCH_RETRY_MAX = 30.0  # seconds between tries of a dispatch that keeps failing


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

        def _late(self) -> bool: ...
        def _retry_busy_limits(self) -> None: ...
        def _settling(self) -> AbstractContextManager[None]: ...
        def _settle(self) -> None: ...

    async def run_dispatcher(self) -> None:
        """Start pending tasks whenever a worker is idle; sleeps until something changes.

        A failure (a full disk, or a bug) must not stop all work: it is retried, less and less often
        while it lasts, and logged once when it starts and once when it ends.
        """
        failures = 0
        while not self._stopping:
            await self._wake.wait()
            if not self._wake.is_set():
                continue  # woken, but a turn's claims (see `batch`) did all there was to do
            self._wake.clear()
            try:
                self._dispatch_ready()
            except Exception as exc:
                failures = self._dispatch_failures = failures + 1
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
                    failures = self._dispatch_failures = 0

    def _dispatch_now(self) -> bool:
        """The dispatcher's turn, taken here and now by a worker that has just finished its lease:
        its outcomes are committed, their waiters answered and the worker handed more, without
        waiting for the loop to run the dispatcher. False, having done nothing, when the turn is the
        dispatcher's to take: while it backs off from failures, inside a transaction, or if it fails
        (the dispatcher then tries again, and says what fails)."""
        if self._dispatch_failures or self._stopping or self.store.transaction_open():
            return False
        try:
            self._dispatch_ready()
        except Exception as exc:
            log.debug("a turn taken for a worker that finished failed (%s); left to the dispatcher", exc)
            return False
        return True

    def batch(self) -> AbstractContextManager[None]:
        """Requests made inside share one commit at the end (group commit); each stays atomic alone.

        A transport uses it for requests that arrived together, and answers them once it is over.
        Tasks they made pending are claimed for the idle workers in that same commit, and handed out
        once it is made: a task submitted to an idle pool costs one commit, not two, and does not wait
        for the dispatcher's turn. If the commit fails, nothing was claimed.
        """
        return _Batch(self)

    def has_idle_worker(self) -> bool:
        """Whether a worker waits for a task: only then may `batch` claim one in its commit."""
        pool = self.pool
        return pool is not None and pool.idle_count > 0

    def _claim_in_turn(self, idle: list[int]) -> None:
        """Claim for `idle` workers in the open group's transaction; any failure is the dispatcher's
        to retry, never the requests' (a claim is not theirs)."""
        try:
            with self.store.transaction():
                leases = self._claim(idle)
        except Exception as exc:
            log.debug("claiming with the requests failed (%s); left to the dispatcher", exc)
            return
        if leases:
            self.store.after_commit(lambda: self._hand_out(leases))
        if len(leases) < len(idle):
            self._wake.clear()  # the queue has nothing more to start now, and no outcome waits

    def _held(self) -> bool:
        """Whether nothing may start now: the daemon stops, a bulk cancel runs, the queue is paused."""
        held = self._stopping or self._bulk_cancels != 0 or self._peers.fenced or self._late()
        return held or self.scheduler.all_paused

    def _free_workers(self) -> list[int]:
        """The idle workers, unless nothing may start now."""
        pool = self.pool
        return pool.idle_pids() if pool is not None and not self._held() else []

    def _running_low(self) -> list[int]:
        """The workers at work whose lease ends within TOP_UP_AHEAD, by the expected durations of
        what is left of it (of the task it is at, the time it has still to run, where its start is
        known: a task of 25 ms is topped up as it nears its end, rather than leaving its worker to
        wait for the daemon after each); not one with a task of a type whose duration is not known
        yet, nor one at a task that has run past its expected duration, of a type too long to be
        topped up at its start (it may run on for long: nothing waits behind it)."""
        pool = self.pool
        if pool is None or self._held():
            return []
        low = []
        for pid, ahead, elapsed in pool.work_ahead():
            left = 0.0
            for task in ahead:
                expected = self._durations.expected(task.type)
                if expected is None:
                    break
                if elapsed is not None:  # the task it is at
                    if elapsed >= expected >= TOP_UP_AHEAD:
                        break
                    expected, elapsed = max(expected - elapsed, 0.0), None
                left += expected
            else:
                if left < TOP_UP_AHEAD:
                    low.append(pid)
        return low

    def _dispatch_ready(self) -> None:
        """Record the outcomes reported, and claim a task for every idle worker, and the next lease
        of every worker about to finish its own, in one transaction; then hand them out."""
        idle = self._free_workers()
        if not idle and not self._finished:
            return
        with self._settling():
            self._settle()
            leases = self._claim(idle + self._running_low())
        self._hand_out(leases)

    def _claim(self, idle: list[int]) -> list[tuple[int, list[Task]]]:
        """A lease for each of the workers `idle`, while the queue has tasks for them."""
        leases: list[tuple[int, list[Task]]] = []
        for pid in idle:
            lease, more = self._lease(pid)
            if lease:
                leases.append((pid, lease))
            if not more:
                break
        self._retry_busy_limits()
        return leases

    def _hand_out(self, leases: list[tuple[int, list[Task]]]) -> None:
        """Send each lease to its worker, and tell of the starts whoever may hear of them: a wait
        for the end of tasks does not (it hears of each task once, when it ends)."""
        pool = self.pool
        heard = bool(self._subscriptions) or self.store.shared or self._waits_before_end > 0
        with self._announcing():
            for pid, lease in leases:
                assert pool is not None
                pool.dispatch(lease, pid, self.log_path, reclaim_after=LEASE_OVERRUN)
                if heard:
                    for task in lease:
                        self._publish("started", task, worker_pid=pid, attempt=task.attempts)

    def _lease(self, pid: int) -> tuple[list[Task], bool]:
        """The next task for worker `pid`, and after it, while they are known to take well under
        LEASE_WINDOW together, the tasks that follow it in the queue: the worker runs them one after
        the other without waiting for the daemon between them. Also whether the queue may hold more
        (False once this lease took all it held: no other worker need look)."""
        now = self.clock()
        first = self.store.claim_next(self.scheduler.excluded_types(), now, pid)
        if first is None:
            return [], False
        self.scheduler.started(first.type)
        expected = self._durations.expected(first.type)
        budget = LEASE_WINDOW - expected if expected is not None else 0.0  # unknown: alone
        if budget <= 0:
            return [first], True
        ids: list[int] = []
        following = self.store.next_pending(LEASE_MAX - 1)
        for task_id, task_type in following:
            expected = self._durations.expected(task_type)
            if expected is None or expected > budget or self.scheduler.limited(task_type):
                break
            budget -= expected
            ids.append(task_id)
        more = self.store.claim_ids(ids, pid) if ids else []
        for task in more:
            self.scheduler.started(task.type)
        return [first, *more], len(following) == LEASE_MAX - 1 or len(more) < len(following)


class _Batch:
    """`Dispatching.batch()`. A class rather than a generator: every turn of requests opens one, and a
    generator-based context manager costs about a microsecond more each time."""

    __slots__ = ("_group", "_service")

    def __init__(self, service: Dispatching) -> None:
        self._service = service
        self._group = service.store.group()

    def __enter__(self) -> None:
        self._group.__enter__()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        service = self._service
        running = None
        try:
            try:
                # The requests wrote, so a commit will be made: claim for the idle workers in it.
                store_writes = exc_type is None and service.store.transaction_open()
                if store_writes and service._wake.is_set() and not service._finished:
                    idle = service._free_workers()
                    if idle:
                        running = service.scheduler.snapshot()
                        service._claim_in_turn(idle)
            except BaseException as failure:
                self._group.__exit__(type(failure), failure, failure.__traceback__)
                raise
            self._group.__exit__(exc_type, exc, tb)
        except BaseException:
            if running is not None:
                service.scheduler.restore(running)
            raise
