"""Unit tests of the stores, SQLite and PostgreSQL alike: ordering, bulk cancel, dependencies,
persistence. Those that look at SQLite's own statements and files run on SQLite alone."""

from __future__ import annotations

import random
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from msearchd.errors import TooLarge
from msearchd.model import TERMINAL, StopReason, Task, TaskStatus
from msearchd.protocol import pack
from msearchd.selection import Selection
from msearchd.store import AUTOCHECKPOINT, SCHEMA_VERSION, Store, UnusableStore
from msearchd.store.rows import TASK_FIELDS, row_to_task

SQLITE_ONLY = pytest.mark.parametrize("store", ["sqlite"], indirect=True)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        s = Store(tmp_path / "tasks.db")
    else:
        from msearchd.store.postgres import PgStore

        s = PgStore(request.getfixturevalue("fresh_database")())
        s.register(workers=1)  # a daemon claims only once the others know of it
    yield s
    s.close()


def committed_count(store) -> int:
    """The tasks another connection sees: only what is committed."""
    if isinstance(store, Store):
        return sqlite3.connect(store.path).execute("SELECT count(*) FROM tasks").fetchone()[0]
    import psycopg

    with psycopg.connect(store.url) as other:
        return other.execute("SELECT count(*) FROM tasks").fetchone()[0]


def add(store: Store, priority: int = 6, task_type: str = "t", status=TaskStatus.PENDING, deps=()) -> int:
    return store.insert(
        task_type=task_type,
        data={"p": priority},
        priority=priority,
        status=status,
        depends_on=deps,
        created_at=1.0,
    )


def test_reached_counts_the_tasks_found_and_names_those_in_the_statuses(store):
    ids = [add(store) for _ in range(2000)]  # more than one chunk of bind marks
    done = ids[5::400]
    for task_id in done:
        store.update(task_id, status=TaskStatus.COMPLETED)
    store.update(ids[7], status=TaskStatus.RUNNING)
    found, reached = store.reached(ids, TERMINAL)
    assert (found, sorted(reached)) == (2000, done)
    assert store.reached([ids[7], ids[0]], {TaskStatus.RUNNING}) == (2, [ids[7]])
    assert store.reached([ids[0], max(ids) + 1], TERMINAL) == (1, [])


def test_claim_order_is_priority_then_submission(store):
    ids = [add(store, p) for p in (5, 1, 5, 0, 1)]
    order = []
    while (task := store.claim_next([], 2.0, worker_pid=9)) is not None:
        order.append(task.id)
        assert (task.status, task.attempts, task.worker_pid, task.started_at) == (
            TaskStatus.RUNNING,
            1,
            9,
            2.0,
        )
    assert order == [ids[3], ids[1], ids[4], ids[0], ids[2]]


def test_claim_skips_excluded_types_and_blocked_tasks(store):
    heavy = add(store, 0, "heavy")
    add(store, 0, "light", status=TaskStatus.BLOCKED)
    light = add(store, 9, "light")
    claimed = store.claim_next(["heavy"], 1.0, 1)
    assert claimed is not None and claimed.id == light
    claimed = store.claim_next([], 1.0, 1)
    assert claimed is not None and claimed.id == heavy
    assert store.claim_next([], 1.0, 1) is None


def test_claim_skips_types_that_an_excluded_glob_matches(store):
    embed = add(store, 0, "file_embed_video")
    thumb = add(store, 1, "thumbnail_generate")
    scan = add(store, 9, "file_scan")
    claimed = store.claim_next(["file_embed_*", "thumb?ail_generate"], 1.0, 1)
    assert claimed is not None and claimed.id == scan
    assert store.claim_next(["file_embed_[!v]*"], 1.0, 1).id == embed
    assert store.claim_next(["file_*"], 1.0, 1).id == thumb


def test_a_bulk_request_cancels_the_waiting_tasks_it_names_and_shows_in_their_history(store):
    a = [add(store, 3, "a") for _ in range(3)]
    b = add(store, 3, "b")
    running = add(store, 3, "a")
    store.update(running, status=TaskStatus.RUNNING)
    request = store.add_bulk_request(5.0, "cancel_requested", {"by": "cancel-by-type"}, 1000, 42)
    assert store.cancel_for_request([*a, running], 5.0, request) == a
    assert store.cancel_for_request(a, 5.0, request) == []  # cancelled already
    assert store.events(a[2]) == [
        {"time": 5.0, "event": "cancel_requested", "by": "cancel-by-type", "uid": 1000, "pid": 42}
    ]
    assert store.events(b) == []
    assert store.statuses([b, running]) == {b: TaskStatus.PENDING, running: TaskStatus.RUNNING}
    cancelled = store.get(a[0])
    assert cancelled is not None
    assert (cancelled.finished_at, cancelled.stop_reason) == (5.0, "not_started")


def test_dependencies_and_handover(store):
    root = add(store)
    child = add(store, status=TaskStatus.BLOCKED, deps=[root])
    other = add(store)
    grandchild = add(store, status=TaskStatus.BLOCKED, deps=[child, other])
    assert store.dependents(root) == [child]
    assert store.dependency_statuses(grandchild) == [(child, TaskStatus.BLOCKED), (other, TaskStatus.PENDING)]
    replacement = add(store)
    assert store.replace_dependency(root, replacement) == [child]
    assert store.dependents(root) == []
    task = store.get(child)
    assert task is not None and task.depends_on == [replacement]


def test_transaction_rolls_back(store):
    with pytest.raises(RuntimeError), store.transaction():
        add(store)
        raise RuntimeError
    assert store.count() == 0


