"""Follow-up tasks a handler submits while it runs: each request of the handler gets an answer."""

from __future__ import annotations


def test_a_follow_up_submit_that_fails_in_the_daemon_is_answered(make_daemon):
    """Whatever goes wrong with a handler's follow-up submit, the handler is answered (TaskFailed),
    rather than waiting for ever for a reply, and its worker goes on."""
    d = make_daemon(workers=1)
    with d.client() as c:
        parent = c.submit("noop", {"follow_ups": [{"type": "noop", "depends_on": [{"not": "an id"}]}]})
        done = c.wait([parent["id"]], timeout=20)
        assert not done["timed_out"], "the handler still waits for an answer"
        (task,) = done["tasks"]
        assert task["status"] == "failed"
        assert task["error"].startswith("follow-up noop task refused: ")
        assert c.count(task_type="noop") == 1  # nothing was submitted
        after = c.submit("noop")
        assert c.wait([after["id"]], timeout=20)["tasks"][0]["status"] == "completed"


def test_follow_ups_submitted_together_depend_on_each_other_by_index(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        tasks = [
            {"type": "quick", "priority": 11},
            {"type": "quick", "after": [0]},
            {"type": "quick", "after": [0, 1]},
        ]
        parent = c.submit("batcher", {"tasks": tasks}, priority=0)
        (done,) = c.wait([parent["id"]], timeout=20)["tasks"]
        assert done["status"] == "completed", done["error"]
        first, second, third = (c.get(i) for i in done["result"])
        assert first["priority"] == 11
        assert second["depends_on"] == [first["id"]]
        assert third["depends_on"] == [first["id"], second["id"]]


def test_follow_ups_submitted_together_are_refused_together(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        tasks = [{"type": "quick"}, {"type": "quick", "priority": 99}]
        parent = c.submit("batcher", {"tasks": tasks})
        (done,) = c.wait([parent["id"]], timeout=20)["tasks"]
        assert done["status"] == "failed"
        assert done["error"].startswith("follow-up tasks refused: tasks[1]: ")
        assert c.count(task_type="quick") == 0
        forward = c.submit("batcher", {"tasks": [{"type": "quick", "after": [0]}]})
        (done,) = c.wait([forward["id"]], timeout=20)["tasks"]
        assert done["error"] == "follow-up tasks refused: tasks[0].after must list indices of earlier tasks"
