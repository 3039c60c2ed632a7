"""Cancelling: pending, running, finished; bulk; and that nothing of a stopped task survives."""

from __future__ import annotations

import os
import threading

import psutil
import pytest
from support import gone, wait_started

from msearchd.errors import InvalidState, NotFound


def running_command(client, argv, fifo=None):
    task = client.submit("command", {"argv": argv}, priority=0)
    wait_started(client, task["id"])
    return task


def test_cancel_pending_task(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate = fifo("gate")
    with d.client() as c:
        held = running_command(c, ["sh", "-c", f"read line < {gate}"])
        queued = c.submit("file_scan", {})
        result = c.cancel(queued["id"])
        assert result["task"]["status"] == "cancelled"
        assert result["task"]["stop_reason"] == "not_started"
        assert result["cancelled_dependents"] == 0
        assert c.get(queued["id"])["finished_at"] is not None
        events = [e["event"] for e in c.history(queued["id"])]
        assert events == ["submitted", "cancel_requested", "cancelled"]  # the request, then its effect
        gate.write()
        c.wait([held["id"]], timeout=20)
        # The cancelled task never ran, even once a worker was free.
        assert c.get(queued["id"])["attempts"] == 0


def test_cancel_running_needs_running_flag(client, fifo):
    pipe = fifo("started")
    task = client.submit("command", {"argv": ["sh", "-c", f"echo up > {pipe}; exec sleep 1000"]})
    pipe.read()  # the command runs: the worker started it
    with pytest.raises(InvalidState, match="is running; add running=true"):
        client.cancel(task["id"])
    assert client.get(task["id"])["status"] == "running"
    result = client.cancel(task["id"], running=True)
    assert result["task"]["status"] == "cancelled"
    assert result["task"]["stop_reason"] == "sigterm"


def leased_behind_a_blocked_task(c, fifo, tmp_path, n: int = 4):
    """Hand the only worker a blocked `quick` task followed by n more that wait their turn in it."""
    for _ in range(5):  # teach the daemon that quick tasks are short: they go out several at a time
        c.wait([c.submit("quick")["id"]], timeout=20)
    gate, hold, started = fifo("gate"), fifo("hold"), fifo("started")
    c.submit("stepper", {"fifo": str(gate), "steps": 1}, priority=0)
    record = tmp_path / "ran"
    head = c.submit("quick", {"fifo": str(hold), "record": str(record), "started": str(started)})
    queued = [c.submit("quick", {"record": str(record), "i": i}) for i in range(n)]
    gate.write()  # the stepper ends: the worker's next lease is the head and the queued tasks
    started.read()  # the head runs, blocked on `hold`
    # Running too (a worker holds them), although the head has not ended: they are in its lease.
    assert not c.wait([t["id"] for t in queued], statuses=["running"], timeout=20)["timed_out"]
    return head, queued, hold, record


def test_a_task_handed_out_but_not_started_is_cancelled_like_a_pending_one(make_daemon, fifo, tmp_path):
    """It counts as running from the moment a worker has it, but has not started: a plain cancel
    takes it back, as one with --running does. Neither runs; the rest of the lease runs on."""
    with make_daemon(workers=1).client() as c:
        head, queued, hold, record = leased_behind_a_blocked_task(c, fifo, tmp_path)
        plain, forced = queued[1], queued[2]
        for target, running in ((plain, False), (forced, True)):
            result = c.cancel(target["id"], running=running)
            assert result["task"]["status"] == "cancelled"
            assert result["task"]["stop_reason"] == "not_started"
            assert result["task"]["attempts"] == 0 and result["task"]["started_at"] is None
        with pytest.raises(InvalidState, match="is running; add running=true"):
            c.cancel(head["id"])  # the one it runs needs --running, as ever
        events = [(e["event"], e.get("by"), e.get("running")) for e in c.history(plain["id"])]
        assert events == [
            ("submitted", None, None),
            ("cancel_requested", "cancel", False),
            ("cancelled", None, None),
        ]
        hold.write()  # the head ends; the worker goes on with its lease
        done = c.wait([t["id"] for t in [head, *queued]], timeout=20)
        assert [t["status"] for t in done["tasks"]] == [
            "completed",
            "completed",
            "cancelled",
            "cancelled",
            "completed",
        ]
        ran = record.read_text().split()
        assert ran == [t["id"] for t in [head, *queued] if t not in (plain, forced)]  # in queue order


def test_bulk_cancels_take_back_tasks_handed_out_but_not_started(make_daemon, fifo, tmp_path):
    with make_daemon(workers=1).client() as c:
        head, queued, hold, record = leased_behind_a_blocked_task(c, fifo, tmp_path)
        waiting = c.submit("quick", {"record": str(record)})
        result = c.cancel_by_type("quick")
        assert (result["cancelled"], result["failed"]) == (len(queued) + 1, 0)
        for task in [*queued, waiting]:
            got = c.get(task["id"])
            assert (got["status"], got["stop_reason"], got["attempts"]) == ("cancelled", "not_started", 0)
        assert c.get(head["id"])["status"] == "running"  # not asked to stop what runs
        hold.write()
        last = c.submit("quick", {"record": str(record)})  # runs after whatever the lease still held
        assert c.wait([head["id"], last["id"]], timeout=20)["tasks"][0]["status"] == "completed"
        assert record.read_text().split() == [head["id"], last["id"]]


def test_cancelling_a_running_task_puts_the_rest_of_its_lease_back_in_the_queue(make_daemon, fifo, tmp_path):
    with make_daemon(workers=1).client() as c:
        head, queued, _, record = leased_behind_a_blocked_task(c, fifo, tmp_path)
        result = c.cancel(head["id"], running=True)
        assert (result["task"]["status"], result["task"]["stop_reason"]) == ("cancelled", "sigterm")
        done = c.wait([t["id"] for t in queued], timeout=20)
        assert [(t["status"], t["attempts"]) for t in done["tasks"]] == [("completed", 1)] * len(queued)
        assert record.read_text().split() == [t["id"] for t in [head, *queued]]


def test_a_worker_that_dies_loses_only_the_task_it_was_running(make_daemon, fifo, tmp_path):
    with make_daemon(workers=1).client() as c:
        for _ in range(5):
            c.wait([c.submit("quick")["id"]], timeout=20)
        gate = fifo("gate")
        c.submit("stepper", {"fifo": str(gate), "steps": 1}, priority=0)
        crashing = c.submit("quick", {"crash": True})
        after = [c.submit("quick", {"i": i}) for i in range(4)]
        gate.write()
        done = c.wait([crashing["id"]] + [t["id"] for t in after], timeout=20)
        statuses = [(t["status"], t["attempts"]) for t in done["tasks"]]
        assert statuses == [("failed", 1)] + [("completed", 1)] * len(after)
        assert "worker killed by SIGKILL" in done["tasks"][0]["error"]


def test_cancel_finished_task_is_refused(client):
    done = client.submit("command", {"argv": ["true"]})
    failed = client.submit("command", {"argv": ["false"]})
    client.wait([done["id"], failed["id"]], timeout=20)
    for task, status in ((done, "completed"), (failed, "failed")):
        with pytest.raises(InvalidState, match=f"already {status}"):
            client.cancel(task["id"], running=True)
        assert client.get(task["id"])["status"] == status
    with pytest.raises(NotFound):
        client.cancel("task_4242")


def test_cancelled_command_leaves_no_process(client, fifo):
    """A command that ignores SIGTERM and forks a grandchild: both are gone when cancel returns."""
    pipe = fifo("pids")
    script = f"trap '' TERM; sleep 1000 & echo $$ $! > {pipe}; wait"
    task = client.submit("command", {"argv": ["sh", "-c", script]}, priority=0)
    shell, grandchild = map(int, pipe.read().split())
    worker = client.get(task["id"])["worker_pid"]
    assert psutil.pid_exists(shell) and psutil.pid_exists(grandchild)
    result = client.cancel(task["id"], running=True)
    assert result["task"]["stop_reason"] == "killed"  # SIGTERM was ignored: SIGKILL after the grace period
    assert gone(shell) and gone(grandchild) and gone(worker)


def test_cancel_kills_a_process_the_task_moved_out_of_its_tree(client, fifo):
    """setsid and a double fork, as daemons start: the process leaves the worker's process group and
    session, and its parent exits. The cancel still finds it (in the worker's cgroup, or under the
    worker, a child subreaper, where there is none)."""
    escaped_pid, moved = fifo("escaped"), fifo("moved")
    script = (
        f"setsid sh -c 'sleep 1000 & echo $! > {escaped_pid}'; "  # the inner shell exits at once
        f"echo done > {moved}; exec sleep 1000"
    )
    task = client.submit("command", {"argv": ["sh", "-c", script]}, priority=0)
    escaped = psutil.Process(int(escaped_pid.read()))
    assert moved.read() == "done"  # its parent is gone: it is no longer under the worker
    worker = client.get(task["id"])["worker_pid"]
    assert os.getsid(escaped.pid) != os.getsid(worker)
    assert os.getpgid(escaped.pid) != os.getpgid(worker)
    result = client.cancel(task["id"], running=True)
    assert result["task"]["stop_reason"] == "sigterm"
    assert gone(escaped.pid) and gone(worker)


def test_cancelled_python_handler_leaves_escaped_grandchild_dead(client, fifo):
    """A grandchild that left the process group (setsid) is still found and killed."""
    pipe = fifo("pids")
    task = client.submit("spawner", {"fifo": str(pipe), "escape": True}, priority=0)
    worker, grandchild = map(int, pipe.read().split())
    assert psutil.Process(grandchild).ppid() == worker
    result = client.cancel(task["id"], running=True)
    assert result["task"]["status"] == "cancelled"
    assert gone(worker) and gone(grandchild)


def test_stop_reasons(client, fifo):
    pipe = fifo("started")
    polite = client.submit("polite", {"fifo": str(pipe)}, priority=0)
    pipe.read()
    assert client.cancel(polite["id"], running=True)["task"]["stop_reason"] == "cooperative"

    stubborn = client.submit("stubborn", {"fifo": str(pipe)}, priority=0)
    pid = int(pipe.read())
    assert client.cancel(stubborn["id"], running=True)["task"]["stop_reason"] == "killed"
    assert gone(pid)

    plain = client.submit("quick", {"started": str(pipe), "sleep": 1000}, priority=0)
    pipe.read()
    # it never looks at ctx.cancelled: SIGTERM interrupts it at once
    assert client.cancel(plain["id"], running=True)["task"]["stop_reason"] == "sigterm"


def test_worker_is_replaced_after_a_cancel(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        first = running_command(c, ["sleep", "1000"])
        c.cancel(first["id"], running=True)
        after = c.submit("command", {"argv": ["true"]})
        assert c.wait([after["id"]], timeout=20)["tasks"][0]["status"] == "completed"
        assert c.status()["workers"] == {"busy": 0, "total": 1}
    # A cancel is routine: the worker it stopped is not reported as something gone wrong.
    assert [ln for ln in d.lines if " WARNING " in ln or " ERROR " in ln] == []


def test_cancel_cascades_to_dependents(client, fifo):
    gate = fifo("gate")
    root = running_command(client, ["sh", "-c", f"read line < {gate}"])
    child = client.submit("noop", depends_on=[root["id"]])
    grandchild = client.submit("noop", depends_on=[child["id"]])
    unrelated = client.submit("file_scan")
    assert client.get(child["id"])["status"] == "blocked"
    result = client.cancel(root["id"], running=True)
    assert result["cancelled_dependents"] == 2
    for t in (child, grandchild):
        got = client.get(t["id"])
        assert got["status"] == "cancelled"
        assert got["stop_reason"] == "not_started"
    assert "task_" in client.get(grandchild["id"])["error"]
    assert client.get(unrelated["id"])["status"] != "cancelled"


def test_cancel_all_counts_and_spares_running_unless_asked(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate = fifo("gate")
    with d.client() as c:
        held = running_command(c, ["sh", "-c", f"read line < {gate}"])
        queued = [c.submit("thumbnail_generate")["id"] for _ in range(5)]
        blocked = c.submit("noop", depends_on=[held["id"]])
        result = c.cancel_all()
        assert (result["cancelled"], result["failed"], result["total"]) == (6, 0, 6)
        assert c.get(held["id"])["status"] == "running"
        assert all(c.get(i)["status"] == "cancelled" for i in [*queued, blocked["id"]])
        again = c.cancel_all(running=True)
        assert (again["cancelled"], again["failed"], again["total"]) == (1, 0, 1)
        assert c.get(held["id"])["status"] == "cancelled"
        assert c.cancel_all() == {"cancelled": 0, "failed": 0, "total": 0, "cancelled_dependents": 0}


def test_cancel_by_type_touches_only_that_type(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate = fifo("gate")
    with d.client() as c:
        held = running_command(c, ["sh", "-c", f"read line < {gate}"])
        thumbs = [c.submit("thumbnail_generate")["id"] for _ in range(3)]
        scans = [c.submit("file_scan")["id"] for _ in range(2)]
        after_thumb = c.submit("file_scan", depends_on=[thumbs[0]])
        result = c.cancel_by_type("thumbnail_generate")
        assert result == {
            "cancelled": 3,
            "failed": 0,
            "total": 3,
            "task_type": "thumbnail_generate",
            "cancelled_dependents": 1,
        }
        assert all(c.get(i)["status"] == "pending" for i in scans)
        assert c.get(after_thumb["id"])["status"] == "cancelled"
        assert c.cancel_by_type("command")["total"] == 0  # the running command is spared
        result = c.cancel_by_type("command", running=True)
        assert (result["cancelled"], result["total"]) == (1, 1)
        assert c.get(held["id"])["status"] == "cancelled"


def test_concurrent_cancels_of_one_running_task_agree(daemon, fifo):
    import threading

    pipe = fifo("started")
    with daemon.client() as c:
        task = c.submit("stubborn", {"fifo": str(pipe)}, priority=0)
        pipe.read()
    answers: list[object] = []

    def cancel() -> None:
        with daemon.client() as mine:
            try:
                answers.append(mine.cancel(task["id"], running=True)["task"]["status"])
            except InvalidState as exc:
                answers.append(exc.code)

    threads = [threading.Thread(target=cancel) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 3
    assert "cancelled" in answers
    assert set(answers) <= {"cancelled", "invalid_state"}
    with daemon.client() as c:
        assert c.get(task["id"])["status"] == "cancelled"


def test_cancel_all_is_not_outrun_by_the_dispatcher_nor_by_new_dependents(make_daemon, fifo):
    """A cancel-all of many tasks works in chunks, answering other requests in between. Workers that
    free up meanwhile start none of the tasks it is cancelling; a task submitted meanwhile that depends
    on one of them is cancelled with it, not left blocked for ever."""
    d = make_daemon(workers=2)
    gates = [fifo(f"gate{i}") for i in range(2)]
    with d.client() as c:
        held = [c.submit("command", {"argv": ["sh", "-c", f"read x < {g}"]}, priority=0) for g in gates]
        for task in held:
            wait_started(c, task["id"])
        ids = [i for _ in range(30) for i in c.submit_many([{"type": "noop"}] * 1000)["task_ids"]]
        result: dict[str, int] = {}

        def cancel_all() -> None:
            with d.client() as other:
                result.update(other.cancel_all())

        with c.events(types=["noop"]) as stream:
            canceller = threading.Thread(target=cancel_all)
            canceller.start()
            assert next(stream)["event"] == "cancelled"  # the first chunk is done; the rest is to come
        for gate in gates:
            gate.write()  # both workers free up while it goes on
        try:
            late = c.submit("noop", depends_on=[ids[-1]])["id"]
        except InvalidState:  # the cancel-all reached that task first: nothing can wait on it
            late = None
        canceller.join(timeout=60)
        assert result["cancelled"] == len(ids)
        assert c.count(status="completed", task_type="noop") == 0
        assert [t["status"] for t in c.wait([t["id"] for t in held], timeout=20)["tasks"]] == [
            "completed"
        ] * 2
        if late is not None:
            ended = c.wait([late], timeout=20)["tasks"][0]
            assert (ended["status"], ended["error"]) == ("cancelled", f"dependency {ids[-1]} was cancelled")
