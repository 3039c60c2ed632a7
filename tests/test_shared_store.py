"""The daemon on either store behaves the same; on PostgreSQL, several daemons share one queue."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import psutil
import pytest
from support import dead, wait_started
from test_cancel import leased_behind_a_blocked_task

from msearchd.errors import InvalidState, Unavailable
from msearchd.model import TaskStatus, format_task_id


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> str | None:
    """What make_daemon(store=...) takes: None for SQLite, else a fresh PostgreSQL database."""
    return None if request.param == "sqlite" else request.getfixturevalue("fresh_database")()


def test_submit_list_priority_and_cancel(make_daemon, store, fifo):
    d = make_daemon(workers=1, store=store)
    gate = fifo("gate")
    with d.client() as c:
        held = c.submit("stepper", {"fifo": str(gate), "steps": 1}, priority=0)
        c.wait([held["id"]], statuses=["running"], timeout=20)
        low, mid, high = (c.submit("quick", {}, priority=p) for p in (9, 5, 1))
        assert [t["id"] for t in c.list(status="pending")] == [low["id"], mid["id"], high["id"]]
        c.set_priority(low["id"], 0)
        cancelled = c.cancel(mid["id"])["task"]
        assert (cancelled["status"], cancelled["stop_reason"]) == ("cancelled", "not_started")
        gate.write("go")
        done = c.wait([held["id"], low["id"], high["id"]], timeout=20)
        assert [t["status"] for t in done["tasks"]] == ["completed"] * 3
        ran = sorted(done["tasks"][1:], key=lambda t: t["started_at"])
        assert [t["id"] for t in ran] == [low["id"], high["id"]]  # its new priority put it first
        assert c.count(status="completed") == 3 and c.count(status="cancelled") == 1
        events = [e["event"] for e in c.history(low["id"])]
        assert events == ["submitted", "priority_changed", "started", "completed"]
        shared = store is not None  # which daemon ran a task is said only where several share the store
        assert ("host" in c.get(low["id"])) is shared and ("daemons" in c.stats()) is shared


def test_dependencies_retry_and_events(make_daemon, store):
    d = make_daemon(workers=2, store=store)
    with d.client() as c, c.events() as stream:
        first = c.submit("fail", {"message": "no"})
        after = c.submit("quick", {}, depends_on=[first["id"]])
        assert after["status"] == "blocked"
        c.wait([first["id"]], timeout=20)
        assert c.get(first["id"])["error"] == "no"
        assert c.get(after["id"])["status"] == "blocked"
        again = c.retry(first["id"])
        assert again["handed_over"] == [after["id"]]
        assert c.get(after["id"])["depends_on"] == [again["new_task_id"]]
        c.wait([again["new_task_id"]], timeout=20)
        seen = []
        for event in stream:
            seen.append((event["task_id"], event["event"]))
            if event["task_id"] == again["new_task_id"] and event["event"] == "failed":
                break
        assert (first["id"], "submitted") in seen and (first["id"], "started") in seen
        assert (first["id"], "failed") in seen and (first["id"], "retried") in seen
        assert (again["new_task_id"], "submitted") in seen
        failed = c.retry_failed()
        assert [r["task_id"] for r in failed] == [again["new_task_id"]]


def test_cancel_running_and_cancel_by_type(make_daemon, store, fifo):
    d = make_daemon(workers=2, grace=2.0, store=store)
    started = fifo("started")
    with d.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", f"echo up > {started}; exec sleep 1000"]})
        started.read()
        with pytest.raises(InvalidState, match="is running; add running=true"):
            c.cancel(task["id"])
        answer = c.cancel(task["id"], running=True)["task"]
        assert (answer["status"], answer["stop_reason"]) == ("cancelled", "sigterm")
        never = fifo("never")  # nobody writes it: the steppers wait for ever
        queued = [c.submit("stepper", {"fifo": str(never), "steps": 1}, priority=9) for _ in range(3)]
        result = c.cancel_by_type("stepper", running=True)
        assert result["total"] == 3 and result["task_type"] == "stepper"
        assert {c.get(t["id"])["status"] for t in queued} == {"cancelled"}


def next_event(stream, wanted, timeout: float = 20.0) -> dict:
    """The first event of the stream for which `wanted(event)` holds, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if stream.ready(left):
            event = next(stream)
            if wanted(event):
                return event
    raise AssertionError(f"no such event within {timeout} s")