def open_traced(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Store, list[str]]:
    """A store opened with every statement of its connection recorded, from the first."""
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args, **kwargs) -> sqlite3.Connection:
        db = connect(*args, **kwargs)
        db.set_trace_callback(statements.append)
        return db

    with monkeypatch.context() as patch:
        patch.setattr(sqlite3, "connect", traced)
        store = Store(path)
    return store, statements


def checked(statements: list[str]) -> bool:
    return any("quick_check" in s for s in statements)


def test_a_store_closed_cleanly_opens_without_checking_every_page(tmp_path: Path, monkeypatch):
    store = Store(tmp_path / "tasks.db")
    add(store)
    store.close()
    for _ in range(2):  # and again after a clean close of the store opened so
        store, statements = open_traced(tmp_path / "tasks.db", monkeypatch)
        assert not checked(statements)
        add(store)
        store.close()
    store = Store(tmp_path / "tasks.db")
    assert store.count() == 3
    store.close()


def test_a_store_not_closed_cleanly_is_checked_at_open(tmp_path: Path, monkeypatch):
    path = tmp_path / "tasks.db"
    store = Store(path)
    add(store)
    store.close()
    # A daemon opens the store closed cleanly, commits, and is killed.
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, sys\n"
            "from msearchd.model import TaskStatus\n"
            "from msearchd.store import Store\n"
            "s = Store(sys.argv[1])\n"
            "s.insert(task_type='t', data={}, priority=6, status=TaskStatus.PENDING, created_at=1.0)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n",
            str(path),
        ],
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL
    store, statements = open_traced(path, monkeypatch)
    assert checked(statements)
    assert store.count() == 2
    store.close()
    # Closed cleanly, then written by something else: checked too.
    other = sqlite3.connect(path)
    other.execute("UPDATE tasks SET priority = 1")
    other.commit()
    other.close()
    store, statements = open_traced(path, monkeypatch)
    assert checked(statements)
    store.close()


def test_data_and_state_survive_reopen(tmp_path: Path):
    path = tmp_path / "tasks.db"
    s = Store(path)
    task_id = s.insert(
        task_type="x",
        data={"nested": {"list": [1, "two"]}, "bytes": b"\x00"},
        priority=4,
        status=TaskStatus.PENDING,
        created_at=3.5,
    )
    s.update(task_id, priority=2)
    s.close()
    s = Store(path)
    task = s.get(task_id)
    assert task is not None
    assert (task.data, task.priority, task.created_at) == (
        {"nested": {"list": [1, "two"]}, "bytes": b"\x00"},
        2,
        3.5,
    )
    s.close()


def test_newer_schema_is_refused(tmp_path: Path):
    import sqlite3

    path = tmp_path / "tasks.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    expected = f"written by a newer msearchd (schema 99; this one knows up to {SCHEMA_VERSION})"
    with pytest.raises(UnusableStore, match=re.escape(expected)):
        Store(path)


def test_progress_is_saved_only_for_running_tasks(store):
    running = add(store)
    store.update(running, status=TaskStatus.RUNNING)
    done = add(store)
    store.update(done, status=TaskStatus.COMPLETED, progress=1.0)
    store.save_progress([(running, 0.5, "half"), (done, 0.1, "late")])
    r, d = store.get(running), store.get(done)
    assert r is not None and d is not None
    assert (r.progress, r.current_operation) == (0.5, "half")
    assert (d.progress, d.current_operation) == (1.0, None)


def test_insert_many_gives_consecutive_ids_and_keeps_dependencies(store):
    before = add(store)
    specs = [
        {
            "task_type": "t",
            "data": {"i": i},
            "priority": i % 12,
            "status": TaskStatus.PENDING,
            "depends_on": [],
            "blocked_reason": None,
        }
        for i in range(50)
    ]
    specs[7] = {**specs[7], "status": TaskStatus.BLOCKED, "depends_on": [before], "blocked_reason": "waiting"}
    ids = store.insert_many(specs, 9.0)
    assert ids == list(range(before + 1, before + 51))
    tasks = {t.id: t for t in store.get_many(ids)}
    assert [tasks[i].data for i in ids] == [{"i": i} for i in range(50)]
    assert tasks[ids[7]].depends_on == [before] and tasks[ids[7]].status is TaskStatus.BLOCKED
    assert store.dependents(before) == [ids[7]]
    assert store.insert_many([], 9.0) == []


def test_list_merges_statuses_in_id_order(store):
    ids = [add(store) for _ in range(6)]
    for i in ids[::2]:
        store.update(i, status=TaskStatus.FAILED)
    both = store.list([TaskStatus.PENDING.value, TaskStatus.FAILED.value], limit=4, offset=1)
    assert [t.id for t in both] == ids[1:5]
    assert [t.id for t in store.list([TaskStatus.FAILED.value])] == ids[::2]


@SQLITE_ONLY
def test_pages_of_several_statuses_match_the_whole_list(store):
    rng = random.Random(5)
    states = [TaskStatus.PENDING, TaskStatus.FAILED, TaskStatus.COMPLETED, TaskStatus.CANCELLED]
    rows = []
    for _ in range(300):
        task_type = rng.choice(["a", "b"])
        task_id = add(store, task_type=task_type)
        status = rng.choice(states)
        store.update(task_id, status=status)
        rows.append((task_id, task_type, status.value))
    wanted = [TaskStatus.FAILED.value, TaskStatus.PENDING.value, TaskStatus.CANCELLED.value]
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    for t_type, statuses in ((None, wanted), ("a", wanted), ("b", None)):
        expected = [i for i, t, s in rows if (statuses is None or s in statuses) and t_type in (None, t)]
        for offset, limit in ((0, 10), (7, 50), (150, 100), (len(expected) - 3, 10), (len(expected) + 5, 10)):
            page = store.list(statuses, t_type, limit, offset)
            assert [t.id for t in page] == expected[offset : offset + limit], (t_type, offset, limit)
            assert all(statuses is None or t.status.value in statuses for t in page)
    store._db.set_trace_callback(None)
    for sql in statements:  # walks indexes in id order: nothing is sorted
        plan = " | ".join(row[-1] for row in store._db.execute("EXPLAIN QUERY PLAN " + sql))
        assert "TEMP B-TREE" not in plan, (sql, plan)


