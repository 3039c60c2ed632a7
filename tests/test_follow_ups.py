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
