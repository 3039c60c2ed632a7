"""TaskService in process, where a failure of the disk can be staged: nothing a failed write was
about may be lost."""

from __future__ import annotations

import ast
import asyncio
import inspect
import sqlite3
import textwrap
from pathlib import Path

import pytest

from msearchd.config import Settings
from msearchd.errors import InvalidState, NotFound
from msearchd.model import TaskStatus, parse_task_id
from msearchd.service import REQUESTER, TaskService
from msearchd.store import Store
from msearchd.workers import Outcome


def test_outcomes_survive_a_write_that_failed(tmp_path: Path, monkeypatch):
    store = Store(tmp_path / "tasks.db")
    settings = Settings(state_dir=tmp_path, type_limits={"quick": 1})
    service = TaskService(store, settings)

    async def scenario() -> None:
        ref = service.submit("quick")["id"]
        task = store.claim_next([], 1.0, 4242)  # as the dispatcher hands it to a worker
        assert task is not None and task.status is TaskStatus.RUNNING
        service.scheduler.started(task.type)  # the limit of its type is reached
        service.task_progress(task, 0.5, "halfway")
        service.task_finished(task, Outcome(TaskStatus.COMPLETED, started_at=1.0, finished_at=2.0))

        full = sqlite3.OperationalError("database or disk is full")

        def no_space(*args: object) -> None:
            raise full

        with monkeypatch.context() as m:
            m.setattr(store, "complete_many", no_space)
            try:
                service._dispatch_ready()
            except sqlite3.OperationalError as exc:
                assert exc is full
            else:
                raise AssertionError("the failed write went unnoticed")
        assert service.get(ref)["status"] == "running"
        assert service.scheduler.running("quick") == 1  # still counted: it did not finish, on disk
        service._dispatch_ready()  # the disk has room again: the outcome is recorded this time
        done = service.get(ref)
        assert (done["status"], done["progress"], done["current_operation"]) == ("completed", 1.0, "halfway")
        assert service.scheduler.running("quick") == 0

    asyncio.run(scenario())
    store.close()


def test_a_control_write_answers_with_the_task_as_a_read_of_it_shows_it(tmp_path: Path):
    """`set_priority` and `cancel` answer with the task they changed, read without building it
    whole: the answer is what `get` shows after it, a task that ran before and went back to the
    queue (its log found) among them, and the history says who asked what."""
    store = Store(tmp_path / "tasks.db")
    service = TaskService(store, Settings(state_dir=tmp_path))
    REQUESTER.set((1000, 42))

    async def scenario() -> None:
        first = service.submit("noop", {"n": 1}, priority=5)["id"]
        blocked = service.submit("noop", depends_on=[first])["id"]
        requeued = service.submit("noop")["id"]
        n = parse_task_id(requeued)
        with store.transaction():  # as recovery leaves a task whose daemon died while it ran
            store.update(n, status=TaskStatus.PENDING, started_at=2.0, attempts=1)
        Path(service.log_path(n)).parent.mkdir(parents=True, exist_ok=True)
        Path(service.log_path(n)).write_text("ran once\n")
        for ref, priority in ((first, 2), (blocked, 0), (requeued, 11)):
            answer = service.set_priority(ref, priority)
            assert answer["priority"] == priority
            assert answer == service.get(ref)
        assert service.get(requeued)["log_path"] == service.log_path(n)
        changed = store.events(parse_task_id(first))[-1]
        assert changed.pop("time") >= store.get(parse_task_id(first)).created_at
        assert changed == {"event": "priority_changed", "old": 5, "new": 2, "uid": 1000, "pid": 42}
        answer = service.cancel(requeued)
        assert answer == {"task": service.get(requeued), "cancelled_dependents": 0}
        assert answer["task"]["status"] == "cancelled" and answer["task"]["log_path"] is not None
        answer = service.cancel(first)
        assert answer == {"task": service.get(first), "cancelled_dependents": 1}
        assert (answer["task"]["stop_reason"], answer["task"]["blocked_reason"]) == ("not_started", None)
        assert service.get(blocked)["status"] == "cancelled"
        for ref in (first, blocked):
            with pytest.raises(InvalidState, match="only a pending or blocked task's priority changes"):
                service.set_priority(ref, 1)
        with pytest.raises(InvalidState, match="already cancelled"):
            service.cancel(first)
        with pytest.raises(NotFound, match="task_999 does not exist"):
            service.set_priority("task_999", 1)

    asyncio.run(scenario())
    store.close()