def test_update_with_expected_status(store):
    task_id = add(store)
    assert store.update(task_id, expect=["running"], priority=1) is False
    assert store.get(task_id).priority == 6
    assert store.update(task_id, expect=["pending", "blocked"], priority=1) is True
    assert store.update(999, priority=1) is False
    changed = store.update_returning(task_id, expect=["pending"], priority=2, error="x")
    assert changed is not None and (changed.priority, changed.error) == (2, "x")
    assert store.update_returning(task_id, expect=["failed"], priority=3) is None


def test_a_task_reads_the_same_whole_or_in_its_public_shape(store):
    """`get_wire` is `get(...).to_wire()` (with its host where several daemons share the store),
    down to the order of its fields on the wire, in every state a task can be in."""
    first = add(store, priority=3, task_type="a")
    blocked = add(store, status=TaskStatus.BLOCKED, deps=[first])
    running, completed, failed, cancelled = (add(store, task_type="b") for _ in range(4))
    retry = store.insert(
        task_type="b", data={}, priority=2, status=TaskStatus.PENDING, retry_of=failed, created_at=1.0
    )
    with store.transaction():
        store.update(running, status=TaskStatus.RUNNING, started_at=2.0, worker_pid=7, progress=0.5)
        store.update(completed, status=TaskStatus.COMPLETED, finished_at=3.0, result={"n": [1]}, logged=True)
        store.update(failed, status=TaskStatus.FAILED, error="boom", retried_as=retry, attempts=2)
        store.update(cancelled, status=TaskStatus.CANCELLED, stop_reason=StopReason.SIGTERM)
        store.update(blocked, blocked_reason="waiting for task_1")
    for task_id in (first, blocked, running, completed, failed, cancelled, retry):
        whole = store.get(task_id).to_wire()
        if store.shared:
            whole["host"] = store.get(task_id).host
        shape = store.get_wire(task_id)
        assert shape == whole
        assert pack(shape) == pack(whole)
    assert store.get_wire(retry)["retry_of"] == f"task_{failed}"
    assert store.get_wire(blocked)["depends_on"] == [f"task_{first}"]
    assert store.get_wire(999) is None


def test_a_priority_change_and_a_cancel_of_one_task_touch_only_a_waiting_one(store):
    pending, blocked, running, done = (add(store) for _ in range(4))
    with store.transaction():
        store.update(blocked, status=TaskStatus.BLOCKED)
        store.update(running, status=TaskStatus.RUNNING)
        store.update(done, status=TaskStatus.COMPLETED)
        for task_id in (running, done, 999):
            assert store.change_priority(task_id, 1, 6, 5.0, 1000, 42) is False
            assert store.cancel_one(task_id, 5.0, 6.0, "cancel", 1000, 42) is False
        assert store.change_priority(pending, 1, 6, 5.0, 1000, 42) is True
        assert store.change_priority(blocked, 0, 6, 5.0, 1000, 42) is True
    assert [store.get(i).priority for i in (pending, blocked, running, done)] == [1, 0, 6, 6]
    assert store.events(running) == store.events(done) == []  # a refused write leaves no history
    assert store.events(pending) == [
        {"time": 5.0, "event": "priority_changed", "old": 6, "new": 1, "uid": 1000, "pid": 42}
    ]
    with store.transaction():
        assert store.cancel_one(blocked, 7.0, 8.0, "cancel", 1000, 43) is True
        assert store.cancel_one(blocked, 7.0, 8.0, "cancel", 1000, 43) is False  # cancelled now
    task = store.get(blocked)
    assert (task.status, task.finished_at, task.stop_reason) == (
        TaskStatus.CANCELLED,
        8.0,
        StopReason.NOT_STARTED,
    )
    assert task.blocked_reason is None and task.priority == 0
    assert store.events(blocked)[-1] == {
        "time": 7.0,
        "event": "cancel_requested",
        "by": "cancel",
        "running": False,
        "uid": 1000,
        "pid": 43,
    }


def test_after_commit_runs_only_once_committed(store):
    seen: list[str] = []
    store.after_commit(lambda: seen.append("now"))
    with store.transaction():
        store.after_commit(lambda: seen.append("committed"))
        with store.transaction():  # nested: joins the outer one
            store.after_commit(lambda: seen.append("inner"))
        assert seen == ["now"]
    assert seen == ["now", "committed", "inner"]
    with pytest.raises(RuntimeError), store.transaction():
        store.after_commit(lambda: seen.append("rolled back"))
        raise RuntimeError
    with store.transaction():
        pass
    assert seen == ["now", "committed", "inner"]


def test_a_nested_transaction_is_part_of_the_outer_one_whatever_the_outer_one_is(store):
    """A nested transaction that fails, its error let through, takes its outer one with it: alone, or
    a savepoint of a group (which rolls back alone). The next transaction starts afresh."""
    with pytest.raises(RuntimeError), store.transaction():
        add(store)
        with store.transaction():
            add(store)
            raise RuntimeError
    assert store.count() == 0 and not store.transaction_open()
    with store.group():
        with store.transaction():
            kept = add(store)
        with pytest.raises(RuntimeError), store.transaction():  # a savepoint of the group's transaction
            add(store)
            with store.transaction():
                add(store)
            raise RuntimeError
        with store.transaction(), store.transaction():
            also = add(store)
    assert not store.transaction_open()
    assert sorted(t.id for t in store.list()) == [kept, also]