def runs_under(pid: int, daemon) -> bool:
    """Whether process `pid` descends from this daemon's process."""
    return any(p.pid == daemon.proc.pid for p in psutil.Process(pid).parents())


def busy_alone(make_daemon, url: str, fifo):
    """A daemon with one worker, held by a stepper until its gate is written: while it is, tasks
    submitted through it run on the other daemons of the database."""
    a = make_daemon(workers=1, store=url)
    gate = fifo("a-gate")
    with a.client() as c:
        held = c.submit("stepper", {"fifo": str(gate), "steps": 1}, priority=0)
        c.wait([held["id"]], statuses=["running"], timeout=20)
    return a, gate, held


def busy_and_another(make_daemon, fresh_database, fifo, **options):
    """A new database, a daemon on it that is `busy_alone`, and another daemon (`options`) that runs
    what is submitted through the first."""
    url = fresh_database()
    a, gate, held = busy_alone(make_daemon, url, fifo)
    return a, gate, held, make_daemon(store=url, **options)


def test_a_watch_on_one_daemon_sees_the_progress_of_a_task_on_another_and_cancels_it(
    make_daemon, fresh_database, fifo
):
    a, a_gate, held, b = busy_and_another(make_daemon, fresh_database, fifo, workers=2, grace=2.0)
    with a.client() as c, c.events() as stream:
        chatty = c.submit("chatty", {"reports": 3})
        progress = next_event(stream, lambda e: e["task_id"] == chatty["id"] and e["event"] == "progress")
        assert progress["current_operation"].startswith("report ") and progress["progress"] > 0
        done = next_event(stream, lambda e: e["task_id"] == chatty["id"] and e["event"] == "completed")
        assert done["status"] == "completed"
        assert runs_under(c.get(chatty["id"])["worker_pid"], b)

        task = c.submit("command", {"argv": ["sleep", "1000"]})
        running = next_event(stream, lambda e: e["task_id"] == task["id"] and e.get("current_operation"))
        pid = int(running["current_operation"].rsplit("(pid ", 1)[1].rstrip(")"))
        assert runs_under(pid, b) and not runs_under(pid, a)
        assert c.get(task["id"])["host"] == f"{socket.gethostname()}:{b.proc.pid}"
        listed = a.ctl("tasks", "list", "--status", "running")
        row = next(line for line in listed.stdout.splitlines() if line.startswith(task["id"]))
        assert f"\ton {socket.gethostname()}:{b.proc.pid}" in row, row
        shown = a.ctl("tasks", "show", task["id"])
        assert f"\nhost        {socket.gethostname()}:{b.proc.pid}\n" in shown.stdout, shown.stdout
        daemons = c.stats()["daemons"]
        assert sorted(d["pid"] for d in daemons) == sorted([a.proc.pid, b.proc.pid])
        assert {d["pid"]: (d["workers"], d["busy"] <= d["workers"]) for d in daemons} == {
            a.proc.pid: (1, True),
            b.proc.pid: (2, True),
        }
        dependent = c.submit("quick", {}, depends_on=[task["id"]])
        answer = c.cancel(task["id"], running=True)
        assert (answer["task"]["status"], answer["task"]["stop_reason"]) == ("cancelled", "sigterm")
        assert answer["cancelled_dependents"] == 1 and c.get(dependent["id"])["status"] == "cancelled"
        assert dead(pid)
        events = [e["event"] for e in c.history(task["id"])]
        assert events[-2:] == ["cancel_requested", "cancelled"]
        assert c.get(held["id"])["status"] == "running"  # A's own task runs on
    with b.client() as cb:
        assert cb.get(task["id"])["status"] == "cancelled"
    a_gate.write("go")