def test_no_two_parts_of_the_service_define_the_same_name():
    """`TaskService` is its operation families together: a name two of them define is one of them
    hidden from the other, without a word (a worker's `worker_idle` call answered by another part)."""
    defined: dict[str, list[str]] = {}
    for part in TaskService.__mro__[1:-1]:  # its parts, without TaskService itself and object
        for name in vars(part):
            if not name.startswith("__"):
                defined.setdefault(name, []).append(part.__name__)
    assert {name: parts for name, parts in defined.items() if len(parts) > 1} == {}
    assert "worker_idle" in defined and "has_idle_worker" in defined  # the test sees every part


def test_a_control_write_of_a_task_that_started_after_it_was_read_changes_nothing(tmp_path: Path):
    """With a shared store another daemon may start a task between a control write's read and its
    write: the write then finds it running, changes nothing, and says what the task is now."""
    store = Store(tmp_path / "tasks.db")
    service = TaskService(store, Settings(state_dir=tmp_path))
    read = store.get_wire

    def read_then_started(task_id: int):
        answer = read(task_id)
        store.update(task_id, status=TaskStatus.RUNNING, started_at=1.0)  # as another daemon would
        return answer

    async def scenario() -> None:
        first, second = (service.submit("noop", priority=5)["id"] for _ in range(2))
        store.get_wire = read_then_started  # type: ignore[method-assign]
        with pytest.raises(InvalidState, match=f"{first} is running; only a pending or blocked"):
            service.set_priority(first, 1)
        with pytest.raises(InvalidState, match=f"{second} is running; add running=true"):
            service.cancel(second)
        for ref in (first, second):
            task = store.get(parse_task_id(ref))
            assert (task.status, task.priority) == (TaskStatus.RUNNING, 5)
            assert store.events(task.id) == []  # no history of a change that did not happen

    asyncio.run(scenario())
    store.close()


def test_an_outcome_recorded_at_once_leaves_nothing_to_wake_the_daemon_for(tmp_path: Path, monkeypatch):
    """An outcome waits SETTLE_DELAY at most to be recorded: a turn of the dispatcher is scheduled
    for it. When its worker asks for more work as it reports (a task alone in its lease), it is
    recorded at once, and that turn is cancelled: it would wake the daemon for nothing, a wake-up
    that cost as much CPU as the rest of a task of 25 ms. An outcome that could not be written keeps
    its turn, and the next outcome gets one of its own."""
    store = Store(tmp_path / "tasks.db")
    service = TaskService(store, Settings(state_dir=tmp_path))

    def settle_turns() -> int:
        scheduled = asyncio.get_running_loop()._scheduled  # the loop's timers: no public view of them
        return sum(1 for h in scheduled if not h.cancelled() and h._callback == service._settle_due)

    async def scenario() -> None:
        refs = [service.submit("noop")["id"] for _ in range(2)]
        first = store.claim_next([], 1.0, 4242)
        assert first is not None
        service.task_finished(first, Outcome(TaskStatus.COMPLETED, started_at=1.0, finished_at=2.0))
        assert settle_turns() == 1

        def no_space(*args: object) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        with monkeypatch.context() as m:
            m.setattr(store, "complete_many", no_space)
            service.worker_idle()  # the turn taken for the worker fails: left to the dispatcher
        assert service.get(refs[0])["status"] == "running"
        assert settle_turns() == 1

        service.worker_idle()
        assert service.get(refs[0])["status"] == "completed"
        assert settle_turns() == 0

        second = store.claim_next([], 3.0, 4242)
        assert second is not None
        service.task_finished(second, Outcome(TaskStatus.COMPLETED, started_at=3.0, finished_at=4.0))
        assert settle_turns() == 1
        service._wake.clear()
        await asyncio.wait_for(service._wake.wait(), 10)  # its turn comes, and wakes the dispatcher
        assert settle_turns() == 0
        service._dispatch_ready()
        assert service.get(refs[1])["status"] == "completed"

    asyncio.run(scenario())
    store.close()