@SQLITE_ONLY
def test_claiming_and_listing_never_sort_the_queue(store):
    """Picking the next task or a page of one status must walk an index, not sort every matching row
    (that cost 250 ms a claim with a million pending tasks)."""
    for p in (3, 1, 2):
        add(store, p)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    assert store.claim_next([], 1.0, 1) is not None
    assert store.claim_next(["x"], 1.0, 1) is not None
    store.list([TaskStatus.PENDING.value], limit=5)
    store.list([TaskStatus.PENDING.value], task_type="t", limit=5)
    store.list(task_type="t", limit=5)
    store._db.set_trace_callback(None)
    assert len(statements) == 4 + len(TaskStatus) + 1  # a type alone: a range per status, then the page
    for sql in statements:
        plan = " | ".join(row[-1] for row in store._db.execute("EXPLAIN QUERY PLAN " + sql))
        assert "TEMP B-TREE" not in plan, (sql, plan)


def test_group_commits_once_and_each_transaction_rolls_back_alone(store):
    seen: list[str] = []
    with store.group():
        kept = add(store)
        store.after_commit(lambda: seen.append("kept"))
        with pytest.raises(RuntimeError), store.transaction():
            store.update(kept, priority=1)
            store.after_commit(lambda: seen.append("rolled back"))
            raise RuntimeError
        with store.transaction():
            second = add(store, deps=[kept])
            store.after_commit(lambda: seen.append("second"))
        assert committed_count(store) == 0  # nothing durable yet
        assert seen == []  # nobody hears of a change before it is durable
    assert committed_count(store) == 2
    assert seen == ["kept", "second"]
    assert store.get(kept).priority == 6  # the failed transaction's update is gone, the rest kept
    assert store.get(second).depends_on == [kept]


@SQLITE_ONLY
def test_a_group_that_fails_writes_nothing_and_one_that_reads_commits_nothing(store):
    seen: list[str] = []
    with pytest.raises(RuntimeError), store.group():
        add(store)
        store.after_commit(lambda: seen.append("lost"))
        raise RuntimeError
    assert store.count() == 0 and seen == []
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    with store.group():
        store.count()
    store._db.set_trace_callback(None)
    assert not any(s.split()[0] in ("BEGIN", "COMMIT") for s in statements)
    with store.group():  # usable again after the failure
        add(store)
    assert store.count() == 1


@SQLITE_ONLY
def test_a_group_whose_first_transaction_fails_still_commits_the_next(store):
    kept = add(store)
    seen: list[str] = []
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    with store.group():
        with pytest.raises(RuntimeError), store.transaction():
            store.update(kept, priority=1)
            store.after_commit(lambda: seen.append("rolled back"))
            raise RuntimeError
        with store.transaction():
            store.update(kept, priority=2)
            store.after_commit(lambda: seen.append("second"))
        with store.transaction():
            store.update(kept, priority=3)
    store._db.set_trace_callback(None)
    assert store.get(kept).priority == 3 and seen == ["second"]
    # A lone request in a group runs as the group's transaction itself, with no savepoint.
    statements.clear()
    store._db.set_trace_callback(statements.append)
    with store.group(), store.transaction():
        store.update(kept, priority=4)
    store._db.set_trace_callback(None)
    assert [s.split()[0] for s in statements] == ["BEGIN", "UPDATE", "COMMIT"]
    assert sqlite3.connect(store.path).execute("SELECT priority FROM tasks").fetchone()[0] == 4


def wal_pages(store: Store) -> int:
    return Path(store.path + "-wal").stat().st_size // 4096


@SQLITE_ONLY
def test_paused_checkpoints_let_the_wal_grow_until_a_checkpoint_from_another_thread(store):
    import threading

    def commits(n: int) -> None:
        for i in range(n):
            with store.transaction():
                add(store, priority=i % 12)

    commits(AUTOCHECKPOINT)  # at least two pages a commit: checkpointed, the WAL restarts
    normal = wal_pages(store)
    assert normal < 2 * AUTOCHECKPOINT
    store.pause_checkpoints()
    store.pause_checkpoints()  # pauses nest
    commits(AUTOCHECKPOINT)
    grown = wal_pages(store)
    assert grown > normal + AUTOCHECKPOINT  # none copied back
    store.resume_checkpoints()
    commits(500)
    assert wal_pages(store) > grown  # still paused: one pause is left
    worker = threading.Thread(target=store.checkpoint)
    worker.start()
    commits(200)  # the loop's connection keeps writing meanwhile
    worker.join()
    store.resume_checkpoints()
    size = wal_pages(store)
    commits(AUTOCHECKPOINT)  # a WAL never checkpointed again would grow past its size
    assert wal_pages(store) < size + 100
    count = sqlite3.connect(store.path).execute("SELECT count(*) FROM tasks").fetchone()[0]
    assert count == 3 * AUTOCHECKPOINT + 700


@SQLITE_ONLY
def test_a_commit_that_fails_announces_nothing_and_leaves_no_transaction(store):
    real = store._db

    class CommitFails:  # what a full disk or an I/O error does to the COMMIT
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            if sql == "COMMIT":
                raise sqlite3.OperationalError("disk I/O error")
            return real.execute(sql, *args)

    seen: list[str] = []
    store._db = CommitFails()
    with pytest.raises(sqlite3.OperationalError), store.transaction():
        add(store)
        store.after_commit(lambda: seen.append("announced"))
    store._db = real
    assert not real.in_transaction
    with store.transaction():  # the store goes on
        kept = add(store)
    assert seen == []
    assert [t.id for t in store.list()] == [kept]


