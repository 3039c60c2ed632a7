"""The REST paths of keys, selections and the queue's pause: the same operations as the RPC's."""

from __future__ import annotations

from test_http import call, hold_worker, start_with_shim

API = "/api/v1"


def test_rest_submit_with_a_key(make_daemon):
    d, shim = start_with_shim(make_daemon, workers=1)
    with d.client() as c:
        c.pause()
    first = call(shim.url, "POST", f"{API}/tasks", json_body={"type": "file_scan", "key": "scan:/a"})
    assert first.status == 201 and first.body["data"]["task"]["key_outcome"] == "created"
    again = call(shim.url, "POST", f"{API}/tasks", json_body={"type": "file_scan", "key": "scan:/a"})
    assert again.status == 200 and again.body["data"]["task_id"] == first.body["data"]["task_id"]
    assert "已有相同键的任务" in again.body["message"]
    body = {"type": "file_scan", "key": "scan:/a", "on_conflict": "replace"}
    replaced = call(shim.url, "POST", f"{API}/tasks", json_body=body)
    assert (
        replaced.status == 201 and replaced.body["data"]["task"]["replaced"] == first.body["data"]["task_id"]
    )
    bad = call(shim.url, "POST", f"{API}/tasks", json_body={"type": "file_scan", "key": 5})
    assert bad.status == 400
    d.stop()


def test_rest_selection_dry_run_then_run(make_daemon):
    d, shim = start_with_shim(make_daemon, workers=1)
    with d.client() as c:
        c.pause()
        for path in ("/mnt/nas/a", "/mnt/nas/b", "/home/c"):
            c.submit("thumbnail_generate", {"path": path})
    select = {"types": ["thumb*"], "where": ["path^=/mnt/nas/"]}
    dry = call(shim.url, "POST", f"{API}/selection/cancel", json_body={"select": select, "dry_run": True})
    assert dry.status == 200 and dry.body["result"]["count"] == 2
    run = {"select": dry.body["result"]["selection"], "up_to": dry.body["result"]["up_to"], "expect": 2}
    done = call(shim.url, "POST", f"{API}/selection/cancel", json_body=run)
    assert done.body["result"]["cancelled"] == 2 and done.body["result"]["changed_meanwhile"] is False
    prio = call(shim.url, "POST", f"{API}/selection/priority", json_body={"select": {}, "priority": 11})
    assert prio.body["result"]["changed"] == 1
    refused = call(shim.url, "POST", f"{API}/selection/cancel", json_body={"select": {"older_than": "soon"}})
    assert refused.status == 400 and "older_than" in refused.body["detail"]
    retry = call(shim.url, "POST", f"{API}/selection/retry", json_body={"dry_run": True})
    assert retry.body["result"]["count"] == 0
    d.stop()


def test_rest_pause_drain_resume(make_daemon):
    d, shim = start_with_shim(make_daemon, workers=1)
    with d.client() as c:
        held = hold_worker(c)
        paused = call(shim.url, "POST", f"{API}/queue/pause", json_body={"types": ["quick"]})
        assert [p["type"] for p in paused.body["result"]["paused"]] == ["quick"]
        assert call(shim.url, "GET", f"{API}/tasks/stats").body["paused"] == ["quick"]
        drain = call(shim.url, "POST", f"{API}/queue/drain", json_body={"timeout": 0.1})
        assert drain.body["result"]["drained"] is False and drain.body["result"]["running"] == [held["id"]]
        c.cancel(held["id"], running=True)
        assert call(shim.url, "POST", f"{API}/queue/drain", json_body={}).body["result"]["drained"] is True
        state = call(shim.url, "GET", f"{API}/queue").body["result"]
        assert (
            state["all_paused"] and [h["event"] for h in state["history"]] == ["queue_paused"] * 2
        )  # quick, then all
        resumed = call(shim.url, "POST", f"{API}/queue/resume", json_body={})
        assert resumed.body["result"]["paused"] == []
        too_long = call(shim.url, "POST", f"{API}/queue/drain", json_body={"timeout": 3600})
        assert too_long.status == 400
    d.stop()


def test_a_retry_refused_for_its_key_says_why_alone_and_in_a_batch(make_daemon):
    """The status (failed, not retried) does not explain this refusal: the daemon's sentence does."""
    d, shim = start_with_shim(make_daemon, workers=1)
    with d.client() as c:
        failed = c.submit("fail", {"message": "disk full"}, key="scan:/a")["id"]
        c.wait([failed], timeout=20)
        c.pause()
        holder = c.submit("file_scan", key="scan:/a")["id"]
    single = call(shim.url, "POST", f"{API}/tasks/{failed}/retry")
    assert single.status == 409
    assert single.body["detail"].startswith(f"任务无法重试: {failed}（")  # noqa: RUF001
    assert holder in single.body["detail"]
    batch = call(shim.url, "POST", f"{API}/tasks/retry", json_body={"task_ids": [failed]})
    assert batch.body["failed"] == 1 and batch.body["results"][0]["error"] == single.body["detail"]
    d.stop()
