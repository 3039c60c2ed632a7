"""Cancel, priority and retry over a selection (types, statuses, priorities, age, data), with a dry run.

A selection is scanned a window of ids at a time; each window that changes tasks is one transaction,
other requests answered in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from msearchd.errors import InvalidArgument, InvalidState, NotFound
from msearchd.model import StopReason, Task, TaskStatus, format_task_id, validate_priority
from msearchd.selection import Preview, Selection, parse_selection
from msearchd.service.core import REQUESTER
from msearchd.service.fanout import Fanned
from msearchd.store import WAITING
from msearchd.workers import Outcome

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases

# Ids a selection scans per step: each step is one transaction when it changes tasks.
SELECT_WINDOW = 500
RETRY_STEP = 200  # retries per transaction: each writes a task and its history


class Matching(ServiceCore):
    """The operations of `TaskService` on the tasks that a selection's filters match."""

    if TYPE_CHECKING:

        def _cascade_cancel(self, roots: Sequence[int]) -> int: ...
        @contextmanager
        def _deferring(self) -> Iterator[list[asyncio.Future[Fanned]]]: ...
        async def _later(self, later: list[asyncio.Future[Fanned]]) -> Fanned: ...
        async def _stop_running(self, task: Task, by: str) -> tuple[Outcome, int]: ...
        async def _take_back(self, task: Task, by: str) -> int | None: ...
        async def _checkpoint_later(self) -> None: ...
        @contextmanager
        def _bulk(self) -> Iterator[None]: ...
        def _stopped_meanwhile(self, done: str) -> None: ...
        def _retry(self, task_id: Any) -> dict[str, Any]: ...

    @contextmanager
    def _checkpoint_after(self) -> Iterator[None]:
        """Keep WAL checkpoints out of the chunks' commits, and run one on a thread once they are done."""
        self.store.pause_checkpoints()
        try:
            yield
        finally:
            job = asyncio.ensure_future(self._checkpoint_later())
            self._checkpoints.add(job)
            job.add_done_callback(self._checkpoints.discard)

    def _selection(self, select: object, up_to: object) -> tuple[Selection, int]:
        selection = parse_selection(select, self.clock())
        newest = self.store.max_id()
        if up_to is not None:
            if isinstance(up_to, bool) or not isinstance(up_to, int) or up_to < 0:
                raise InvalidArgument(f"up_to must be a task number, got {up_to!r}")
            newest = min(newest, up_to)
        return selection, newest

    async def _scan(
        self, selection: Selection, statuses: Sequence[str], up_to: int, not_retried: bool = False
    ) -> AsyncIterator[list[tuple[int, str, str, int]]]:
        """The selected tasks in these statuses, a window of ids at a time, other requests answered
        between two windows."""
        after = min(selection.ids) - 1 if selection.ids else 0
        if selection.ids:
            up_to = min(up_to, max(selection.ids))
        while statuses and after < up_to:
            high = min(after + SELECT_WINDOW, up_to)
            rows = self.store.select_window(
                selection, statuses, after, high, with_data=bool(selection.where), not_retried=not_retried
            )
            yield [(i, t, s, p) for i, t, s, p, data in rows if data is None or selection.data_matches(data)]
            after = high
            await asyncio.sleep(0)

    async def _preview(
        self,
        selection: Selection,
        statuses: Sequence[str],
        up_to: int,
        not_retried: bool = False,
        dependents: bool = False,
    ) -> tuple[Preview, list[int]]:
        """What the selection holds now, and (with `dependents`) its tasks that some waiting task
        depends on."""
        preview = Preview()
        roots: list[int] = []
        async for rows in self._scan(selection, statuses, up_to, not_retried):
            for task_id, task_type, status, _ in rows:
                preview.add(task_id, task_type, status)
            if dependents:
                roots += self.store.with_dependents([r[0] for r in rows])
        return preview, roots

    def _dry_answer(self, preview: Preview, selection: Selection, up_to: int, **extra: Any) -> dict[str, Any]:
        return {
            "dry_run": True,
            "count": preview.count,
            "by_type": preview.by_type,
            "sample": [format_task_id(i) for i in preview.sample],
            "selection": selection.to_wire(),
            "up_to": up_to,
            **extra,
        }

    def _dependents_of(self, roots: list[int], selection: Selection, up_to: int) -> list[int]:
        """The waiting tasks a cancel of `roots` would cancel with them, those it selects itself aside."""
        found: set[int] = set()
        work = list(roots)
        while work:
            for dep in self.store.dependents(work.pop()):
                if dep not in found:
                    found.add(dep)
                    work.append(dep)
        tasks = self.store.get_many(sorted(found))
        return sorted(t.id for t in tasks if not (t.id <= up_to and self._selects(selection, t)))

    @staticmethod
    def _selects(selection: Selection, task: Task) -> bool:
        return selection.holds(
            task.id, task.type, str(task.status), task.priority, task.created_at, task.data
        )

    @staticmethod
    def _changed(answer: dict[str, Any], touched: int, expect: object) -> dict[str, Any]:
        """Say how a run differs from the preview it follows, if it names its count."""
        if isinstance(expect, int) and not isinstance(expect, bool):
            answer["previewed"] = expect
            answer["changed_meanwhile"] = touched != expect
        return answer

    async def cancel_selected(
        self,
        select: dict[str, Any] | None = None,
        running: bool = False,
        dry_run: bool = False,
        up_to: int | None = None,
        expect: int | None = None,
    ) -> dict[str, Any]:
        """Cancel the selected waiting tasks (and running ones, with `running`), in chunks."""
        selection, newest = self._selection(select, up_to)
        allowed = WAITING + ((TaskStatus.RUNNING.value,) if running else ())
        statuses = selection.narrowed_to(allowed)
        if dry_run:
            preview, roots = await self._preview(selection, statuses, newest, dependents=True)
            dependents = self._dependents_of(roots, selection, newest)
            return self._dry_answer(
                preview,
                selection,
                newest,
                dependents=len(dependents),
                dependents_sample=[format_task_id(i) for i in dependents[:20]],
            )
        uid, pid = REQUESTER.get()
        detail = {"by": "cancel", "running": running, "selection": selection.describe()}
        with self.store.transaction():
            request = self.store.add_bulk_request(self.clock(), "cancel_requested", detail, uid, pid)
        cancelled = cascaded = failed = 0
        later: list[Any] = []
        waiting = tuple(s for s in statuses if s in WAITING)
        self._bulk_cancels += 1  # nothing starts meanwhile: it could be a task about to be cancelled
        try:
            with self._bulk(), self._checkpoint_after():
                async for rows in self._scan(selection, waiting, newest):
                    self._stopped_meanwhile(f"{cancelled} tasks were cancelled")
                    with self._deferring() as more, self.store.transaction():
                        done = self.store.cancel_for_request([r[0] for r in rows], self.clock(), request)
                        cascaded += self._cascade_cancel(done)
                    later += more
                    cancelled += len(done)
                    self._publish_status("cancelled", done, stop_reason=StopReason.NOT_STARTED.value)
        finally:
            self._bulk_cancels -= 1
            self.wake()
        if later:
            cascaded += len((await self._later(later)).cancelled)
        targets = [t for t in self.store.running() if t.id <= newest and self._selects(selection, t)]
        if TaskStatus.RUNNING.value in statuses:
            for outcome, n in await asyncio.gather(*(self._stop_running(t, by="cancel") for t in targets)):
                cascaded += n
                if outcome.status is TaskStatus.CANCELLED:
                    cancelled += 1
                else:
                    failed += 1
        elif self.pool is not None and waiting:  # handed to a worker, not started: still waiting
            handed_out = [t for t in targets if self.pool.waits_in_lease(t.id)]
            for n in await asyncio.gather(*(self._take_back(t, by="cancel") for t in handed_out)):
                if n is not None:
                    cancelled += 1
                    cascaded += n
        answer = {
            "cancelled": cancelled,
            "failed": failed,
            "total": cancelled + failed,
            "cancelled_dependents": cascaded,
        }
        return self._changed(answer, cancelled + failed, expect)

    async def set_priority_selected(
        self,
        priority: int,
        select: dict[str, Any] | None = None,
        dry_run: bool = False,
        up_to: int | None = None,
        expect: int | None = None,
    ) -> dict[str, Any]:
        """Give the selected waiting tasks one priority, a window at a time."""
        priority = validate_priority(priority)
        selection, newest = self._selection(select, up_to)
        statuses = selection.narrowed_to(WAITING)
        if dry_run:
            preview, _ = await self._preview(selection, statuses, newest)
            return self._dry_answer(preview, selection, newest, priority=priority)
        uid, pid = REQUESTER.get()
        selected = changed = 0
        with self._bulk(), self._checkpoint_after():
            async for rows in self._scan(selection, statuses, newest):
                self._stopped_meanwhile(f"{changed} tasks were given priority {priority}")
                selected += len(rows)
                with self.store.transaction():
                    moved = self.store.reprioritize([r[0] for r in rows], priority)
                    now = self.clock()
                    self.store.add_events(
                        (i, now, "priority_changed", {"old": old, "new": priority}, uid, pid)
                        for i, old in moved
                    )
                changed += len(moved)
                self._publish_status("priority_changed", [i for i, _ in moved], priority=priority)
        self.wake()
        answer = {"selected": selected, "changed": changed, "priority": priority}
        return self._changed(answer, selected, expect)

    async def retry_selected(
        self,
        select: dict[str, Any] | None = None,
        dry_run: bool = False,
        up_to: int | None = None,
        expect: int | None = None,
    ) -> dict[str, Any]:
        """Retry the selected failed tasks not yet retried, oldest first, a few per transaction."""
        selection, newest = self._selection(select, up_to)
        statuses = selection.narrowed_to((TaskStatus.FAILED.value,))
        if dry_run:
            preview, _ = await self._preview(selection, statuses, newest, not_retried=True)
            return self._dry_answer(preview, selection, newest)
        retried: list[dict[str, str]] = []
        errors: list[dict[str, str]] = []
        with self._bulk(), self._checkpoint_after():
            async for rows in self._scan(selection, statuses, newest, not_retried=True):
                for start in range(0, len(rows), RETRY_STEP):
                    self._stopped_meanwhile(f"{len(retried)} failed tasks were retried")
                    with self._deferring() as later, self.store.transaction():
                        for task_id, *_ in rows[start : start + RETRY_STEP]:
                            try:
                                answer = self._retry(task_id)
                                retried.append(
                                    {"task_id": answer["task_id"], "new_task_id": answer["new_task_id"]}
                                )
                            except (InvalidState, NotFound) as exc:
                                errors.append({"task_id": format_task_id(task_id), "error": exc.message})
                    if later:
                        await self._later(later)
                    await asyncio.sleep(0)
        answer = {"retried": len(retried), "tasks": retried, "errors": errors}
        return self._changed(answer, len(retried), expect)