def test_statements_bind_no_more_ids_than_old_sqlite_builds_allow(store):
    # SQLite builds before 3.32 allow 999 variables a statement (32,766 since): a hand-over of more
    # dependents than that failed with "too many SQL variables". PostgreSQL hands over in chunks alike.
    if isinstance(store, Store):
        store._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    root = add(store)
    with store.transaction():
        dependents = store.insert_many(
            [
                {
                    "task_type": "t",
                    "data": {},
                    "priority": 6,
                    "status": TaskStatus.BLOCKED,
                    "depends_on": [root],
                    "blocked_reason": None,
                }
                for _ in range(2500)
            ],
            1.0,
        )
    new = add(store)
    moved: list[int] = []
    while part := store.replace_dependency(root, new):
        moved += part
    assert moved == dependents
    assert store.dependents(new, limit=10, after=dependents[4]) == dependents[5:15]
    assert [t.id for t in store.get_many(dependents)] == dependents
    assert set(store.statuses(dependents).values()) == {TaskStatus.BLOCKED}
    assert store.with_dependents([new, *dependents]) == [new]
    assert store.cancel_waiting(dependents, 2.0) == dependents


def test_tasks_read_with_a_bound_on_their_bytes_are_refused_once_over_it(store):
    """`list` and `get_many` with `max_bytes` read whole tasks only while their data and results fit,
    with 512 bytes each for the rest: past it, TooLarge, so that an answer too large to send is never
    built. It says how many fitted."""
    ids = [
        store.insert(
            task_type="t", data={"blob": "x" * 1000}, priority=6, status=TaskStatus.PENDING, created_at=1.0
        )
        for _ in range(20)
    ]
    store.claim_ids([ids[0]], worker_pid=9)
    store.complete_many([(None, 2.0, {"text": "y" * 3000}, None, None, ids[0])])
    # 1,009 bytes of data each, 3,009 of result for the first: 33,429 bytes with 512 for each task.
    assert sorted(t.id for t in store.get_many(ids, max_bytes=33_429)) == ids
    assert [t.id for t in store.list(limit=20, max_bytes=33_429)] == ids
    assert [t.id for t in store.list(["pending", "completed"], limit=20, max_bytes=33_429)] == ids
    for max_bytes, fits in ((33_428, 19), (30_000, 17), (3_500, 0)):
        with pytest.raises(TooLarge, match=f"more than {max_bytes:,} bytes"):
            store.get_many(ids, max_bytes=max_bytes)
        with pytest.raises(TooLarge) as listed:
            store.list(limit=20, max_bytes=max_bytes)
        assert listed.value.fits == fits  # in id order: the first, with its result, then the others
        with pytest.raises(TooLarge):
            store.list(["pending", "completed"], limit=20, max_bytes=max_bytes)
    assert [t.id for t in store.list(limit=2, offset=1, max_bytes=3_500)] == ids[1:3]
    assert len(store.get_many(ids)) == 20  # no bound: every task


def test_prunable_tasks_are_old_or_beyond_the_count_and_referenced_by_nothing_unfinished(store):
    with store.transaction():
        old = add(store, status=TaskStatus.COMPLETED)
        kept_by_dependent = add(store, status=TaskStatus.FAILED)
        add(store, status=TaskStatus.BLOCKED, deps=[kept_by_dependent])
        newer = add(store, status=TaskStatus.CANCELLED)
        store.update(old, finished_at=10.0)
        store.update(kept_by_dependent, finished_at=10.0)
        store.update(newer, finished_at=100.0)
        store.add_events([(old, 10.0, "cancel_requested", None, None, None)])
    assert store.prunable(50.0, -1, 10) == [old]  # by age
    assert store.prunable(0.0, 0, 10) == [old, newer]  # by count: none kept
    assert store.prunable(0.0, 1, 1) == [old]  # the newest finished one kept; a limit
    with store.transaction():
        assert store.prune([old, kept_by_dependent]) == [old]  # checked again
    assert store.get(old) is None
    assert store.events(old) == []
    assert store.get(kept_by_dependent) is not None


def test_bulk_requests_are_listed_and_removed_once_stale(store):
    with store.transaction():
        used = store.add_bulk_request(1.0, "cancel_requested", {"by": "cancel-all"}, None, None)
        marker = store.add_bulk_request(1.0, "dependents_pending", {"task": 7}, None, None)
        stale = store.add_bulk_request(1.0, "cancel_requested", {"by": "cancel-all"}, None, None)
        add(store)  # pending, cancelled by nothing
        task = add(store)
        store.cancel_for_request([task], 2.0, used)
    assert store.bulk_requests("dependents_pending") == [(marker, {"task": 7})]
    assert store.stale_bulk_requests(5.0, ["dependents_pending"]) == [stale]
    assert store.stale_bulk_requests(0.5, ["dependents_pending"]) == []
    with store.transaction():
        store.delete_events([marker])
    assert store.bulk_requests("dependents_pending") == []


@SQLITE_ONLY
def test_the_pruner_reads_the_tasks_for_stale_bulk_requests_only_when_there_are_old_ones(
    store, monkeypatch: pytest.MonkeyPatch
):
    """Which tasks a request points at is found by reading every task: 130 ms a million tasks, in
    every pass of the pruner, when it was read before the requests."""
    import msearchd.store.sqlite.maintenance as maintenance

    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
        db = connect(*args, **kwargs)  # type: ignore[arg-type]
        db.set_trace_callback(statements.append)
        return db

    monkeypatch.setattr(maintenance.sqlite3, "connect", traced)
    with store.transaction():
        request = store.add_bulk_request(10.0, "cancel_requested", {"by": "cancel-all"}, None, None)
        add(store)
    assert store.stale_bulk_requests(5.0, []) == []  # none so old
    assert statements and not [s for s in statements if "FROM tasks" in s], statements
    assert store.stale_bulk_requests(20.0, []) == [request]
    assert [s for s in statements if "FROM tasks" in s]


