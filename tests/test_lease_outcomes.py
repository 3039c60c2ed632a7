"""How the tasks of a lease end when a stop cuts it short: each as it really did, nothing lost."""

from __future__ import annotations

from test_cancel import leased_behind_a_blocked_task

ROUNDS = 12
BATCH = 300
# Each task takes a couple of milliseconds: a lease holds a few dozen, so that a bulk cancel finds
# the workers in the middle of their leases, with the ends of the entries before not yet reported.
SHORT = {"sleep": 0.002}


def test_a_bulk_running_cancel_loses_no_outcome_of_a_lease(make_daemon, tmp_path):
    """A bulk cancel stops the workers in the middle of their leases while they report the ends of
    the entries before: each of those ends as it did (completed if it ran), none as failed."""
    record = tmp_path / "ran"
    d = make_daemon(workers=2)
    with d.client() as c:
        for _ in range(5):  # teach the daemon that these tasks are short: they go out several at a time
            c.wait([c.submit("quick", SHORT)["id"]], timeout=20)
        for _ in range(ROUNDS):
            ids = c.submit_many([{"type": "quick", "data": {**SHORT, "record": str(record)}}] * BATCH)
            ids = ids["task_ids"]
            c.wait(ids[:3], statuses=["running", "completed"], timeout=20)  # leases went out
            c.cancel_all(running=True)
            done = c.wait(ids, timeout=60)
            assert not done["timed_out"]
            ran = set(record.read_text().split()) if record.exists() else set()
            for task in done["tasks"]:
                assert task["status"] in ("completed", "cancelled"), (task, c.history(task["id"]))
                if task["status"] == "completed":
                    assert task["id"] in ran
    assert "socket.send() raised exception" not in d.log


def test_kill9_returns_tasks_that_waited_in_a_lease_without_spending_an_attempt(make_daemon, fifo, tmp_path):
    """Tasks handed to a worker behind a task that runs had not started when the daemon was killed:
    they go back to the queue as they were, with no attempt spent and no start; only the task that
    ran counts an interrupted run."""
    d = make_daemon(workers=1, settings="max_attempts = 1\n")
    with d.client() as c:
        head, queued, _, record = leased_behind_a_blocked_task(c, fifo, tmp_path)
        for task in queued:
            assert c.get(task["id"])["started_at"] is None  # handed out, not started
    d.kill9()
    d.start()
    with d.client() as c:
        interrupted = c.get(head["id"])
        assert (interrupted["status"], interrupted["attempts"]) == ("failed", 1)
        assert interrupted["error"] == "interrupted 1 times by a daemon stop; not retried"
        for task in queued:
            requeued = [e for e in c.history(task["id"]) if e["event"] == "requeued"]
            assert [e["reason"] for e in requeued] == ["the daemon stopped before it started"]
        done = c.wait([t["id"] for t in queued], timeout=20)
        assert not done["timed_out"]
        # Each ran once, now: its one attempt was not spent by the lease the killed daemon held.
        assert [(t["status"], t["attempts"]) for t in done["tasks"]] == [("completed", 1)] * len(queued)
        assert record.read_text().split() == [head["id"], *(t["id"] for t in queued)]


def test_a_task_that_waited_in_a_lease_and_runs_long_counts_as_started(make_daemon, fifo, tmp_path):
    """Its start is on record once its lease overran: a kill -9 then counts as an interrupted run of
    it, as for any task that runs."""
    d = make_daemon(workers=1, settings="max_attempts = 1\n")
    with d.client() as c:
        for _ in range(5):  # teach the daemon that quick tasks are short: they go out several at a time
            c.wait([c.submit("quick")["id"]], timeout=20)
        gate, hold, started = fifo("gate"), fifo("hold"), fifo("started")
        c.submit("stepper", {"fifo": str(gate), "steps": 1}, priority=0)
        first = c.submit("quick")
        long = c.submit("quick", {"fifo": str(hold), "started": str(started)})
        after = c.submit("quick")
        gate.write()  # the stepper ends: the worker's next lease is the three of them
        started.read()  # the second runs, blocked
        assert f"{long['id']} overran its lease" in d.wait_for_log("overran its lease")
        assert c.get(long["id"])["started_at"] is not None
        assert c.get(after["id"])["status"] == "pending"  # went back to the queue
        assert c.wait([first["id"]], timeout=20)["tasks"][0]["status"] == "completed"
    d.kill9()
    d.start()
    with d.client() as c:
        interrupted = c.get(long["id"])
        assert (interrupted["status"], interrupted["attempts"]) == ("failed", 1)
        done = c.wait([after["id"]], timeout=20)
        assert [(t["status"], t["attempts"]) for t in done["tasks"]] == [("completed", 1)]


def test_a_pause_puts_back_what_a_worker_holds_and_has_not_started(make_daemon, fifo, tmp_path):
    """Tasks a worker holds in its lease and has not reached do not start once the queue is paused:
    they are pending again when the pause answers, no attempt spent. The one that runs goes on."""
    with make_daemon(workers=1).client() as c:
        head, queued, hold, record = leased_behind_a_blocked_task(c, fifo, tmp_path)
        assert c.pause()["all_paused"]
        back = [(t["status"], t["attempts"], t["worker_pid"]) for t in map(c.get, (t["id"] for t in queued))]
        assert back == [("pending", 0, None)] * len(queued)
        assert c.get(head["id"])["status"] == "running"
        hold.write()  # the head ends; the worker passes the entries it was told to skip
        drained = c.drain(timeout=20)
        assert drained["drained"] and drained["running"] == []
        assert record.read_text().split() == [head["id"]]  # none of the others ran
        assert all(c.get(t["id"])["status"] == "pending" for t in queued)
        c.resume()
        done = c.wait([t["id"] for t in queued], timeout=20)
        assert {t["status"] for t in done["tasks"]} == {"completed"}
