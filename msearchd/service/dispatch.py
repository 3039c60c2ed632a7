"""The dispatcher: tasks handed to workers, alone or leased together, whenever a worker is idle."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from msearchd.model import Task
from msearchd.store import disk_full

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases

log = logging.getLogger("msearchd.service")


# A worker is handed the next tasks together when they are short: as many as are expected to take
# this long in all, at most LEASE_MAX. A task submitted meanwhile, whatever its priority, waits for
# them, so this bounds that wait.
LEASE_WINDOW = 0.05
# A lease whose tasks have not all started this long after it went out has a task running far longer
# than expected: those after it go back to the queue, for a free worker or a later lease.
LEASE_OVERRUN = 4 * LEASE_WINDOW
LEASE_MAX = 64
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
        def _settling(self) -> AbstractContextManager[None]: ...
        def _settle(self) -> None: ...

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