def test_a_completed_task_keeps_what_its_handler_returned(store):
    with_result, without = add(store), add(store)
    store.claim_ids([with_result, without], worker_pid=9)
    store.complete_many(
        [
            (2.0, 3.0, {"files": ["a", "b"], "n": 2}, None, None, with_result),
            (None, 3.0, None, None, None, without),
        ]
    )
    done = store.get(with_result)
    assert (done.status, done.started_at, done.finished_at) == (TaskStatus.COMPLETED, 2.0, 3.0)
    assert done.result == {"files": ["a", "b"], "n": 2}
    assert store.get(without).status == TaskStatus.COMPLETED and store.get(without).result is None
    assert store.update(without, result={"later": True}) is True
    assert store.get_many([without])[0].result == {"later": True}


def test_a_finished_task_keeps_whether_its_worker_saw_a_log(store):
    logged, silent, unknown, failed = (add(store) for _ in range(4))
    store.claim_ids([logged, silent, unknown, failed], worker_pid=9)
    assert store.get(logged).logged is None  # running: nothing said yet
    store.complete_many([(2.0, 3.0, None, True, None, logged), (2.0, 3.0, None, False, None, silent)])
    store.complete_many([(2.0, 3.0, None, None, None, unknown)])
    assert store.update(failed, status=TaskStatus.FAILED, logged=True) is True
    got = {t.id: t.logged for t in store.get_many([logged, silent, unknown, failed])}
    assert got == {logged: True, silent: False, unknown: None, failed: True}
    assert all(v is None or type(v) is bool for v in got.values())


def test_a_completed_task_keeps_its_last_operation(store):
    reported, saved, quiet = (add(store) for _ in range(3))
    store.claim_ids([reported, saved, quiet], worker_pid=9)
    store.save_progress([(saved, 0.5, "flushed earlier")])
    store.complete_many(
        [
            (2.0, 3.0, None, None, "last step", reported),
            (2.0, 3.0, None, None, None, saved),
            (2.0, 3.0, None, None, None, quiet),
        ]
    )
    got = {
        t.id: (t.status, t.progress, t.current_operation) for t in store.get_many([reported, saved, quiet])
    }
    assert got == {
        reported: (TaskStatus.COMPLETED, 1.0, "last step"),
        saved: (TaskStatus.COMPLETED, 1.0, "flushed earlier"),  # none told at the end: the one saved
        quiet: (TaskStatus.COMPLETED, 1.0, None),
    }


def test_newest_first_lists_the_same_tasks_in_descending_id_order(store):
    ids = [add(store, task_type="ab"[i % 2]) for i in range(8)]
    for i in ids[::3]:
        store.update(i, status=TaskStatus.FAILED)
    for statuses, task_type in ((None, None), (["pending", "failed"], None), (["pending"], "a"), (None, "b")):
        oldest_first = [t.id for t in store.list(statuses, task_type, limit=100)]
        assert oldest_first == sorted(oldest_first) and oldest_first
        newest = [t.id for t in store.list(statuses, task_type, limit=3, offset=1, newest_first=True)]
        assert newest == oldest_first[::-1][1:4], (statuses, task_type)


def keyed(store, key: str, task_type: str = "t", deps=()) -> int | None:
    return store.insert_keyed(
        key,
        task_type=task_type,
        data={"k": key},
        priority=6,
        status=TaskStatus.PENDING,
        depends_on=deps,
        created_at=1.0,
        submitter=(1000, 42),
    )


def test_a_key_is_held_by_one_unfinished_task_at_a_time(store):
    first = add(store)
    held = keyed(store, "report", deps=[first])
    assert held is not None and keyed(store, "report") is None
    assert store.max_id() == held  # the refused insert wrote nothing
    assert store.unfinished_with_key("report").id == held
    assert store.get(held).depends_on == [first]
    assert store.submitter(held) == (1000, 42)
    assert store.keys([first, held]) == {held: "report"}
    assert store.cancel_waiting([held], 2.0) == [held]
    assert store.unfinished_with_key("report") is None
    again = keyed(store, "report")
    assert again is not None and again > held
    assert store.keys([held, again]) == {held: "report", again: "report"}


def test_a_selection_window_tests_ids_types_priorities_and_times_in_the_store(store):
    ids = [
        store.insert(task_type=t, data={"i": n}, priority=p, status=TaskStatus.PENDING, created_at=float(n))
        for n, (t, p) in enumerate(
            [("scan", 1), ("scan.big", 5), ("index", 9), ("scan.small", 3), ("x[1]", 4)]
        )
    ]
    store.update(ids[3], status=TaskStatus.FAILED)
    store.update(ids[4], status=TaskStatus.FAILED, retried_as=ids[0])
    everything = ["pending", "failed"]

    def window(selection: Selection, statuses=everything, after=0, up_to=ids[-1], **kw) -> list:
        return store.select_window(selection, statuses, after, up_to, **kw)

    assert [r[0] for r in window(Selection())] == ids
    assert window(Selection(ids=(ids[1],)))[0][:4] == (ids[1], "scan.big", "pending", 5)
    assert window(Selection(ids=(ids[1],)))[0][4] is None
    assert window(Selection(ids=(ids[1],)), with_data=True)[0][4] == {"i": 1}
    assert [r[0] for r in window(Selection(types=("scan.*",)))] == [ids[1], ids[3]]
    assert [r[0] for r in window(Selection(types=("index", "scan.s?al[kl]")))] == [ids[2], ids[3]]
    assert [r[0] for r in window(Selection(types=("x[[]1]",)))] == [ids[4]]
    assert [r[0] for r in window(Selection(types=("scan",)))] == [ids[0]]
    assert [r[0] for r in window(Selection(priority=(3, 5)))] == [ids[1], ids[3], ids[4]]
    assert [r[0] for r in window(Selection(created_before=2.0, created_after=1.0))] == [ids[1]]
    assert [r[0] for r in window(Selection(), statuses=["failed"], not_retried=True)] == [ids[3]]
    assert [r[0] for r in window(Selection(), after=ids[0], up_to=ids[2])] == [ids[1], ids[2]]
    assert window(Selection(ids=(ids[4],)), up_to=ids[3]) == []


