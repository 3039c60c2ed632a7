"""Cancel, priority and retry over a selection (types, statuses, priorities, age, data), with a dry run.

A selection is scanned a window of ids at a time; each window that changes tasks is one transaction,
other requests answered in between.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from msearchd.errors import InvalidArgument, InvalidState, MsearchError, NotFound
from msearchd.model import StopReason, Task, TaskStatus, format_task_id, validate_priority
from msearchd.selection import Preview, Selection, parse_selection
from msearchd.service.cancel import ended_first
from msearchd.service.core import requester
from msearchd.service.fanout import Fanned
from msearchd.store import WAITING
from msearchd.workers import Outcome

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases

log = logging.getLogger("msearchd.service")

# Selected tasks per step: each step is one transaction when it changes tasks, other requests answered
# between two.
SELECT_STEP = 500
SPAN_MAX = 16 * SELECT_STEP  # ids a window reads at most (a few ms), where a selection is sparse
RETRY_STEP = 200  # retries per transaction: each writes a task and its history


def _held_types(selection: Selection) -> tuple[str, ...] | None:
    """The types (exact ones or globs) a cancel of the selection holds back while it works: those it
    is limited to; every type (None) where it names none."""
    return selection.types or None


def _id_range(selection: Selection, up_to: int) -> tuple[int, int]:
    """The ids (after, up_to] a scan of the selection goes through: its own ids bound them, if named."""
    if not selection.ids:
        return 0, up_to
    return min(selection.ids) - 1, min(up_to, max(selection.ids))


def _next_span(span: int, found: int) -> int:
    """The next window's width: as many ids as the last one's density says hold about SELECT_STEP tasks."""
    return max(SELECT_STEP, min(SPAN_MAX, span * SELECT_STEP // max(found, 1)))


def cancellable(running: bool) -> tuple[str, ...]:
    """The statuses a cancel touches: waiting ones, and running ones when it may stop them."""
    return WAITING + ((TaskStatus.RUNNING.value,) if running else ())


class Matching(ServiceCore):
    """The operations of `TaskService` on the tasks that a selection's filters match."""

    if TYPE_CHECKING:

        def _fan_out(self, roots: Iterable[int]) -> Fanned: ...
        def _deferring(self) -> AbstractContextManager[list[asyncio.Future[Fanned]]]: ...
        async def _later(self, later: list[asyncio.Future[Fanned]]) -> Fanned: ...
        async def _stop_running(self, task: Task, by: str) -> tuple[Outcome, int]: ...
        async def _take_back_anywhere(self, task: Task, by: str) -> int | None: ...
        def _maybe_handed_out(self, task: Task) -> bool: ...
        @contextmanager
        def _holding_starts(self, types: Sequence[str] | None) -> Iterator[None]: ...
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

    async def _checkpoint_later(self) -> None:
        """Checkpoint on a thread what a bulk change wrote, then let commits checkpoint again."""
        try:
            await asyncio.to_thread(self.store.checkpoint)
        except Exception:
            log.exception("checkpoint after a bulk change failed; the next commits will retry it")
        finally:
            self.store.resume_checkpoints()

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
        """The selected tasks in these statuses, at most SELECT_STEP at a time, other requests answered
        between two. A window of ids is read at a time, as wide as the last one's density says holds
        about SELECT_STEP rows: a sparse selection (one type of many) takes as few steps as a dense one."""
        after, up_to = _id_range(selection, up_to)
        span = SELECT_STEP
        while statuses and after < up_to:
            high = min(after + span, up_to)
            rows = self.store.select_window(
                selection, statuses, after, high, with_data=bool(selection.where), not_retried=not_retried
            )
            found = [(i, t, s, p) for i, t, s, p, d in rows if d is None or selection.data_matches(d)]
            for start in range(0, max(len(found), 1), SELECT_STEP):
                yield found[start : start + SELECT_STEP]
                await asyncio.sleep(0)
            after = high
            span = _next_span(span, len(rows))

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
        if dry_run:
            statuses = selection.narrowed_to(cancellable(running))
            preview, roots = await self._preview(selection, statuses, newest, dependents=True)
            dependents = self._dependents_of(roots, selection, newest)
            return self._dry_answer(
                preview,
                selection,
                newest,
                dependents=len(dependents),
                dependents_sample=[format_task_id(i) for i in dependents[:20]],
            )
        detail = {"by": "cancel", "running": running, "selection": selection.describe()}
        answer = await self._cancel_selection(selection, newest, running, detail)
        return self._changed(answer, answer["total"], expect)

    async def _cancel_selection(
        self,
        selection: Selection,
        newest: int,
        running: bool,
        detail: dict[str, Any],
        outcomes: dict[int, MsearchError | None] | None = None,
    ) -> dict[str, Any]:
        """Cancel what a selection holds among tasks up to `newest`: the waiting ones a window at a
        time, each window one transaction, then the running ones (with `running`) side by side.
        `detail` is the request as its history shows it (who asked for what); `outcomes`, if given,
        gets each task it cancelled (None) or could not (why)."""
        # Only a batch of named tasks is answered task by task: a cancel of millions keeps no map of them.
        each = outcomes is not None
        outcomes = {} if outcomes is None else outcomes
        by = detail["by"]
        statuses = selection.narrowed_to(cancellable(running))
        uid, pid = requester()
        with self.store.transaction():
            request = self.store.add_bulk_request(self.clock(), "cancel_requested", detail, uid, pid)
        cancelled = cascaded = failed = 0
        later: list[Any] = []
        waiting = tuple(s for s in statuses if s in WAITING)
        # Nothing it may cancel starts meanwhile, here or on another daemon: taking tasks by priority,
        # the dispatcher would start ones it is about to cancel.
        with self._holding_starts(_held_types(selection)), self._bulk(), self._checkpoint_after():
            steps = self._cancel_steps(selection, waiting, newest, request, each)
            async for count, done, dependents, more in steps:
                cascaded += dependents
                later += more
                cancelled += count
                if each:
                    outcomes.update(dict.fromkeys(done))
                self._publish_status("cancelled", done, stop_reason=StopReason.NOT_STARTED.value)
        if later:
            cascaded += len((await self._later(later)).cancelled)
        self._stopped_meanwhile(f"{cancelled} tasks were cancelled")
        targets = [t for t in self.store.running() if t.id <= newest and self._selects(selection, t)]
        if TaskStatus.RUNNING.value in statuses:
            stops = await asyncio.gather(*(self._stop_running(t, by=by) for t in targets))
            for task, (outcome, n) in zip(targets, stops, strict=True):
                cascaded += n
                if outcome.status is TaskStatus.CANCELLED:
                    cancelled += 1
                    outcomes[task.id] = None
                else:
                    failed += 1
                    outcomes[task.id] = ended_first(task.id, outcome.status)
        elif waiting:  # handed to a worker, here or on another daemon, not started: still waiting
            handed_out = [t for t in targets if self._maybe_handed_out(t)]
            taken = await asyncio.gather(*(self._take_back_anywhere(t, by=by) for t in handed_out))
            for task, cascade in zip(handed_out, taken, strict=True):
                if cascade is not None:
                    cancelled += 1
                    cascaded += cascade
                    outcomes[task.id] = None
        return {
            "cancelled": cancelled,
            "failed": failed,
            "total": cancelled + failed,
            "cancelled_dependents": cascaded,
        }

    async def _cancel_steps(
        self, selection: Selection, statuses: Sequence[str], newest: int, request: int, each: bool
    ) -> AsyncIterator[tuple[int, list[int], int, list[asyncio.Future[Fanned]]]]:
        """Cancel the selected tasks in these waiting statuses for the request, up to SELECT_STEP of them
        a step, each step one transaction, other requests answered between two. Yields what each step
        cancelled: how many selected tasks, their ids (with `each`, or when anyone may hear of them),
        how many dependents, and the fan-outs it left for later.

        Where SQL can test the whole selection (no `where` on the data), a step is one statement over a
        window of ids; otherwise the window's tasks are read, their data tested, then cancelled."""
        cancelled = 0
        if selection.where:
            async for rows in self._scan(selection, statuses, newest):
                self._stopped_meanwhile(f"{cancelled} tasks were cancelled")
                if rows:
                    ids = [r[0] for r in rows]
                    with self._deferring() as more, self.store.transaction():
                        done = self.store.cancel_for_request(ids, self.clock(), request)
                        roots = self.store.with_dependents(done)
                        selected, dependents = self._cancel_dependents(roots, selection, newest, request)
                    done = sorted(done + selected)
                    cancelled += len(done)
                    yield len(done), done, dependents, more
            return
        after, up_to = _id_range(selection, newest)
        span = SELECT_STEP
        while statuses and after < up_to:
            self._stopped_meanwhile(f"{cancelled} tasks were cancelled")
            high = min(after + span, up_to)
            heard = each or self._anyone_listening()
            with self._deferring() as more, self.store.transaction():
                count, found, last = self.store.cancel_window(
                    selection, statuses, after, high, SELECT_STEP, self.clock(), request, ids=heard
                )
                roots = self.store.cancelled_with_dependents(request, after, last) if count else []
                selected, dependents = self._cancel_dependents(roots, selection, newest, request)
            after = last
            span = _next_span(span, count)
            if count or selected:
                cancelled += count + len(selected)
                yield count + len(selected), sorted(found + selected), dependents, more
            await asyncio.sleep(0)

    def _cancel_dependents(
        self, roots: list[int], selection: Selection, newest: int, request: int
    ) -> tuple[list[int], int]:
        """After a step cancelled tasks for the request, `roots` those of them some waiting task
        depends on, cancel the waiting tasks that depend on them: as selected ones those the selection
        holds, wherever they are (the dry run counts them so), as dependents the others. Returns the
        selected ones it cancelled so and how many dependents."""
        parents = list(roots)
        selected: list[int] = []
        while roots:
            found = {d for root in roots for d in self.store.dependents(root)}
            tasks = self.store.get_many(sorted(found))
            held = [t.id for t in tasks if t.id <= newest and self._selects(selection, t)]
            more = self.store.cancel_for_request(held, self.clock(), request)
            selected += more
            roots = self.store.with_dependents(more)
            parents += roots
        return selected, len(self._fan_out(parents).cancelled)

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
        selected, changed = await self._reprioritize_selection(selection, newest, priority)
        answer = {"selected": selected, "changed": changed, "priority": priority}
        return self._changed(answer, selected, expect)

    async def _reprioritize_selection(
        self, selection: Selection, newest: int, priority: int, touched: list[int] | None = None
    ) -> tuple[int, int]:
        """Give what a selection holds among waiting tasks up to `newest` one priority, a window at a
        time; how many it selected and how many it changed (the others had it). `touched`, if given,
        gets the ids it selected."""
        uid, pid = requester()
        selected = changed = 0
        with self._bulk(), self._checkpoint_after():
            async for rows in self._scan(selection, selection.narrowed_to(WAITING), newest):
                self._stopped_meanwhile(f"{changed} tasks were given priority {priority}")
                if not rows:
                    continue
                selected += len(rows)
                ids = [r[0] for r in rows]
                if touched is not None:
                    touched += ids
                with self.store.transaction():
                    moved = self.store.reprioritize(ids, priority)
                    now = self.clock()
                    self.store.add_events(
                        (i, now, "priority_changed", {"old": old, "new": priority}, uid, pid)
                        for i, old in moved
                    )
                changed += len(moved)
                olds = {i: {"old_priority": old} for i, old in moved}
                self._publish_status("priority_changed", list(olds), each=olds, priority=priority)
        self.wake()
        return selected, changed

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
        outcomes: dict[int, str | MsearchError] = {}
        await self._retry_selection(selection, newest, outcomes)
        retried = [
            {"task_id": format_task_id(i), "new_task_id": o}
            for i, o in outcomes.items()
            if isinstance(o, str)
        ]
        errors = [
            {"task_id": format_task_id(i), "error": o.message}
            for i, o in outcomes.items()
            if isinstance(o, MsearchError)
        ]
        answer = {"retried": len(retried), "tasks": retried, "errors": errors}
        return self._changed(answer, len(retried), expect)

    async def _retry_selection(
        self, selection: Selection, newest: int, outcomes: dict[int, str | MsearchError]
    ) -> None:
        """Retry what a selection holds among failed tasks up to `newest` not yet retried, oldest
        first, a few per transaction; `outcomes` gets each one's new task id, or why it was refused."""
        statuses = selection.narrowed_to((TaskStatus.FAILED.value,))
        retried = 0
        with self._bulk(), self._checkpoint_after():
            async for rows in self._scan(selection, statuses, newest, not_retried=True):
                for start in range(0, len(rows), RETRY_STEP):
                    self._stopped_meanwhile(f"{retried} failed tasks were retried")
                    with self._deferring() as later, self.store.transaction():
                        for task_id, *_ in rows[start : start + RETRY_STEP]:
                            try:
                                outcomes[task_id] = self._retry(task_id)["new_task_id"]
                                retried += 1
                            except (InvalidState, NotFound) as exc:
                                outcomes[task_id] = exc
                    if later:
                        await self._later(later)
                    await asyncio.sleep(0)
