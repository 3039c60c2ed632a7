"""Dependents settled: unblocked, handed over or cancelled when the tasks they wait for change.

The dependents of a finished or cancelled task are settled in its transaction, up to FANOUT_CHUNK of
them; the rest in chunks of their own (`_fan_out`), marked in the store so that a restart goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING

from msearchd.errors import MsearchError, Unavailable
from msearchd.model import StopReason, TaskStatus, dependency_state, format_task_id
from msearchd.store import WAITING

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


class FanoutBudget:
    """The dependents a transaction may still settle: FANOUT_CHUNK a transaction, whichever change
    of it spends them."""

    __slots__ = ("left", "of")

    def __init__(self) -> None:
        self.of = -1  # the store's `begun` of the transaction the budget is for
        self.left = 0


@dataclasses.dataclass(slots=True)
class Fanned:
    """What settling the dependents of tasks did."""

    cancelled: list[int] = dataclasses.field(default_factory=list)
    handed_over: list[int] = dataclasses.field(default_factory=list)

    def add(self, other: Fanned) -> None:
        self.cancelled += other.cancelled
        self.handed_over += other.handed_over


class FanningOut(ServiceCore):
    """The settling of dependents in `TaskService`."""

    if TYPE_CHECKING:

        def _current_attempt(self, task_id: int) -> int: ...

    def _cascade_cancel(self, roots: Sequence[int]) -> int:
        """Cancel every waiting task that depends, directly or not, on the cancelled `roots`; returns
        how many it cancelled in the current transaction (see `_fan_out` for the rest)."""
        roots = self.store.with_dependents(roots)
        return len(self._fan_out(roots).cancelled) if roots else 0

    def _refresh_dependents(self, task_id: int) -> None:
        """Re-derive the state of the tasks blocked on `task_id` after it finished."""
        self._fan_out([task_id])

    def _fan_out(self, roots: Iterable[int]) -> Fanned:
        """Settle the waiting dependents of `roots` after the roots' states changed, and theirs in
        turn: FANOUT_CHUNK of them in the current transaction (in all, however many tasks it
        finishes), the rest in chunks after it commits."""
        done = Fanned()
        work = deque((root, 0) for root in roots)
        budget = self._fanout_budget
        if self.store.begun != budget.of:
            budget.of, budget.left = self.store.begun, FANOUT_CHUNK
        while work and budget.left > 0:
            root, after = work.popleft()
            part, more, cursor, seen = self._fanout_step(root, after, budget.left)
            done.add(part)
            budget.left -= seen
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
                task_id, expect=(TaskStatus.BLOCKED.value,), status=status, blocked_reason=None
            )
            if task is not None:
                self._publish("unblocked", task)
                self.wake()
        else:
            self.store.update(task_id, expect=WAITING, blocked_reason=reason)
        return False

    def _deferring(self) -> AbstractContextManager[list[asyncio.Future[Fanned]]]:
        """Collect, for the caller to await, the fan-outs that what runs inside leaves for later."""
        return _Deferring(self)

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


class _Deferring:
    """`_deferring()`: a class rather than a generator, since every cancel of a waiting task opens one
    (a generator-based context manager costs about a microsecond more)."""

    __slots__ = ("_outer", "_service")

    def __init__(self, service: FanningOut) -> None:
        self._service = service

    def __enter__(self) -> list[asyncio.Future[Fanned]]:
        service = self._service
        self._outer = service._deferred
        later: list[asyncio.Future[Fanned]] = []
        service._deferred = later
        return later

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._service._deferred = self._outer