def test_a_type_glob_selects_in_the_store_what_it_selects_in_python(store):
    """Each store's translation of a glob (GLOB, a regex) agrees with fnmatch, which tests tasks read
    one by one: negated sets `[!...]`, ranges backwards or in a row, `]` and `-` in sets."""
    types = ["a", "b", "x", "ax", "bx", "xa", "a-b", "a.b", "a:b", "a_b", "A", "Z9", "-", "!", "ab.x"]
    ids = {add(store, task_type=t): t for t in types}
    globs = ["[!x]", "a[!x]", "[!a-c]*", "[z-a]", "[!z-a]", "[a-c-e]", "[]a]*", "[!]a]", "[a-]", "[--9]"]
    globs += ["[!-]*", "*[!.]", "[-]", "[!!]", "[!]", "a[", "[!a-b-x]*", "*[.:_]*", "[A-Z]*", "[!A-Za-z]*"]
    rng = random.Random(7)
    globs += ["".join(rng.choice("ab-x.[]!*?") for _ in range(rng.randint(1, 6))) for _ in range(300)]
    for glob in globs:
        selection = Selection(types=(glob,))
        found = [r[0] for r in store.select_window(selection, ["pending"], 0, max(ids))]
        expected = [i for i, t in ids.items() if selection.holds(i, t, "pending", 6, 1.0, {})]
        assert found == expected, glob


class Undone(Exception):
    """Raised inside a transaction to roll it back."""


def test_a_window_cancel_takes_the_waiting_tasks_a_window_read_selects_and_stops_at_its_limit(store):
    """`cancel_window` is `select_window` then `cancel_for_request` without reading rows out: the same
    tasks, the same fields written, and at most `limit` of them, the first by id, saying where it
    stopped; whether it is asked for their ids or only for how many."""
    ids = [
        store.insert(task_type=t, data={"i": n}, priority=p, status=s, created_at=float(n))
        for n, (t, p, s) in enumerate(
            [
                ("scan", 1, TaskStatus.PENDING),
                ("scan.big", 5, TaskStatus.BLOCKED),
                ("index", 9, TaskStatus.PENDING),
                ("scan.small", 3, TaskStatus.PENDING),
                ("scan", 4, TaskStatus.PENDING),
                ("scan", 4, TaskStatus.PENDING),
                ("scan", 2, TaskStatus.PENDING),
            ]
        )
    ]
    store.claim_ids([ids[5]], worker_pid=9)  # running: no window cancel takes it
    store.update(ids[6], status=TaskStatus.COMPLETED)
    waiting = ["pending", "blocked"]
    before = store.statuses(ids)

    def cancel(selection: Selection, statuses, after, up_to, limit, with_ids: bool) -> tuple:
        """A window cancel, rolled back after: how many, the ids it gave, the tasks it changed, the
        last id it went through."""
        with pytest.raises(Undone), store.transaction():
            request = store.add_bulk_request(3.0, "cancel_requested", {"by": "window"}, 1000, 42)
            count, given, last = store.cancel_window(
                selection, statuses, after, up_to, limit, 3.0, request, ids=with_ids
            )
            done = sorted(i for i, s in store.statuses(ids).items() if s != before[i])
            tasks = store.get_many(done)
            fields = {(t.status, t.finished_at, t.stop_reason, t.blocked_reason) for t in tasks}
            history = {i: [e["by"] for e in store.events(i)] for i in done}
            raise Undone
        assert fields == ({(TaskStatus.CANCELLED, 3.0, StopReason.NOT_STARTED, None)} if done else set())
        assert history == {i: ["window"] for i in done}  # each points at the request
        assert store.statuses(ids) == before
        assert count == len(done)
        assert given == (done if with_ids else [])
        return done, last

    def both(selection: Selection, statuses=waiting, after=0, up_to=ids[-1], limit=100) -> tuple:
        """What a window read selects, and what a window cancel cancels, asked for the ids or not."""
        read = [r[0] for r in store.select_window(selection, statuses, after, up_to)][:limit]
        done, last = cancel(selection, statuses, after, up_to, limit, with_ids=True)
        assert cancel(selection, statuses, after, up_to, limit, with_ids=False) == (done, last)
        return read, done, last

    for selection in [
        Selection(),
        Selection(types=("scan",)),
        Selection(types=("scan.*",)),
        Selection(types=("index", "scan.s?al[kl]")),
        Selection(priority=(3, 5)),
        Selection(created_before=4.0, created_after=1.0),
        Selection(ids=(ids[2], ids[5], ids[6])),
    ]:
        read, done, last = both(selection)
        assert done == read and last == ids[-1], selection
    assert both(Selection(types=("scan",)))[1] == [ids[0], ids[4]]
    assert both(Selection(), statuses=["blocked"])[1] == [ids[1]]
    assert both(Selection(), statuses=["running", "completed"])[1:] == ([], ids[-1])  # waiting ones only
    assert both(Selection(), after=ids[0], up_to=ids[2])[1:] == ([ids[1], ids[2]], ids[2])
    assert both(Selection(), limit=2)[1:] == ([ids[0], ids[1]], ids[1])  # stopped at the second
    assert both(Selection(types=("scan",)), limit=2)[1:] == ([ids[0], ids[4]], ids[4])
    assert both(Selection(types=("scan",)), after=ids[0], limit=2)[1:] == ([ids[4]], ids[-1])
    assert both(Selection(ids=(ids[4],)), up_to=ids[3])[1:] == ([], ids[3])


