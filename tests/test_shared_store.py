"""The daemon on either store behaves the same; on PostgreSQL, several daemons share one queue."""

from __future__ import annotations

import pytest

from msearchd.errors import InvalidState


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
