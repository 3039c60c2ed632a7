"""Control beyond one task at a time: keys that dedupe and supersede, operations on a selection (with a
dry run), and pausing the queue. A mixin of `TaskService`, whose state and helpers it uses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from msearchd.errors import InvalidArgument, InvalidState, NotFound
from msearchd.model import (
    TERMINAL,
    StopReason,
    Task,
    TaskStatus,
    format_task_id,
    validate_priority,
    validate_type,
)
from msearchd.selection import Preview, Selection, parse_selection

if TYPE_CHECKING:
    from msearchd.service import TaskService

    _Base = TaskService
else:
    _Base = object

KEY_MAX = 512  # characters of a key
ON_CONFLICT = ("keep", "replace")
# Ids a selection scans per step: each step is one transaction when it changes tasks, other requests
# answered in between.
SELECT_WINDOW = 500
RETRY_STEP = 200  # retries per transaction: each writes a task and its history
ALL_TYPES = "*"  # the pause of the whole queue
QUEUE_EVENTS = ("queue_paused", "queue_resumed")
QUEUE_HISTORY = 50
WAITING_STATUSES = (TaskStatus.PENDING.value, TaskStatus.BLOCKED.value)
# A task that a drain waits for is done with once it ends or goes back to the queue.
_SETTLED = [*(s.value for s in TERMINAL), TaskStatus.PENDING.value]


def validate_key(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= KEY_MAX:
        raise InvalidArgument(f"a key must be a string of 1 to {KEY_MAX} characters, got {value!r}")
    return value


class Controlling(_Base):
    """Keys, selections and pauses."""

    # --- keys ---------------------------------------------------------------------------------------

    def _submit_keyed(
        self, spec: dict[str, Any], key: object, on_conflict: object, running: bool
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """Submit under a key: at most one unfinished task holds it. The database's unique index
        decides; the reads here only choose what to answer."""
        key = validate_key(key)
        if on_conflict not in ON_CONFLICT:
            raise InvalidArgument(f"on_conflict must be one of {', '.join(ON_CONFLICT)}, got {on_conflict!r}")
        existing = self.store.unfinished_with_key(key)
        if existing is None:
            return self._insert_keyed(spec, key)
        if on_conflict == "keep":
            return self._keyed_answer(existing, key, "kept")
        if existing.status.waiting:
            return self._supersede(existing, spec, key)
        if running:
            return self._supersede_running(existing, spec, key)
        return self._keyed_answer(existing, key, "kept")  # a running one is left to finish

    def _keyed_answer(self, task: Task, key: str, outcome: str, **extra: Any) -> dict[str, Any]:
        return {**self.wire(task), "key": key, "key_outcome": outcome, **extra}

    def _insert_keyed(self, spec: dict[str, Any], key: str) -> dict[str, Any]:
        from msearchd.service import REQUESTER

        now = self.clock()
        task_id = self.store.insert_keyed(key, **spec, created_at=now, submitter=REQUESTER.get())
        if task_id is None:  # another took it since it was read: answer with that one
            holder = self.store.unfinished_with_key(key)
            assert holder is not None
            return self._keyed_answer(holder, key, "kept")
        return {**self._submitted(task_id, spec, now), "key": key, "key_outcome": "created"}

    def _supersede(self, old: Task, spec: dict[str, Any], key: str) -> dict[str, Any]:
        """Cancel the waiting holder of `key` and queue the new task in its place, in one transaction;
        the old one's dependents wait for the new one instead."""
        from msearchd.service import REQUESTER

        with self.store.transaction():
            self._record([old.id], "cancel_requested", by="replace", running=False)
            now = self.clock()
            self.store.update(
                old.id,
                expect=WAITING_STATUSES,
                status=TaskStatus.CANCELLED,
                finished_at=now,
                stop_reason=StopReason.NOT_STARTED,
                blocked_reason=None,
            )
            new_id = self.store.insert_keyed(key, **spec, created_at=now, submitter=REQUESTER.get())
            assert new_id is not None  # the key was freed just above, in this transaction
            handed = []
            while part := self.store.replace_dependency(old.id, new_id):
                handed += part
            self._record([old.id], "replaced", new_task_id=format_task_id(new_id))
            if handed:
                self._record(
                    handed, "dependency_replaced", old=format_task_id(old.id), new=format_task_id(new_id)
                )
        old.status, old.finished_at, old.stop_reason = TaskStatus.CANCELLED, now, StopReason.NOT_STARTED
        self._publish("cancelled", old, stop_reason=StopReason.NOT_STARTED.value)
        answer = self._submitted(new_id, spec, now)
        return {**answer, "key": key, "key_outcome": "replaced", "replaced": format_task_id(old.id)}

    async def _supersede_running(self, old: Task, spec: dict[str, Any], key: str) -> dict[str, Any]:
        await self._stop_running(old, by="replace")
        holder = self.store.unfinished_with_key(key)
        if holder is not None:  # taken again while the old one stopped
            return self._keyed_answer(holder, key, "kept")
        answer = self._insert_keyed(spec, key)
        if answer["key_outcome"] == "created":
            answer.update(key_outcome="replaced", replaced=format_task_id(old.id))
        return answer

    # --- selections ---------------------------------------------------------------------------------

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
        allowed = WAITING_STATUSES + ((TaskStatus.RUNNING.value,) if running else ())
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
        from msearchd.service import REQUESTER

        uid, pid = REQUESTER.get()
        detail = {"by": "cancel", "running": running, "selection": selection.describe()}
        with self.store.transaction():
            request = self.store.add_bulk_request(self.clock(), "cancel_requested", detail, uid, pid)
        cancelled = cascaded = failed = 0
        later: list[Any] = []
        waiting = tuple(s for s in statuses if s in WAITING_STATUSES)
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
        statuses = selection.narrowed_to(WAITING_STATUSES)
        if dry_run:
            preview, _ = await self._preview(selection, statuses, newest)
            return self._dry_answer(preview, selection, newest, priority=priority)
        from msearchd.service import REQUESTER

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

    # --- pause, resume, drain -----------------------------------------------------------------------

    def _apply_pauses(self) -> None:
        """Make the scheduler hold back what the store says is paused (at start, and at each change)."""
        types = {row[0] for row in self.store.pauses()}
        self.scheduler.pause(types - {ALL_TYPES}, ALL_TYPES in types)

    def _pause_types(self, types: object) -> list[str]:
        if types is None or types == []:
            return [ALL_TYPES]
        if not isinstance(types, list):
            raise InvalidArgument("types must be a list of task types")
        return sorted({validate_type(t) for t in types})

    def _queue_changed(self, event: str, types: list[str]) -> dict[str, Any]:
        from msearchd.service import REQUESTER

        uid, pid = REQUESTER.get()
        now = self.clock()
        self.store.add_bulk_request(now, event, {"types": types}, uid, pid)
        payload = {
            "event": event,
            "task_id_n": 0,  # about no task: only a subscriber to every task hears of it
            "type": "",
            "time": now,
            "types": types,
            "uid": uid,
            "pid": pid,
        }
        self.store.after_commit(lambda: self._tell_subscribers(payload))
        return payload

    def _tell_subscribers(self, payload: dict[str, Any]) -> None:
        for sub in list(self._subscriptions):
            if sub.wants(payload):
                sub.offer(payload)

    def pause(self, types: list[Any] | None = None) -> dict[str, Any]:
        """No new task of these types (of any, when none are named) starts; running ones go on."""
        names = self._pause_types(types)
        from msearchd.service import REQUESTER

        uid, pid = REQUESTER.get()
        with self.store.transaction():
            added = self.store.add_pauses(names, self.clock(), uid, pid)
            if added:  # pausing what is paused already changes nothing: no history entry
                self._queue_changed("queue_paused", added)
        self._apply_pauses()
        return self.queue_state()

    def resume(self, types: list[Any] | None = None) -> dict[str, Any]:
        """Let the named types (every paused one, when none are named) start again."""
        names = None if not types else self._pause_types(types)
        with self.store.transaction():
            resumed = self.store.remove_pauses(names)
            if resumed:
                self._queue_changed("queue_resumed", resumed)
        self._apply_pauses()
        self.wake()
        return self.queue_state()

    def drain(
        self, types: list[Any] | None = None, timeout: float | None = None
    ) -> Awaitable[dict[str, Any]]:
        """Pause at once, then wait until none of the paused types runs (for a backup, a reboot, an
        upgrade); the requests after it see the pause."""
        if timeout is not None and not timeout >= 0:
            raise InvalidArgument(f"timeout must be 0 or more seconds, got {timeout!r}")
        self.pause(types)
        names = set(self._pause_types(types))
        return self._drained(names, None if timeout is None else time.monotonic() + timeout)

    async def _drained(self, names: set[str], deadline: float | None) -> dict[str, Any]:
        while True:
            busy = [t.id for t in self.store.running() if ALL_TYPES in names or t.type in names]
            left = None if deadline is None else deadline - time.monotonic()
            if not busy or (left is not None and left <= 0):
                running = [format_task_id(i) for i in busy]
                return {**self.queue_state(), "drained": not busy, "running": running}
            await self.wait(busy, statuses=_SETTLED, timeout=left)

    def queue_state(self) -> dict[str, Any]:
        pauses = self.store.pauses()
        return {
            "paused": [{"type": t, "since": since, "uid": uid, "pid": pid} for t, since, uid, pid in pauses],
            "all_paused": any(t == ALL_TYPES for t, *_ in pauses),
            "history": self.store.queue_requests(QUEUE_EVENTS, QUEUE_HISTORY),
        }