def test_the_tasks_a_request_cancelled_that_waiting_tasks_depend_on_are_found_by_window(store):
    """What a window cancel that gave no ids needs to cascade: of the tasks in the window that this
    request cancelled, those some task still waiting depends on."""
    roots = [add(store) for _ in range(4)]
    blocked = add(store, status=TaskStatus.BLOCKED, deps=[roots[0]])
    ended = add(store, status=TaskStatus.BLOCKED, deps=[roots[1]])
    store.update(ended, status=TaskStatus.CANCELLED)
    add(store, status=TaskStatus.BLOCKED, deps=[roots[2]])
    pending = add(store, deps=[roots[3]])
    with store.transaction():
        request = store.add_bulk_request(3.0, "cancel_requested", {"by": "window"}, 1000, 42)
        other = store.add_bulk_request(3.0, "cancel_requested", {"by": "window"}, 1000, 42)
        assert store.cancel_for_request([roots[0], roots[1], roots[3]], 3.0, request) == [
            roots[0],
            roots[1],
            roots[3],
        ]
        assert store.cancel_for_request([roots[2]], 3.0, other) == [roots[2]]
    # roots[1]'s dependent has ended; roots[2] was another request's
    assert store.cancelled_with_dependents(request, 0, pending) == [roots[0], roots[3]]
    assert store.cancelled_with_dependents(request, roots[0], pending) == [roots[3]]
    assert store.cancelled_with_dependents(request, 0, roots[2]) == [roots[0]]
    assert store.cancelled_with_dependents(other, 0, pending) == [roots[2]]
    assert blocked in store.dependents(roots[0])


def test_cancel_for_a_request_and_reprioritize_touch_only_waiting_tasks(store):
    waiting, blocked, running = add(store, 5), add(store, 5, status=TaskStatus.BLOCKED), add(store, 5)
    store.claim_ids([running], worker_pid=9)
    with store.transaction():
        assert store.reprioritize([running, blocked, waiting], 2) == [(waiting, 5), (blocked, 5)]
        assert store.reprioritize([waiting], 2) == []
    assert [store.get(i).priority for i in (waiting, blocked, running)] == [2, 2, 5]
    with store.transaction():
        request = store.add_bulk_request(3.0, "cancel_requested", {"by": "selection"}, 1000, 42)
        assert store.cancel_for_request([running, blocked, waiting], 3.0, request) == [waiting, blocked]
    cancelled = store.get(blocked)
    assert (cancelled.status, cancelled.finished_at, cancelled.blocked_reason) == (
        TaskStatus.CANCELLED,
        3.0,
        None,
    )
    assert [(e["event"], e["by"], e["uid"]) for e in store.events(waiting)] == [
        ("cancel_requested", "selection", 1000)
    ]
    assert store.get(running).status == TaskStatus.RUNNING


def test_queue_pauses_keep_who_paused_first_and_requests_list_the_latest(store):
    with store.transaction():
        assert store.add_pauses(["scan", "*"], 1.0, 1000, 42) == ["scan", "*"]
        assert store.add_pauses(["scan", "index"], 2.0, 0, 7) == ["index"]
    assert store.pauses() == [("*", 1.0, 1000, 42), ("index", 2.0, 0, 7), ("scan", 1.0, 1000, 42)]
    with store.transaction():
        assert store.remove_pauses(["scan", "other"]) == ["scan"]
        assert store.remove_pauses(None) == ["*", "index"]
    assert store.pauses() == []
    with store.transaction():
        for n, event in enumerate(["queue_paused", "cancel_requested", "queue_resumed", "queue_paused"]):
            store.add_bulk_request(float(n), event, {"n": n}, 1000, n)
    latest = store.queue_requests(["queue_paused", "queue_resumed"], 2)
    assert [(r["time"], r["event"], r["n"], r["pid"]) for r in latest] == [
        (2.0, "queue_resumed", 2, 2),
        (3.0, "queue_paused", 3, 3),
    ]


@pytest.mark.parametrize("deps", ["5,1", [1, 5]], ids=["sqlite", "postgres"])
def test_a_row_becomes_the_task_of_its_columns_field_by_field(deps):
    names = [n.strip() for n in TASK_FIELDS.split(",")] + ["depends_on", "host", "logged", "result"]
    values = {
        "id": 7,
        "type": "t",
        "status": "failed",
        "priority": 4,
        "data": pack({"d": 1}),
        "progress": 0.5,
        "current_operation": "op",
        "attempts": 2,
        "error": "err",
        "blocked_reason": "br",
        "stop_reason": "sigterm",
        "retry_of": 3,
        "retried_as": 9,
        "created_at": 1.0,
        "started_at": 2.0,
        "finished_at": 3.0,
        "worker_pid": 42,
        "depends_on": deps,
        "host": "h",
        "logged": 1,  # as SQLite gives it
        "result": pack([1]),
    }
    assert sorted(names) == sorted(values)
    task = row_to_task(tuple(values[n] for n in names))
    assert task == Task(
        id=7,
        type="t",
        status=TaskStatus.FAILED,
        priority=4,
        data={"d": 1},
        depends_on=[1, 5],
        progress=0.5,
        current_operation="op",
        attempts=2,
        error="err",
        blocked_reason="br",
        stop_reason=StopReason.SIGTERM,
        retry_of=3,
        retried_as=9,
        created_at=1.0,
        started_at=2.0,
        finished_at=3.0,
        worker_pid=42,
        result=[1],
        host="h",
        logged=True,
    )
    assert task.status is TaskStatus.FAILED and task.stop_reason is StopReason.SIGTERM
    assert task.logged is True
