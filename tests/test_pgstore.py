"""What the PostgreSQL store adds to the store's contract: a schema of its own, several daemons
claiming from one queue, the daemons table, notifications, and a connection that comes back."""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time

import psycopg
import pytest

from msearchd.errors import Unavailable
from msearchd.model import Task, TaskStatus
from msearchd.store.postgres import MIGRATIONS, SCHEMA_VERSION, PgStore, UnusableStore, redact


def add(store: PgStore, priority: int = 6, task_type: str = "t") -> int:
    return store.insert(
        task_type=task_type, data={}, priority=priority, status=TaskStatus.PENDING, created_at=1.0
    )


def test_data_survive_a_new_store_on_the_same_database(fresh_database):
    url = fresh_database()
    first = PgStore(url, daemon_id="a")
    task_id = first.insert(
        task_type="x",
        data={"nested": {"list": [1, "two"]}, "bytes": b"\x00"},
        priority=4,
        status=TaskStatus.PENDING,
        created_at=3.5,
    )
    first.close()
    second = PgStore(url, daemon_id="b")  # the schema is there: not made again
    task = second.get(task_id)
    assert task is not None
    assert (task.data, task.priority, task.created_at) == (
        {"nested": {"list": [1, "two"]}, "bytes": b"\x00"},
        4,
        3.5,
    )
    second.close()


def test_a_database_of_the_first_schema_is_brought_up_to_date_with_its_tasks(fresh_database):
    url = fresh_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(MIGRATIONS[0])
        conn.execute("CREATE TABLE msearch_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO msearch_schema VALUES (1)")
        conn.execute(
            "INSERT INTO tasks (type, status, priority, data, created_at) "
            "VALUES ('x', 'pending', 3, %s, 1.0)",
            (b"\x80",),
        )
    store = PgStore(url)
    store.register(workers=1)
    try:
        (task,) = store.list()
        assert (task.type, task.data, task.result) == ("x", {}, None)
        store.claim_ids([task.id], worker_pid=9)
        store.complete_many([(2.0, 3.0, {"ok": 1}, True, "done", task.id)])
        done = store.get(task.id)
        assert (done.result, done.logged, done.current_operation) == ({"ok": 1}, True, "done")
        assert store.insert_keyed("k", task_type="x", data={}, priority=1, status="pending", created_at=2.0)
        assert store.add_pauses(["x"], 1.0, None, None) == ["x"]
        store.release_starts(store.hold_starts(["x*", "y"]))
    finally:
        store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM msearch_schema").fetchone()[0] == SCHEMA_VERSION


