"""Nothing acknowledged is lost: kill -9 of the daemon, restarts, and a clean stop."""

from __future__ import annotations

import psutil
from support import dead, gone

from msearchd.model import TaskStatus
from msearchd.store import Store


def test_kill9_with_queued_and_running_tasks_loses_nothing(make_daemon, fifo):
    d = make_daemon(workers=1)
    pipe = fifo("pids")
    with d.client() as c:
        running = c.submit(
            "command", {"argv": ["sh", "-c", f"sleep 1000 & echo $! > {pipe}; wait"]}, priority=0
        )
        sleeper = int(pipe.read())
        queued = [c.submit("file_scan", {"n": i}, priority=i % 12)["id"] for i in range(20)]
        blocked = c.submit("noop", depends_on=[queued[0]])
        c.set_priority(queued[5], 0)
        c.cancel(queued[6])
        before = {t["id"]: t for t in c.list(limit=100)}
    d.kill9()
    worker = before[running["id"]]["worker_pid"]
    d.start()
    # The old worker died with the daemon; what it started was killed at restart.
    assert dead(worker) and dead(sleeper), d.log
    with d.client() as c:
        after = {t["id"]: t for t in c.list(limit=100)}
        assert set(after) == set(before)
        for task_id in queued:
            assert (after[task_id]["data"], after[task_id]["priority"]) == (
                before[task_id]["data"],
                before[task_id]["priority"],
            )
        assert after[queued[5]]["priority"] == 0
        assert after[queued[6]]["status"] == "cancelled"
        assert after[blocked["id"]]["depends_on"] == [queued[0]]
        interrupted = after[running["id"]]
        assert interrupted["attempts"] == 1
        # Back in the queue (and, with a free worker, possibly started again at once).
        assert interrupted["status"] in ("pending", "running")
        assert running["id"] in d.wait_for_log("was interrupted")
        c.cancel(running["id"], running=True)


def test_interrupted_too_often_fails(make_daemon, fifo):
    d = make_daemon(workers=1, settings="max_attempts = 2\n")
    pipe = fifo("started")
    with d.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", f"echo x > {pipe}; sleep 1000"]}, priority=0)
    for attempt in (1, 2):
        pipe.read()
        with d.client() as c:
            assert c.get(task["id"])["attempts"] == attempt
        d.kill9()
        d.start()
    with d.client() as c:
        final = c.get(task["id"])
        assert final["status"] == "failed"
        assert final["error"] == "interrupted 2 times by a daemon stop; not retried"


def test_clean_stop_returns_running_tasks_to_pending(make_daemon, fifo):
    d = make_daemon(workers=1)
    pipe = fifo("pids")
    with d.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", f"sleep 1000 & echo $! > {pipe}; wait"]}, priority=0)
        sleeper = int(pipe.read())
        queued = c.submit("file_scan")
    assert d.stop() == 0
    assert gone(sleeper)
    assert not d.socket.exists()
    store = Store(d.state_dir / "tasks.db")
    try:
        stopped = store.get(int(task["id"].removeprefix("task_")))
        assert stopped is not None
        assert (stopped.status, stopped.attempts, stopped.worker_pid) == (TaskStatus.PENDING, 1, None)
        untouched = store.get(int(queued["id"].removeprefix("task_")))
        assert untouched is not None
        assert (untouched.status, untouched.attempts) == (TaskStatus.PENDING, 0)
    finally:
        store.close()
    d.start()
    with d.client() as c:
        again = c.wait([task["id"]], statuses=["running"], timeout=20)["tasks"][0]
        assert again["attempts"] == 2
        c.cancel(task["id"], running=True)


def test_submits_acknowledged_just_before_kill9_survive(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        ids = [c.submit("file_scan", {"i": i}, priority=11)["id"] for i in range(200)]
        batch = c.submit_many([{"type": "file_scan", "data": {"j": j}} for j in range(500)])["task_ids"]
    d.kill9()
    d.start()
    with d.client() as c:
        assert c.count() == 700
        assert c.get(ids[-1])["data"] == {"i": 199}
        assert c.get(batch[-1])["data"] == {"j": 499}


def test_second_daemon_on_same_state_is_refused(make_daemon):
    import subprocess

    d = make_daemon()
    proc = subprocess.run(
        [d.proc.args[0], "--workers", "1"],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "another msearchd" in proc.stderr
    assert "Traceback" not in proc.stderr
    with d.client() as c:
        assert c.status()["pid"] == d.proc.pid


def test_socket_and_folder_are_private(daemon):
    assert oct(daemon.socket.stat().st_mode & 0o777) == oct(0o600)
    assert oct(daemon.socket.parent.stat().st_mode & 0o777) == oct(0o700)
    assert psutil.Process(daemon.proc.pid).uids().real == daemon.socket.stat().st_uid


def test_an_existing_shared_socket_folder_is_left_alone(make_daemon):
    d = make_daemon(start=False)
    d.socket.parent.mkdir()
    d.socket.parent.chmod(0o755)
    d.start()
    assert d.socket.parent.stat().st_mode & 0o777 == 0o755  # never chmod-ed: it may be /tmp
    assert d.socket.stat().st_mode & 0o777 == 0o600
    d.wait_for_log("is open to other users")
