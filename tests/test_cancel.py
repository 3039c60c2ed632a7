"""Cancelling: pending, running, finished; bulk; and that nothing of a stopped task survives."""

from __future__ import annotations

import psutil
import pytest
from support import gone

from msearchd.errors import InvalidState, NotFound


def running_command(client, argv, fifo=None):
    task = client.submit("command", {"argv": argv}, priority=0)
    client.wait([task["id"]], statuses=["running"], timeout=20)
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
        gate.write()
        c.wait([held["id"]], timeout=20)
        # The cancelled task never ran, even once a worker was free.
        assert c.get(queued["id"])["attempts"] == 0


def test_cancel_running_needs_running_flag(client, tmp_path):
    task = running_command(client, ["sleep", "1000"])
    with pytest.raises(InvalidState, match="is running; add --running"):
        client.cancel(task["id"])
    assert client.get(task["id"])["status"] == "running"
    result = client.cancel(task["id"], running=True)
    assert result["task"]["status"] == "cancelled"
    assert result["task"]["stop_reason"] == "sigterm"


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

    plain = client.submit("stepper", {"fifo": str(pipe), "steps": 1}, priority=0)
    client.wait([plain["id"]], statuses=["running"], timeout=20)
    # stepper never looks at ctx.cancelled: SIGTERM interrupts it at once
    assert client.cancel(plain["id"], running=True)["task"]["stop_reason"] == "sigterm"


def test_worker_is_replaced_after_a_cancel(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        first = running_command(c, ["sleep", "1000"])
        c.cancel(first["id"], running=True)
        after = c.submit("command", {"argv": ["true"]})
        assert c.wait([after["id"]], timeout=20)["tasks"][0]["status"] == "completed"
        assert c.status()["workers"] == {"busy": 0, "total": 1}


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