def test_a_worker_is_handed_its_next_task_as_it_nears_the_expected_end_of_its_own(tmp_path: Path):
    """A worker at work is topped up when less than TOP_UP_AHEAD of its lease is left, by the
    expected durations: of the task it is at, what it has still to run, where its start is known.
    A task of 25 ms is topped up near its end, so its worker goes on without waiting for the daemon;
    not at its start, nor once it runs past its expected time (it may run on for long), nor when its
    start is not known. A short task is topped up as it was: what waits behind it goes back if it
    overruns (`test_promises`)."""
    from msearchd.service.dispatch import DURATION_SAMPLES, TOP_UP_AHEAD

    store = Store(tmp_path / "tasks.db")
    service = TaskService(store, Settings(state_dir=tmp_path))
    for _ in range(DURATION_SAMPLES):
        service._durations.record("long", 0.025)
        service._durations.record("short", 0.005)
    assert 0.005 < TOP_UP_AHEAD < 0.025  # the two kinds this test is about
    long_task = store.get(parse_task_id(service.submit("long")["id"]))
    short_task = store.get(parse_task_id(service.submit("short")["id"]))

    class Pool:
        """What the dispatcher reads of the workers: one at work, as `ahead` says."""

        def __init__(self) -> None:
            self.ahead: list[tuple[int, list[object], float | None]] = []

        def work_ahead(self) -> list[tuple[int, list[object], float | None]]:
            return self.ahead

    pool = service.pool = Pool()  # type: ignore[assignment]

    def topped_up(tasks: list[object], elapsed: float | None) -> bool:
        pool.ahead = [(7, tasks, elapsed)]
        return service._running_low() == [7]

    assert topped_up([long_task], 0.015)  # 10 ms left
    assert not topped_up([long_task], 0.002)  # 23 ms left
    assert not topped_up([long_task], None)  # when it started is not known: 25 ms left, it may be
    assert not topped_up([long_task], 0.030)  # past its expected end: it may run on for long
    assert not topped_up([long_task, short_task], 0.008)  # 17 + 5 ms left
    assert topped_up([long_task, short_task], 0.017)  # 8 + 5 ms left
    assert topped_up([short_task], None) and topped_up([short_task], 1.0)  # as before
    store.close()


def test_the_service_keeps_fewer_than_30_attributes_of_its_own(tmp_path: Path):
    """From 30 attributes on, CPython keeps an instance's attributes in a dict of its own, and then
    every `self.method()` of the service misses the interpreter's cache of method lookups, at every
    request. State that only a shared store needs lives in `Peers`; new state belongs with what it
    is about, not in a 30th attribute."""
    service = TaskService(Store(tmp_path / "tasks.db"), Settings(state_dir=tmp_path))
    assert len(vars(service)) < 30, sorted(vars(service))


def test_every_attribute_the_service_sets_is_there_from_its_start(tmp_path: Path):
    """The count above holds for as long as the daemon runs only if no attribute appears later: a
    class default that a method sets on the instance (a count of failures, say) would be a 30th
    attribute from the first time it is set, until a restart."""
    service = TaskService(Store(tmp_path / "tasks.db"), Settings(state_dir=tmp_path))
    set_by_methods: dict[str, str] = {}
    for cls in TaskService.__mro__:
        if not cls.__module__.startswith("msearchd.service"):
            continue
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(cls)))):
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            else:
                continue
            for target in targets:
                for name in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if (
                        isinstance(name, ast.Attribute)
                        and isinstance(name.value, ast.Name)
                        and name.value.id == "self"
                    ):
                        set_by_methods.setdefault(name.attr, cls.__name__)
    assert len(set_by_methods) > 20, set_by_methods  # the scan found the service's own state
    late = {name: where for name, where in set_by_methods.items() if name not in vars(service)}
    assert not late, f"set by methods of these classes, not in __init__: {late}"