def test_a_newer_schema_and_a_foreign_database_are_refused_in_one_sentence(fresh_database):
    url = fresh_database()
    PgStore(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE msearch_schema SET version = 99")
    expected = f"written by a newer msearchd (schema 99; this one knows up to {SCHEMA_VERSION})"
    with pytest.raises(UnusableStore, match=re.escape(expected)):
        PgStore(url)
    foreign = fresh_database()
    with psycopg.connect(foreign, autocommit=True) as conn:
        conn.execute("CREATE TABLE tasks (x int)")
    with pytest.raises(UnusableStore, match="holds a table 'tasks' that msearchd did not make"):
        PgStore(foreign)


def test_an_unreachable_server_is_one_sentence_without_the_password(postgres):
    url = f"postgresql://someone:secret@127.0.0.1:{postgres.port + 1}/nothing"
    with pytest.raises(UnusableStore) as caught:
        PgStore(url)
    message = str(caught.value)
    assert message.startswith("cannot reach the task store postgresql://someone:***@127.0.0.1")
    assert "secret" not in message and "\n" not in message
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_daemons_claim_each_task_once_under_a_storm_of_claims(fresh_database):
    url = fresh_database()
    stores = [PgStore(url, f"/state{i}", daemon_id=f"d{i}") for i in range(4)]
    for store in stores:
        store.register(2)
    ids = stores[0].insert_many(
        [
            {
                "task_type": "t",
                "data": {},
                "priority": i % 3,
                "status": TaskStatus.PENDING,
                "depends_on": [],
                "blocked_reason": None,
            }
            for i in range(600)
        ],
        1.0,
    )
    claimed = storm(stores)
    every = [t.id for got in claimed.values() for t in got]
    assert sorted(every) == ids  # each exactly once
    assert sum(1 for got in claimed.values() if got) > 1  # they did claim side by side
    for store in stores:
        assert {t.id for t in store.running_here()} == {t.id for t in claimed[store.daemon_id]}
        store.close()


def storm(stores: list[PgStore], rounds: int | None = None) -> dict[str, list[Task]]:
    """Each store claims on a thread of its own, all at once, as a dispatcher does: one task, then
    those that follow it in the queue, in one transaction; `rounds` times, or until it finds none."""
    claimed: dict[str, list[Task]] = {s.daemon_id: [] for s in stores}
    go = threading.Barrier(len(stores))

    def claim(store: PgStore) -> None:
        go.wait()
        for _ in range(rounds) if rounds is not None else itertools.count():
            with store.transaction():
                first = store.claim_next([], 2.0, 1)
                more = store.claim_ids([i for i, _ in store.next_pending(3)], 1) if first else []
            if first is None and rounds is None:
                return
            claimed[store.daemon_id] += [t for t in (first, *more) if t is not None]

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return claimed


def test_heartbeats_expire_and_the_tasks_of_a_dead_daemon_are_adopted_once(fresh_database):
    url = fresh_database()
    alive, dead = PgStore(url, "/a", daemon_id="alive"), PgStore(url, "/b", daemon_id="dead")
    alive.register(2)
    dead.register(2)
    add(dead)
    with dead.transaction():
        task = dead.claim_next([], 1.0, 7)
    assert task is not None and dead.host_of(task.id) == "dead"
    assert dead.heartbeat(1) is True
    with psycopg.connect(url, autocommit=True) as conn:  # its heartbeat stopped a minute ago
        conn.execute("UPDATE daemons SET heartbeat = now() - interval '1 minute' WHERE id = 'dead'")
    assert alive.expire_daemons(30) == ["dead"]
    assert alive.expire_daemons(30) == []
    assert [t.id for t in alive.adopt("dead")] == [task.id]
    assert alive.adopt("dead") == []
    assert [t.id for t in alive.running_here()] == [task.id]
    assert dead.heartbeat(0) is False  # it learns that it was taken for dead
    waiting = add(dead)
    with dead.transaction():  # and claims nothing until it has registered again
        assert dead.claim_next([], 2.0, 7) is None
        assert dead.claim_ids([waiting], 7) == []
    dead.register(2)
    with dead.transaction():
        claimed = dead.claim_next([], 2.0, 7)
    assert claimed is not None and claimed.id == waiting
    assert [d["id"] for d in alive.daemons()] == ["alive", "dead"]
    alive.close()
    dead.close()


def test_a_restart_on_the_same_machine_and_folder_finds_its_predecessor(fresh_database):
    url = fresh_database()
    old = PgStore(url, "/state", daemon_id="h:1")
    old.register(1)
    other_folder = PgStore(url, "/elsewhere", daemon_id="h:2")
    other_folder.register(1)
    new = PgStore(url, "/state", daemon_id="h:3")
    assert new.register(1) == ["h:1"]
    assert sorted(d["id"] for d in new.daemons()) == ["h:2", "h:3"]
    for s in (old, other_folder, new):
        s.close()


def test_a_lost_connection_is_unavailable_then_comes_back(fresh_database):
    url = fresh_database()
    store = PgStore(url)
    kept = add(store)
    pid = store._run("SELECT pg_backend_pid()").fetchone()[0]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(Unavailable, match="cannot be reached"):
        store.get(kept)
    task = store.get(kept)  # a fresh connection
    assert task is not None and task.id == kept
    with pytest.raises(Unavailable), store.transaction():
        add(store)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(%s)", (store._run("SELECT pg_backend_pid()").fetchone()[0],)
            )
        add(store)
    assert store.count() == 1  # the transaction that lost its connection wrote nothing
    store.close()


def test_notifications_reach_a_listener_after_commit(fresh_database):
    asyncio.run(notifications(fresh_database()))


