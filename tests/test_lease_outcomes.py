"""How the tasks of a lease end when a stop cuts it short: each as it really did, nothing lost."""

from __future__ import annotations

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