def test_the_running_tasks_of_a_killed_daemon_go_back_to_the_queue_and_run_elsewhere(
    make_daemon, fresh_database, fifo, tmp_path
):
    a, a_gate, _, b = busy_and_another(make_daemon, fresh_database, fifo, workers=2)
    record = tmp_path / "ran"
    with a.client() as c:
        tasks, pipes = [], []
        for i in range(2):
            started, hold = fifo(f"started{i}"), fifo(f"hold{i}")
            pipes += [started, hold]
            tasks.append(
                c.submit("quick", {"started": str(started), "fifo": str(hold), "record": str(record)})
            )
            started.read()  # it runs, on B: A's only worker is busy
        assert {runs_under(c.get(t["id"])["worker_pid"], b) for t in tasks} == {True}
        b.kill9()
        for pipe in pipes:  # the next runs wait for nothing: files instead of pipes
            pipe.path.unlink()
            pipe.path.write_text("go\n")
        back = c.wait([t["id"] for t in tasks], statuses=["pending"], timeout=30)
        assert not back["timed_out"]
        for task in back["tasks"]:
            assert task["attempts"] == 1
        for task in tasks:
            requeued = [e for e in c.history(task["id"]) if e["event"] == "requeued"]
            assert [e["reason"] for e in requeued] == [
                "interrupted: its daemon stopped answering without finishing it"
            ]
        assert "taken for dead" in a.wait_for_log("gave no heartbeat")
        a_gate.write("go")
        done = c.wait([t["id"] for t in tasks], timeout=30)
        assert [(t["status"], t["attempts"]) for t in done["tasks"]] == [("completed", 2)] * 2
        assert {runs_under(t["worker_pid"], a) for t in done["tasks"]} == {True}
    # Each ran twice, one after the other: the first run died with B before the second began.
    assert sorted(record.read_text().split()) == sorted([t["id"] for t in tasks] * 2)


def test_no_task_runs_twice_under_a_storm_of_claims_from_three_daemons(make_daemon, fresh_database, tmp_path):
    url = fresh_database()
    daemons = [make_daemon(workers=2, store=url) for _ in range(3)]
    record = tmp_path / "ran"
    with daemons[0].client() as c:
        ids = c.submit_many([{"type": "quick", "data": {"record": str(record)}} for _ in range(300)])[
            "task_ids"
        ]
        with daemons[1].client() as c1:
            ids += c1.submit_many([{"type": "quick", "data": {"record": str(record)}} for _ in range(300)])[
                "task_ids"
            ]
        done = c.wait(ids, timeout=120)
        assert not done["timed_out"]
        assert {t["status"] for t in done["tasks"]} == {"completed"}
        assert {t["attempts"] for t in done["tasks"]} == {1}
        ran_on = {
            next(i for i, d in enumerate(daemons) if runs_under(t["worker_pid"], d)) for t in done["tasks"]
        }
    assert len(ran_on) > 1  # they did take from the queue side by side
    lines = record.read_text().split()
    assert sorted(lines) == sorted(ids)  # each ran exactly once