async def notifications(url: str) -> None:
    sender, receiver = PgStore(url, daemon_id="s"), PgStore(url, daemon_id="r")
    heard: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    subscribed = asyncio.Event()

    async def listen() -> None:
        async for note in receiver.listen(["chan_a"], subscribed.set):
            await heard.put(note)

    listening = asyncio.ensure_future(listen())
    await asyncio.wait_for(subscribed.wait(), 10)
    with sender.transaction():
        sender.notify("chan_a", b"\x01first")
        assert heard.empty()
    assert await asyncio.wait_for(heard.get(), 10) == ("chan_a", b"\x01first")
    with pytest.raises(RuntimeError), sender.transaction():
        sender.notify("chan_a", b"rolled back")
        raise RuntimeError
    sender.notify("chan_a", b"second")
    assert await asyncio.wait_for(heard.get(), 10) == ("chan_a", b"second")
    listening.cancel()
    sender.close()
    receiver.close()


def pending(store: PgStore, n: int, task_type: str) -> list[int]:
    spec = {"task_type": task_type, "data": {}, "status": TaskStatus.PENDING, "depends_on": []}
    return store.insert_many([{**spec, "priority": 6, "blocked_reason": None}] * n, 1.0)


def test_a_cluster_limit_holds_under_a_storm_of_claims_from_several_daemons(fresh_database):
    url = fresh_database()
    stores = [PgStore(url, f"/state{i}", daemon_id=f"d{i}") for i in range(4)]
    for store in stores:
        store.register(2)
    assert stores[0].set_cluster_limits({"video": 3}) == {}
    late = PgStore(url, "/late", daemon_id="late")  # learns of the limit from the database alone
    late.register(2)
    stores.append(late)
    for store in stores:
        store.heartbeat(0)
    late.limited_types = frozenset()  # as if it had not heard of it yet: its claims still count
    ids = pending(stores[0], 60, "video") + pending(stores[0], 60, "other")
    claimed = storm(stores, rounds=80)  # past the point where only the limited ones are left
    every = [t for got in claimed.values() for t in got]
    assert len({t.id for t in every}) == len(every)
    assert sorted(t.id for t in every if t.type == "other") == ids[60:]  # the others all ran
    assert sum(t.type == "video" for t in every) == 3  # never more than the limit at once
    assert all(t.type == "other" for t in claimed["late"])
    ended = next(t for t in every if t.type == "video")
    owner = next(s for s in stores if s.daemon_id == ended.host)
    owner.complete_many([(2.0, 3.0, None, None, None, ended.id)])
    with stores[1].transaction():  # the one that ended leaves room for exactly one more
        again = stores[1].claim_next([], 4.0, 1)
        assert again is not None and again.type == "video"
        assert stores[1].claim_next([], 4.0, 1) is None
    assert stores[2].set_cluster_limits({}) == {"video": 3}  # no limit any more: the rest may run
    with stores[2].transaction():
        assert stores[2].claim_next([], 5.0, 1) is not None
    for store in stores:
        store.close()


@pytest.mark.parametrize("held", [["video"], ["vid*"], ["v[!x]deo", "nothing"]], ids=["type", "glob", "both"])
def test_a_hold_on_starts_keeps_every_daemon_from_claiming_its_type_until_released(fresh_database, held):
    url = fresh_database()
    a, b = PgStore(url, "/a", daemon_id="a"), PgStore(url, "/b", daemon_id="b")
    a.register(1)
    b.register(1)
    video, other = pending(a, 1, "video")[0], pending(a, 1, "other")[0]
    hold = a.hold_starts(held)
    assert len(hold) == len(held)
    with b.transaction():
        got = b.claim_next([], 1.0, 1)
        assert got is not None and got.id == other
        assert b.claim_next([], 1.0, 1) is None
        assert b.claim_ids([video], 1) == []
    a.release_starts(hold)
    assert a.hold_starts(["x[z-a]"]) == []  # a glob no type matches holds nothing
    everything = a.hold_starts(None)
    more = pending(a, 1, "other")[0]
    assert b.claim_next([], 1.0, 1) is None
    a.release_starts(everything)
    assert [t.id for t in (b.claim_next([], 1.0, 1), b.claim_next([], 1.0, 1))] == [video, more]
    (dropped,) = a.hold_starts(["oth?r"])
    a._holds.discard(dropped)  # its release did not reach the store: the next heartbeat ends it
    pending(a, 1, "other")
    assert b.claim_next([], 1.0, 1) is None
    assert a.heartbeat(0) is True
    assert b.claim_next([], 1.0, 1) is not None
    (lost,) = b.hold_starts(None)  # a daemon taken for dead leaves no hold behind
    pending(a, 1, "other")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE daemons SET heartbeat = now() - interval '1 minute' WHERE id = 'b'")
    assert a.expire_daemons(30) == ["b"] and lost in b._holds
    assert a.claim_next([], 1.0, 1) is not None
    a.close()
    b.close()


