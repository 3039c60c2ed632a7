"""Retry rules, lineage, and how dependencies react to failure, cancel and retry."""

from __future__ import annotations

import pytest

from msearchd.errors import InvalidState, NotFound


def failed_task(client, **kw):
    task = client.submit("fail", {"message": "disk full"}, **kw)
    assert client.wait([task["id"]], timeout=20)["tasks"][0]["status"] == "failed"
    return task


def test_retry_creates_a_linked_copy(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate = fifo("gate")
    with d.client() as client:
        first, second = client.submit("noop")["id"], client.submit("noop")["id"]
        assert not client.wait([first, second], timeout=20)["timed_out"]
        old = failed_task(client, priority=4, depends_on=[first, second])
        # The only worker is held: the copy stays as the retry made it.
        held = client.submit("command", {"argv": ["sh", "-c", f"read line < {gate}"]}, priority=0)
        client.wait([held["id"]], statuses=["running"], timeout=20)
        answer = client.retry(old["id"])
        assert answer["task_id"] == old["id"]
        new = client.get(answer["new_task_id"])
        assert new["id"] != old["id"]
        assert (new["type"], new["data"], new["priority"]) == ("fail", {"message": "disk full"}, 4)
        assert new["depends_on"] == [first, second]
        assert new["retry_of"] == old["id"]
        assert (new["status"], new["attempts"], new["error"], new["started_at"]) == ("pending", 0, None, None)
        original = client.get(old["id"])
        assert original["retried_as"] == new["id"]
        assert original["status"] == "failed"  # retry never revives a task
        assert (original["error"], original["attempts"]) == ("disk full", 1)
        gate.write()
        ended = client.wait([new["id"]], timeout=20)["tasks"][0]
        assert (ended["status"], ended["attempts"]) == ("failed", 1)


def test_only_failed_tasks_can_be_retried(client):
    done = client.submit("noop")
    client.wait([done["id"]], timeout=20)
    with pytest.raises(InvalidState, match="is completed; only failed tasks can be retried"):
        client.retry(done["id"])
    pending = client.submit("file_scan", depends_on=[client.submit("fail")["id"]])
    with pytest.raises(InvalidState, match="only failed"):
        client.retry(pending["id"])
    with pytest.raises(NotFound, match="task_999 does not exist"):
        client.retry(999)


def test_a_failed_task_is_retried_once(client):
    old = failed_task(client)
    first = client.retry(old["id"])
    with pytest.raises(InvalidState, match=f"already retried as {first['new_task_id']}"):
        client.retry(old["id"])


def test_failed_dependency_blocks_then_retry_hands_over(client, tmp_path):
    marker = tmp_path / "ok"
    # Fails on its first run, succeeds on its second: the file appears in between.
    flaky = client.submit("command", {"argv": ["sh", "-c", f"test -e {marker}"]})
    after = client.submit("noop", depends_on=[flaky["id"]])
    client.wait([flaky["id"]], timeout=20)
    blocked = client.get(after["id"])
    assert blocked["status"] == "blocked"
    assert blocked["blocked_reason"] == f"dependency {flaky['id']} failed"
    marker.touch()
    answer = client.retry(flaky["id"])
    assert answer["handed_over"] == [after["id"]]
    assert client.get(after["id"])["depends_on"] == [answer["new_task_id"]]
    done = client.wait([answer["new_task_id"], after["id"]], timeout=20)
    assert [t["status"] for t in done["tasks"]] == ["completed", "completed"]


def test_dependents_wait_for_all_dependencies(make_daemon, fifo):
    d = make_daemon(workers=2)
    gate = fifo("gate")
    with d.client() as c:
        slow = c.submit("command", {"argv": ["sh", "-c", f"read line < {gate}"]})
        quick = c.submit("noop")
        both = c.submit("noop", depends_on=[slow["id"], quick["id"]])
        c.wait([quick["id"]], timeout=20)
        state = c.get(both["id"])
        assert state["status"] == "blocked"
        assert state["blocked_reason"] == f"waiting for {slow['id']}"
        gate.write()
        assert c.wait([both["id"]], timeout=20)["tasks"][0]["status"] == "completed"
        assert c.get(both["id"])["started_at"] >= c.get(slow["id"])["finished_at"]


def test_dependency_on_missing_or_cancelled_task_is_refused(client):
    with pytest.raises(NotFound, match="dependency task_77 does not exist"):
        client.submit("noop", depends_on=["task_77"])
    queued = client.submit("file_scan", depends_on=[client.submit("fail")["id"]])
    client.cancel(queued["id"])
    with pytest.raises(InvalidState, match=f"dependency {queued['id']} is cancelled"):
        client.submit("noop", depends_on=[queued["id"]])


def test_new_dependents_of_a_retried_task_follow_the_retry(client):
    old = failed_task(client)
    new_id = client.retry(old["id"])["new_task_id"]
    later = client.submit("noop", depends_on=[old["id"]])
    assert client.get(later["id"])["depends_on"] == [new_id]


def test_retry_all_failed_by_type(client):
    a = failed_task(client)
    b = client.submit("command", {"argv": ["false"]})
    client.wait([b["id"]], timeout=20)
    results = client.retry_failed("fail")
    assert [r["task_id"] for r in results] == [a["id"]]
    assert client.get(b["id"])["retried_as"] is None
    again = results[0]["new_task_id"]
    client.wait([again], timeout=20)  # "fail" fails again: its retry is itself a failed task
    results = client.retry_failed()
    assert [r["task_id"] for r in results] == [b["id"], again]
    client.wait([r["new_task_id"] for r in results], timeout=20)
    assert {r["task_id"] for r in client.retry_failed()} == {r["new_task_id"] for r in results}


def test_retry_all_failed_goes_through_many_chunks_in_order(client):
    ids = client.submit_many([{"type": "fail"}] * 2_500)["task_ids"]
    assert {t["status"] for t in client.wait(ids, timeout=60)["tasks"]} == {"failed"}
    results = client.retry_failed("fail")
    assert [r["task_id"] for r in results] == ids  # oldest first, each once, none skipped
    new_ids = [r["new_task_id"] for r in results]
    assert len(set(new_ids)) == len(ids) and not set(new_ids) & set(ids)
    for r in results[::250]:
        assert client.get(r["task_id"])["retried_as"] == r["new_task_id"]


def test_a_retry_holds_its_tasks_key_and_is_refused_while_another_task_holds_it(client):
    """A retry is a submit under the failed task's key: the key dedupes it as it would the first."""
    old = failed_task(client, key="scan:/a")
    client.pause()  # what the retries queue stays unfinished
    retried = client.retry(old["id"])["new_task_id"]
    again = client.submit("fail", {"message": "disk full"}, key="scan:/a")
    assert (again["key_outcome"], again["id"]) == ("kept", retried)

    other = failed_task_while_paused(client, key="scan:/b")
    holder = client.submit("file_scan", key="scan:/b")
    with pytest.raises(InvalidState, match=rf"its key 'scan:/b' is held by {holder['id']} \(pending\)"):
        client.retry(other)
    assert client.get(other)["retried_as"] is None  # refused: nothing written
    selected = client.retry_selected({"ids": [other]})
    assert selected["retried"] == 0 and "held by" in selected["errors"][0]["error"]
    client.cancel(holder["id"])  # the key is free again: the retry takes it
    new = client.retry(other)["new_task_id"]
    assert client.submit("file_scan", key="scan:/b")["id"] == new  # the retry holds it now


def failed_task_while_paused(client, **kw) -> str:
    """A failed task, made while the queue is paused: resume, fail it, pause again."""
    client.resume()
    task = failed_task(client, **kw)["id"]
    client.pause()
    return task