def until_available(call, timeout: float = 30.0):
    """What `call` answers once the daemon has its store again (each try waits for a connection)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except Unavailable:
            if time.monotonic() > deadline:
                raise


def test_a_daemon_that_loses_its_store_answers_unavailable_stops_its_tasks_and_comes_back(
    make_daemon, own_postgres, fifo
):
    url = own_postgres.create_database("queue")
    d = make_daemon(workers=1, store=url)
    started = fifo("started")
    with d.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", f"echo $$ > {started}; exec sleep 1000"]})
        pid = int(started.read())
        own_postgres.halt()
        with pytest.raises(Unavailable, match=r"the task store postgresql://\S+ cannot be reached"):
            c.get(task["id"])
        d.wait_for_log("stopping the running tasks and starting none until the store answers")
        with contextlib.suppress(psutil.NoSuchProcess):  # gone already, before it is looked up: fine
            psutil.Process(pid).wait(20)  # it must not run while the others may take it for dead
        own_postgres.resume()
        until_available(lambda: c.get(task["id"]))
        d.wait_for_log("the store answers again; starting tasks again")
        requeued = [e for e in c.history(task["id"]) if e["event"] == "requeued"]
        assert [e["reason"] for e in requeued] == [
            "interrupted: this daemon lost its store without finishing it"
        ]
        wait_started(c, task["id"])  # it runs again
        assert c.get(task["id"])["attempts"] == 2


def test_the_store_comes_from_the_flag_the_environment_or_the_file(tmp_path, monkeypatch):
    from msearchd import config
    from msearchd.errors import InvalidArgument

    monkeypatch.delenv("MSEARCH_STORE", raising=False)
    path = tmp_path / "msearchd.toml"
    path.write_text('store = "postgresql://file@db/q"\n')
    assert config.load(None, {}).store is None  # SQLite, as before
    assert config.load(path, {}).store == "postgresql://file@db/q"
    monkeypatch.setenv("MSEARCH_STORE", "postgresql://env@db/q")
    assert config.load(path, {}).store == "postgresql://env@db/q"
    assert config.load(path, {"store": "postgres://flag@db/q"}).store == "postgres://flag@db/q"
    path.write_text('store = "mysql://x@db/q"\n')
    monkeypatch.delenv("MSEARCH_STORE")
    with pytest.raises(InvalidArgument, match="store must be a postgresql:// address, got 'mysql://x@db/q'"):
        config.load(path, {})


def test_a_store_that_cannot_be_reached_stops_the_daemon_at_start_in_one_sentence(make_daemon, postgres):
    import subprocess

    d = make_daemon(start=False, store=f"postgresql://msearch:secret@127.0.0.1:{postgres.port}/missing")
    done = subprocess.run(
        [*daemon_argv(d)], env=d.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[-1].startswith(
        f"msearchd: cannot reach the task store postgresql://msearch:***@127.0.0.1:{postgres.port}/missing: "
    ), done.stderr
    assert "secret" not in done.stderr and "Traceback" not in done.stderr
    assert not d.socket.exists()  # a refused store leaves no socket behind


def daemon_argv(d) -> list[str]:
    from conftest import MSEARCHD

    return [MSEARCHD, "--workers", "1", "--config", str(d.config), *d.extra_args]


def test_cancel_by_type_through_one_daemon_stops_the_tasks_of_that_type_on_every_daemon(
    make_daemon, fresh_database, fifo
):
    url = fresh_database()
    a = make_daemon(workers=1, store=url)
    b = make_daemon(workers=1, store=url)
    with a.client() as c, c.events() as stream:
        tasks = [c.submit("command", {"argv": ["sleep", "1000"]}) for _ in range(2)]
        pids = {}
        while len(pids) < 2:
            event = next_event(stream, lambda e: (e.get("current_operation") or "").startswith("running"))
            pids[event["task_id"]] = int(event["current_operation"].rsplit("(pid ", 1)[1].rstrip(")"))
        assert sorted(runs_under(pid, b) for pid in pids.values()) == [False, True]  # one on each
        waiting = c.submit("command", {"argv": ["sleep", "1000"]})
        other = c.submit("quick", {}, priority=11)
        result = c.cancel_by_type("command", running=True)
        assert (result["cancelled"], result["failed"], result["total"]) == (3, 0, 3)
        assert all(dead(pid) for pid in pids.values())
        ends = {t["id"]: (t["status"], t["stop_reason"]) for t in c.wait([t["id"] for t in tasks])["tasks"]}
        assert ends == {t["id"]: ("cancelled", "sigterm") for t in tasks}
        assert c.get(waiting["id"])["stop_reason"] == "not_started"
        assert c.wait([other["id"]], timeout=20)["tasks"][0]["status"] == "completed"


def test_a_cancel_whose_daemon_does_not_answer_says_so_and_happens_when_it_does(make_daemon, fresh_database):
    url = fresh_database()
    a = make_daemon(workers=1, store=url)
    with a.client() as c:
        held = c.submit("command", {"argv": ["sleep", "1000"]})
        wait_started(c, held["id"])
        b = make_daemon(workers=1, grace=1.0, store=url)
        task = c.submit("command", {"argv": ["sleep", "1000"]})
        wait_started(c, task["id"])
        assert runs_under(c.get(task["id"])["worker_pid"], b)
        os.kill(b.proc.pid, signal.SIGSTOP)  # B cannot hear the request
        try:
            with pytest.raises(Unavailable, match=r"runs on \S+, which did not stop it within 2 s"):
                c.cancel(task["id"], running=True)
            assert c.get(task["id"])["status"] == "running"
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        done = c.wait([task["id"]], timeout=20)["tasks"][0]  # B hears it now, and stops the task
        assert (done["status"], done["stop_reason"]) == ("cancelled", "sigterm")
        c.cancel(held["id"], running=True)


def test_dependencies_and_priorities_hold_across_daemons(make_daemon, fresh_database, fifo, tmp_path):
    a, a_gate, _, b = busy_and_another(make_daemon, fresh_database, fifo, workers=1)
    record = tmp_path / "ran"
    with a.client() as c, b.client() as cb:
        gate = fifo("b-gate")
        root = c.submit("stepper", {"fifo": str(gate), "steps": 1}, priority=5)  # runs on B
        c.wait([root["id"]], statuses=["running"], timeout=20)
        after = cb.submit("quick", {"record": str(record)}, depends_on=[root["id"]], priority=0)
        assert after["status"] == "blocked"
        late, early = (c.submit("quick", {"record": str(record)}, priority=p) for p in (9, 1))
        gate.write("go")
        done = c.wait([root["id"], after["id"], late["id"], early["id"]], timeout=30)
        assert {t["status"] for t in done["tasks"]} == {"completed"}
    # B's one worker took them in order: the unblocked task (priority 0), then 1, then 9.
    assert record.read_text().split() == [after["id"], early["id"], late["id"]]
    a_gate.write("go")


def test_retention_removes_the_oldest_finished_tasks_on_either_store(make_daemon, store):
    d = make_daemon(settings="keep_tasks = 2\n", start=False, store=store)
    if store is None:
        from msearchd.store import Store

        d.state_dir.mkdir(parents=True)
        seed = Store(d.state_dir / "tasks.db")
    else:
        from msearchd.store.postgres import PgStore

        seed = PgStore(store)
    spec = {"task_type": "quick", "data": {}, "priority": 6, "created_at": 1.0}
    finished = []
    for _ in range(5):
        task_id = seed.insert(**spec, status=TaskStatus.PENDING)
        seed.update(task_id, status=TaskStatus.COMPLETED, finished_at=time.time())
        finished.append(task_id)
    unfinished = seed.insert(**spec, status=TaskStatus.BLOCKED, depends_on=[finished[0]])
    seed.close()
    d.start()
    d.wait_for_log("removed 2 finished task(s)")  # the first one stays: a blocked task depends on it
    with d.client() as c:
        assert [t["id"] for t in c.list(limit=100)] == [
            format_task_id(i) for i in [finished[0], *finished[3:], unfinished]
        ]


def test_results_newest_first_keys_and_pauses_work_on_either_store(make_daemon, store):
    d = make_daemon(workers=1, store=store)
    with d.client() as c:
        c.pause(["returns"])
        assert [p["type"] for p in c.queue()["paused"]] == ["returns"]
        first = c.submit("returns", {"value": {"n": 1}}, key="nightly")
        again = c.submit("returns", {"value": {"n": 2}}, key="nightly")
        assert again["id"] == first["id"]  # the key is held: nothing new was queued
        second = c.submit("returns", {"value": [1, "two"]})
        assert [t["id"] for t in c.list(order="newest")] == [second["id"], first["id"]]
        queue = c.resume(["returns"])
        assert queue["paused"] == [] and [h["event"] for h in queue["history"]] == [
            "queue_paused",
            "queue_resumed",
        ]
        done = c.wait([first["id"], second["id"]], timeout=20)
        assert [(t["status"], t["result"]) for t in done["tasks"]] == [
            ("completed", {"n": 1}),
            ("completed", [1, "two"]),
        ]
        assert c.get(first["id"])["result"] == {"n": 1}


def most_at_once(record) -> int:
    """The most tasks of a record of `span` tasks that ran at the same moment."""
    moments = []
    for line in record.read_text().splitlines():
        _, edge, at = line.split()
        moments.append((float(at), 0 if edge == "end" else 1))  # at a tie, an end comes first
    running = most = 0
    for _, starts in sorted(moments):
        running += 1 if starts else -1
        most = max(most, running)
    return most


def test_a_cluster_type_limit_holds_across_daemons_and_the_tasks_it_holds_back_all_run(
    make_daemon, store, tmp_path
):
    """Three daemons, each allowed one `span` at a time, share a limit of two: the third never starts
    one beside them. With a store of its own, the same setting limits the one daemon."""
    limits = "[cluster_type_limits]\nspan = 2\n"
    if store is None:
        daemons = [make_daemon(workers=3, config_extra=limits)]
    else:
        limits += "[type_limits]\nspan = 1\n"
        daemons = [make_daemon(workers=2, store=store, config_extra=limits) for _ in range(3)]
    record = tmp_path / "spans"
    with daemons[0].client() as c:
        spans = [c.submit("span", {"record": str(record), "work": 0.2}) for _ in range(10)]
        others = [c.submit("quick", {}) for _ in range(6)]
        done = c.wait([t["id"] for t in spans + others], timeout=60)
        assert not done["timed_out"] and {t["status"] for t in done["tasks"]} == {"completed"}
        if store is not None:
            hosts = {c.get(t["id"])["host"] for t in spans}
            assert len(hosts) >= 2  # one at a time on each daemon: the two at once ran on two daemons
    assert most_at_once(record) == 2


def test_cluster_type_limits_are_read_only_where_the_file_has_the_table(tmp_path):
    from msearchd import config
    from msearchd.errors import InvalidArgument

    path = tmp_path / "msearchd.toml"
    path.write_text("[type_limits]\nvideo = 3\n")
    assert config.load(path, {}).cluster_type_limits is None  # the store's limits are left as they are
    path.write_text("[cluster_type_limits]\n")
    assert config.load(path, {}).cluster_type_limits == {}  # no limit for the whole cluster any more
    path.write_text("[cluster_type_limits]\nvideo = 2\n")
    assert config.load(path, {}).cluster_type_limits == {"video": 2}
    path.write_text("[cluster_type_limits]\nvideo = 0\n")
    with pytest.raises(InvalidArgument, match=r"cluster_type_limits\.video must be at least 1, got 0"):
        config.load(path, {})


def test_a_task_waiting_in_another_daemons_lease_is_taken_back_by_a_plain_cancel(
    make_daemon, fresh_database, fifo, tmp_path
):
    """It has not started: a cancel through any daemon takes it back unstarted, as one through the
    daemon whose worker holds it does; the task that runs there needs --running, as ever."""
    a, a_gate, _, b = busy_and_another(make_daemon, fresh_database, fifo, workers=1)
    with a.client() as c:
        head, queued, hold, record = leased_behind_a_blocked_task(c, fifo, tmp_path)  # on B: A is busy
        assert {c.get(t["id"])["host"] for t in [head, *queued]} == {f"{socket.gethostname()}:{b.proc.pid}"}
        plain = queued[1]
        result = c.cancel(plain["id"])
        assert (result["task"]["status"], result["task"]["stop_reason"]) == ("cancelled", "not_started")
        assert result["task"]["attempts"] == 0 and result["task"]["started_at"] is None
        history = c.history(plain["id"])
        assert [(e["event"], e.get("by"), e.get("running")) for e in history] == [
            ("submitted", None, None),
            ("cancel_requested", "cancel", False),
            ("cancelled", None, None),
        ]
        assert history[1]["uid"] == os.getuid()  # who asked, though another daemon took it back
        with pytest.raises(InvalidState, match="is running; add running=true"):
            c.cancel(head["id"])
        bulk = c.cancel_by_type("quick")  # the rest of the lease, taken back the same way
        assert (bulk["cancelled"], bulk["failed"]) == (3, 0)
        hold.write()
        done = c.wait([t["id"] for t in [head, *queued]], timeout=20)["tasks"]
        assert [(t["status"], t["stop_reason"]) for t in done] == [("completed", None)] + [
            ("cancelled", "not_started")
        ] * 4
    assert record.read_text().split() == [head["id"]]  # none of the others ran
    a_gate.write()


@pytest.mark.parametrize(
    "cancel",
    [
        lambda client: client.cancel_by_type("quick", True),
        lambda client: client.cancel_selected({"types": ["qu*"]}, running=True),
    ],
    ids=["by-type", "by-glob"],
)
def test_no_task_of_a_type_starts_on_any_daemon_while_a_cancel_by_type_works_through_it(
    make_daemon, fresh_database, fifo, tmp_path, cancel
):
    """A cancels many tasks in chunks; it is stopped between two of them, while B's workers come free.
    B starts other work, lower in the queue, but none of the tasks A is about to cancel: a cancel of
    a type, or of the types a glob matches, holds those back and no other."""
    import threading

    url = fresh_database()
    a = make_daemon(workers=1, store=url)
    b = make_daemon(workers=2, store=url)
    gates = [fifo(f"gate{i}") for i in range(3)]
    record = tmp_path / "ran"
    with a.client() as c, b.client() as cb:
        busy = [c.submit("stepper", {"fifo": str(g), "steps": 1}, priority=0) for g in gates]
        c.wait([t["id"] for t in busy], statuses=["running"], timeout=20)
        ids = []
        for _ in range(10):
            ids += c.submit_many([{"type": "quick", "data": {"record": str(record)}, "priority": 5}] * 1000)[
                "task_ids"
            ]
        markers = [c.submit("noop", {}, priority=9) for _ in range(2)]
        answers = []
        with a.client() as canceller:
            thread = threading.Thread(target=lambda: answers.append(cancel(canceller)))
            thread.start()
            try:
                deadline = time.monotonic() + 30
                while not cb.count(status="cancelled", task_type="quick"):  # its first chunk is in
                    assert thread.is_alive() and time.monotonic() < deadline
                os.kill(a.proc.pid, signal.SIGSTOP)  # between two chunks, or in one
                try:
                    assert cb.count(status="pending", task_type="quick") > 0  # some are still to cancel
                    free = [g for g, t in zip(gates, busy, strict=True) if c_host(cb, t) == b.proc.pid]
                    assert len(free) == 2
                    for gate in free:
                        gate.write()  # B's workers come free
                    ran = cb.wait([t["id"] for t in markers], timeout=20)  # while A holds `quick` back
                    assert [t["status"] for t in ran["tasks"]] == ["completed", "completed"]
                    assert cb.count(status="pending", task_type="quick") > 0  # A is still stopped
                finally:
                    os.kill(a.proc.pid, signal.SIGCONT)
            finally:
                thread.join(60)
        assert answers and answers[0]["cancelled"] == len(ids)
        assert {t["status"] for t in c.wait([t["id"] for t in markers], timeout=20)["tasks"]} == {"completed"}
        assert c.count(status="cancelled", task_type="quick") == len(ids)
        for gate, task in zip(gates, busy, strict=True):
            if c_host(c, task) == a.proc.pid:
                gate.write()
    assert not record.exists()  # none of them started, on either daemon


def c_host(c, task) -> int:
    """The pid of the daemon that runs the task."""
    return int(c.get(task["id"])["host"].rsplit(":", 1)[1])


def heard_by(stream, client) -> None:
    """Return once the daemon of `stream` hears what the daemon of `client` notifies: it listens to
    the others from a moment after its start, on a connection of its own."""
    deadline = time.monotonic() + 30
    while True:
        task = client.submit("noop", {}, priority=11)
        ends = time.monotonic() + 2
        while (left := ends - time.monotonic()) > 0 and stream.ready(left):
            event = next(stream)
            if event.get("task_id") == task["id"] and event["event"] == "submitted":
                return
        assert time.monotonic() < deadline, "the daemon of the stream never heard the other"


def test_a_pause_through_one_daemon_holds_back_the_others_and_a_resume_through_another_releases_it(
    make_daemon, fresh_database, fifo
):
    a, a_gate, held, b = busy_and_another(make_daemon, fresh_database, fifo, workers=1)
    with a.client() as c, b.client() as cb, cb.events() as b_stream, c.events() as a_stream:
        heard_by(b_stream, c)
        state = c.pause(["quick", "chat*"])
        assert [p["type"] for p in state["paused"]] == ["chat*", "quick"]
        paused = [c.submit("quick", {}, priority=0), c.submit("chatty", {"reports": 1}, priority=0)]
        marker = c.submit("noop", {}, priority=9)  # after them in the queue
        assert c.wait([marker["id"]], timeout=20)["tasks"][0]["status"] == "completed"
        assert runs_under(c.get(marker["id"])["worker_pid"], b)  # A's only worker is busy
        assert [c.get(t["id"])["status"] for t in paused] == ["pending", "pending"]
        told = next_event(b_stream, lambda e: e["event"] == "queue_paused")  # B's watchers hear of it
        assert told["types"] == ["chat*", "quick"] and told["uid"] == os.getuid()
        assert cb.stats()["paused"] == ["chat*", "quick"]
        status = b.ctl("queue", "status").stdout
        assert "paused chat* since" in status and "paused quick since" in status, status

        b_gate = fifo("b-gate")
        busy = c.submit("stepper", {"fifo": str(b_gate), "steps": 1}, priority=0)
        c.wait([busy["id"]], statuses=["running"], timeout=20)  # on B, whose worker it holds
        a_gate.write("go")
        c.wait([held["id"]], timeout=20)
        free = c.submit("noop", {}, priority=9)  # A's worker is free, and starts no paused task
        assert c.wait([free["id"]], timeout=20)["tasks"][0]["status"] == "completed"
        assert runs_under(c.get(free["id"])["worker_pid"], a)
        assert [c.get(t["id"])["status"] for t in paused] == ["pending", "pending"]
        assert cb.resume()["paused"] == []
        done = c.wait([t["id"] for t in paused], timeout=20)["tasks"]
        assert [t["status"] for t in done] == ["completed", "completed"]
        assert all(runs_under(t["worker_pid"], a) for t in done)
        told = next_event(a_stream, lambda e: e["event"] == "queue_resumed")
        assert told["types"] == ["chat*", "quick"]
        b_gate.write("go")


def test_a_pause_through_one_daemon_puts_back_what_another_daemons_worker_holds_and_has_not_started(
    make_daemon, fresh_database, fifo, tmp_path
):
    a, a_gate, _, b = busy_and_another(make_daemon, fresh_database, fifo, workers=1)
    with a.client() as c:
        head, queued, hold, record = leased_behind_a_blocked_task(c, fifo, tmp_path)  # on B: A is busy
        assert {c.get(t["id"])["host"] for t in [head, *queued]} == {f"{socket.gethostname()}:{b.proc.pid}"}
        ids = [t["id"] for t in queued]
        c.pause(["quick"])  # through A, whose workers hold none of them
        # B hands them back as it hears of it. (Were it not to, they would go back anyway once the
        # head had kept them waiting past the lease's overrun: the log tells the two apart.)
        heard = b.wait_for_log("another daemon paused quick:")
        assert "task(s) this daemon's workers held and had not started are back in the queue" in heard
        back = c.wait(ids, statuses=["pending"], timeout=20)
        assert not back["timed_out"]
        assert [(t["status"], t["attempts"], t["worker_pid"]) for t in back["tasks"]] == [
            ("pending", 0, None)
        ] * 4
        assert c.get(head["id"])["status"] == "running"  # it started: it runs on
        hold.write()
        assert c.wait([head["id"]], timeout=20)["tasks"][0]["status"] == "completed"
        drained = c.drain(["quick"], timeout=20)
        assert drained["drained"]
        assert [c.get(i)["status"] for i in ids] == ["pending"] * 4  # nothing started them since
        c.resume()
        assert {t["status"] for t in c.wait(ids, timeout=20)["tasks"]} == {"completed"}
    assert record.read_text().split() == [head["id"], *ids]  # each ran once, the head first
    a_gate.write()


def test_a_drain_through_one_daemon_waits_for_a_task_running_on_another(
    make_daemon, fresh_database, fifo, tmp_path
):
    import subprocess

    from conftest import MSEARCHCTL

    a, a_gate, _, b = busy_and_another(make_daemon, fresh_database, fifo, workers=1)
    record = tmp_path / "ran"
    with a.client() as c, b.client() as cb:
        started, hold = fifo("started"), fifo("hold")
        first = c.submit("quick", {"started": str(started), "fifo": str(hold), "record": str(record)})
        started.read()
        assert runs_under(c.get(first["id"])["worker_pid"], b)  # A's only worker is busy
        after = c.submit("quick", {"record": str(record)})
        timed_out = a.ctl("queue", "drain", "--type", "qu*", "--timeout", "0.1")
        assert timed_out.returncode == 4 and first["id"] in timed_out.stdout, timed_out.stdout
        drain = subprocess.Popen(
            [MSEARCHCTL, "queue", "drain", "--type", "quick", "--timeout", "60"],
            env=a.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 20
            while "quick" not in cb.stats()["paused"]:  # the drain paused: it waits now
                assert time.monotonic() < deadline and drain.poll() is None
            assert drain.poll() is None  # the task on B runs still
            hold.write("go")
            out, err = drain.communicate(timeout=60)
        finally:
            if drain.poll() is None:
                drain.kill()
        assert (drain.returncode, out) == (0, "drained: nothing runs\n"), err
        assert c.get(first["id"])["status"] == "completed"
        assert c.get(after["id"])["status"] == "pending"  # no daemon started it
        assert cb.queue()["all_paused"] is False
        c.resume()
        assert c.wait([after["id"]], timeout=20)["tasks"][0]["status"] == "completed"
    assert record.read_text().split() == [first["id"], after["id"]]
    a_gate.write("go")