def two_daemons(url: str) -> tuple[PgStore, PgStore]:
    """The stores of two registered daemons, a and b, on one database."""
    a, b = PgStore(url, "/a", daemon_id="a"), PgStore(url, "/b", daemon_id="b")
    a.register(1)
    b.register(1)
    return a, b


def test_a_pause_through_one_daemon_holds_back_the_claims_of_another_that_has_not_heard_of_it(
    fresh_database,
):
    a, b = two_daemons(fresh_database())
    video = pending(a, 1, "file_embed_video")[0]
    other = pending(a, 1, "other")[0]
    assert a.add_pauses(["file_embed_*"], 1.0, None, None) == ["file_embed_*"]
    with b.transaction():
        assert b.claim_next([], 1.0, 1) is None  # a pause it does not exclude: nothing at all
        assert b.claim_ids([other], 1) == []
    with b.transaction():  # once it excludes the pause, the other types are claimed again
        got = b.claim_next(["file_embed_*"], 1.0, 1)
        assert got is not None and got.id == other
        assert b.claim_next(["file_embed_*"], 1.0, 1) is None
    more = pending(a, 2, "other")
    with b.transaction():
        assert b.claim_next(["file_embed_*"], 1.0, 1).id == more[0]
        assert [t.id for t in b.claim_ids([more[1]], 1)] == [more[1]]
    assert a.remove_pauses(None) == ["file_embed_*"]
    assert b.claim_next(["file_embed_*"], 1.0, 1) is None  # it excludes the pause until it hears
    assert b.claim_next([], 1.0, 1).id == video
    a.close()
    b.close()


def test_a_pause_waits_for_a_claim_under_way_so_that_what_runs_after_it_is_seen(fresh_database):
    a, b = two_daemons(url := fresh_database())
    first, second = pending(a, 2, "video")
    paused = threading.Thread(target=lambda: a.add_pauses(["video"], 1.0, None, None))
    with b.transaction():
        assert b.claim_next([], 1.0, 1).id == first
        paused.start()
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + 20
            while not conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'LOCK TABLE queue_pauses%'"
            ).fetchone()[0]:
                assert time.monotonic() < deadline, "the pause did not wait for the claim"
    paused.join(20)
    assert not paused.is_alive()
    assert [t.id for t in a.running()] == [first]  # committed before the pause: what a drain waits for
    assert b.claim_next([], 1.0, 1) is None and a.get(second).status is TaskStatus.PENDING
    a.close()
    b.close()


def test_a_pause_goes_in_without_a_daemon_that_does_not_end_its_claim(fresh_database):
    a, b = two_daemons(fresh_database())
    first, second = pending(a, 2, "video")
    added: list[list[str]] = []
    paused = threading.Thread(target=lambda: added.append(a.add_pauses(["video"], 1.0, None, None)))
    with b.transaction():  # a daemon stopped in the middle of its claim
        assert b.claim_next([], 1.0, 1).id == first
        paused.start()
        paused.join(20)
        assert added == [["video"]] and [p[0] for p in a.pauses()] == ["video"]
    assert b.claim_next([], 1.0, 1) is None and a.get(second).status is TaskStatus.PENDING
    assert a.add_pauses(["other"], 2.0, None, None) == ["other"]  # no daemon claims: no wait at all
    a.close()
    b.close()
