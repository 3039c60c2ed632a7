"""What the task manager page stands on, over the RPC and over HTTP: selections answered task by task,
newest-first lists, a task's history with its dependents, a command's log, the page's files, signing in
with the token, and the page's own port."""

# The expected answers are Chinese, like the API document's, with its full-width punctuation.
# ruff: noqa: RUF001

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import MSEARCHD
from test_http import LISTEN_RE, Lines, Shim, finished, free_port, hold_worker, http_get, start_with_shim

from msearchd.errors import InvalidArgument

DEADLINE = 30.0


def failed_task(c) -> str:
    return finished(c, "fail")["id"]


# --- the RPC ---------------------------------------------------------------------------------------------


def test_retry_of_a_selection_retries_exactly_the_failed_ones_and_reports_the_others(daemon):
    with daemon.client() as c:
        failed = [failed_task(c) for _ in range(3)]
        done = finished(c, "noop")["id"]
        again = c.retry(failed[2])["new_task_id"]  # retried already
        answer = c.retry_many([*failed, done, failed[0], "task_999999"])
        results = answer["results"]
        assert [r["task_id"] for r in results] == [*failed, done, "task_999999"]  # duplicates once
        assert [r["success"] for r in results] == [True, True, False, False, False]
        assert (answer["succeeded"], answer["failed"]) == (2, 3)
        assert results[2]["retried_as"] == again and results[2]["code"] == "invalid_state"
        assert results[3]["status"] == "completed" and "only failed" in results[3]["error"]
        assert results[4]["code"] == "not_found"
        for old, r in zip(failed[:2], results[:2], strict=True):
            new = c.get(r["new_task_id"])
            assert new["retry_of"] == old
            assert c.get(old)["retried_as"] == r["new_task_id"]
        retried = sorted(t["retry_of"] for t in c.list(limit=100) if t["retry_of"])
        assert retried == sorted(failed)  # those two, and the one retried before: nothing else


def test_one_task_or_a_selection_not_both(daemon):
    with daemon.client() as c:
        task = c.submit("noop", {})["id"]
        for params in ({}, {"task_id": task, "task_ids": [task]}):
            with pytest.raises(InvalidArgument, match=r"task_id .* or task_ids"):
                c.call("retry", **params)
        with pytest.raises(InvalidArgument, match="task_ids is empty"):
            c.call("cancel", task_ids=[])
        with pytest.raises(InvalidArgument):
            c.call("set_priority", task_ids=["nonsense"], priority=1)


def test_cancel_of_a_selection_stops_running_ones_only_when_asked(make_daemon, fifo):
    d = make_daemon(workers=1)
    with d.client() as c:
        gate = fifo("gate")
        running = c.submit("polite", {"fifo": str(gate)}, priority=0)["id"]
        gate.read()
        parent = c.submit("noop", {}, priority=5)["id"]
        child = c.submit("noop", {}, depends_on=[parent])["id"]
        answer = c.cancel_many([running, parent, child])
        by_id = {r["task_id"]: r for r in answer["results"]}
        assert by_id[parent] == {"task_id": parent, "success": True, "status": "cancelled"}
        # cancelled with its parent by this same request: a success, not "already cancelled"
        assert by_id[child]["success"] is True
        assert by_id[running]["success"] is False and by_id[running]["status"] == "running"
        answer = c.cancel_many([running, parent], running=True)
        by_id = {r["task_id"]: r for r in answer["results"]}
        assert by_id[running] == {"task_id": running, "success": True, "status": "cancelled"}
        assert by_id[parent]["success"] is False and by_id[parent]["status"] == "cancelled"
        assert c.get(running)["status"] == "cancelled"


def test_priority_of_a_selection_changes_waiting_tasks_and_reports_the_rest(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        hold_worker(c)
        waiting = [c.submit("noop", {}, priority=9)["id"] for _ in range(3)]
        c.cancel(waiting[2])
        answer = c.set_priority_many(waiting, 1)
        assert [r["success"] for r in answer["results"]] == [True, True, False]
        assert answer["results"][0]["priority"] == 1
        assert [c.get(t)["priority"] for t in waiting] == [1, 1, 9]
        assert [e["event"] for e in c.history(waiting[0])][-1] == "priority_changed"


def test_list_newest_first_pages_backwards_through_every_filter(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        hold = hold_worker(c)["id"]
        ids = [c.submit("noop" if i % 2 else "quick", {})["id"] for i in range(7)]
        c.cancel(ids[5])
        newest = [t["id"] for t in c.list(order="newest", limit=3)]
        assert c.list(order="newest", offset=7)[0]["id"] == hold
        assert newest == ids[::-1][:3]
        assert [t["id"] for t in c.list(order="newest", limit=3, offset=3)] == ids[::-1][3:6]
        both = [t["id"] for t in c.list(status=["pending", "cancelled"], order="newest")]
        assert both == ids[::-1]
        assert [t["id"] for t in c.list(task_type="noop", order="newest")] == ids[1::2][::-1]
        with pytest.raises(InvalidArgument, match="order must be"):
            c.list(order="sideways")


def test_dependents_and_the_log_of_a_command(daemon):
    with daemon.client() as c:
        parent = c.submit("command", {"argv": ["sh", "-c", "printf 'héllo\\n'; printf 'wörld'"]})["id"]
        child = c.submit("noop", {}, depends_on=[parent])["id"]
        c.wait([child], timeout=DEADLINE)
        assert c.dependents(parent) == [child]
        assert c.dependents(child) == []
        whole = c.read_log(parent)
        assert whole["text"].endswith("héllo\nwörld") and whole["status"] == "completed"
        assert whole["offset"] == whole["size"] == len(whole["text"].encode())
        # from the middle of "é": never half a character
        cut = whole["text"].encode().index("é".encode()) + 1
        rest = c.read_log(parent, cut)
        assert rest["text"].startswith("\ufffd") or rest["text"].startswith("llo")
        assert c.read_log(parent, whole["size"])["text"] == ""
        assert c.read_log(child)["size"] == 0


def test_msearchctl_retry_of_several_ids_is_one_request_answered_per_id(daemon):
    with daemon.client() as c:
        failed = failed_task(c)
        done = finished(c, "noop")["id"]
    result = daemon.ctl("tasks", "retry", failed, done)
    assert result.returncode != 0
    assert re.fullmatch(rf"{failed} -> task_\d+\n", result.stdout)
    assert f"{done} is completed; only failed tasks can be retried" in result.stderr


# --- HTTP ------------------------------------------------------------------------------------------------


@pytest.fixture
def shim(make_daemon):
    d, shim = start_with_shim(make_daemon, workers=1)
    with d.client() as c:
        yield d, shim, c
    d.stop()


def test_batch_paths_answer_each_task_in_the_documents_words(shim):
    _d, http, c = shim
    failed = [failed_task(c) for _ in range(2)]
    done = finished(c, "noop")["id"]
    reply = http.post("/tasks/retry", json_body={"task_ids": [*failed, done, "task_404"]})
    assert reply.status == 200
    body = reply.body
    assert (body["succeeded"], body["failed"], body["success"]) == (2, 2, False)
    assert body["message"] == "已重试2个任务，2个失败"
    assert body["results"][2] == {
        "task_id": done,
        "success": False,
        "status": "completed",
        "error": "任务状态不是失败，无法重试: completed",
    }
    assert body["results"][3]["error"] == "任务不存在"
    again = http.post("/tasks/retry", json_body={"task_ids": [failed[0]]}).body["results"][0]
    assert again["error"] == f"任务已经重试过: {failed[0]} -> {body['results'][0]['new_task_id']}"

    hold = hold_worker(c)["id"]
    waiting = [c.submit("noop", {}, priority=11)["id"] for _ in range(2)]
    reply = http.post("/tasks/priority", json_body={"task_ids": [*waiting, done], "priority": 3})
    assert [r.get("priority") for r in reply.body["results"]] == [3, 3, None]
    assert reply.body["results"][2]["error"] == "任务状态不是等待中，无法修改优先级: completed"
    reply = http.post("/tasks/cancel", json_body={"task_ids": [hold, waiting[0]]})
    assert reply.body["results"][0]["error"] == "任务正在运行，需设置cancel_running=true才能取消"
    assert reply.body["results"][1]["status"] == "cancelled"
    reply = http.post("/tasks/cancel", json_body={"task_ids": [hold], "cancel_running": True})
    assert reply.body == {
        "success": True,
        "message": "已取消1个任务",
        "results": [{"task_id": hold, "success": True, "status": "cancelled"}],
        "succeeded": 1,
        "failed": 0,
    }
    for bad in ({}, {"task_ids": []}, {"task_ids": ["x"]}, {"task_ids": "task_1"}):
        assert http.post("/tasks/cancel", json_body=bad).status == 400, bad
    assert http.get("/tasks/retry").status == 405  # a path of its own, not a task called "retry"


def test_history_log_and_newest_first_over_http(shim):
    _d, http, c = shim
    parent = c.submit("command", {"argv": ["echo", "任务日志"]})["id"]
    child = c.submit("noop", {}, depends_on=[parent])["id"]
    c.wait([child], timeout=DEADLINE)
    reply = http.get(f"/tasks/{parent}/history")
    assert reply.body["dependents"] == [child]
    assert next(e["event"] for e in reply.body["history"]) == "submitted"
    log = http.get(f"/tasks/{parent}/log?offset=0").body
    assert log["text"].endswith("任务日志\n") and log["status"] == "completed"
    assert http.get(f"/tasks/{parent}/log?offset={log['offset']}").body["text"] == ""
    assert http.get("/tasks/task_999/history").status == 404
    assert http.get(f"/tasks/{parent}/log?offset=-1").status == 400
    assert [t["id"] for t in http.get("/tasks?order=newest").body["tasks"]] == [child, parent]
    assert http.get("/tasks?order=random").status == 400


def test_the_page_and_its_files_are_served_with_their_headers(shim):
    _, http, _ = shim
    page = http_get(http.url, "/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "📋 任务管理器" in page.body.decode()
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    for path in re.findall(r'(?:src|href)="(static/[^"]+)"', page.body.decode()):
        asset = http_get(http.url, "/" + path)
        assert asset.status == 200, path
    script = http_get(http.url, "/static/js/main.js")
    assert script.headers["Content-Type"].startswith(("text/javascript", "application/javascript"))
    assert "https://" not in script.body.decode()  # nothing from another site
    for name in ("api", "stream", "views", "i18n"):
        assert http_get(http.url, f"/static/js/{name}.js").status == 200
    assert http_get(http.url, "/static/../pyproject.toml").status == 404
    docs = http_get(http.url, "/docs").body.decode()
    assert "cdn." not in docs and "/docs/static/" in docs


def test_with_a_token_the_browser_signs_in_and_other_origins_are_refused(make_daemon):
    token = "s3cret-token-for-the-page"
    d, http = start_with_shim(make_daemon, workers=1, extra_env={"MSEARCH_HTTP_TOKEN": token})
    own = http.url
    assert http_get(own, "/").status == 200  # the page itself, to sign in with
    assert http.get("/tasks").status == 401
    assert http.post("/session", json_body={"token": "wrong"}, headers={"Origin": own}).status == 401
    reply = http.post("/session", json_body={"token": token}, headers={"Origin": own})
    assert reply.status == 200
    cookie_line = reply.headers["Set-Cookie"]
    assert "HttpOnly" in cookie_line and "SameSite=Strict" in cookie_line and token not in cookie_line
    cookie = cookie_line.split(";")[0]
    with_cookie = {"Cookie": cookie}
    assert http.get("/tasks", headers=with_cookie).status == 200
    assert http.get("/tasks", headers={"Cookie": "msearch_session=forged"}).status == 401
    with d.client() as c:
        hold_worker(c)
        task = c.submit("noop", {}, priority=9)["id"]
    body = {"task_ids": [task], "priority": 2}
    # a change carried by the cookie must show the shim's own origin
    for foreign in (
        {"Origin": "http://127.0.0.1:1"},
        {"Origin": "http://evil.example"},
        {"Origin": own, "Sec-Fetch-Site": "same-site"},
        {},
    ):
        refused = http.post("/tasks/priority", json_body=body, headers={**with_cookie, **foreign})
        assert refused.status == 403, foreign
    with d.client() as c:
        assert c.get(task)["priority"] == 9
    done = http.post("/tasks/priority", json_body=body, headers={**with_cookie, "Origin": own})
    assert done.status == 200 and done.body["message"] == "已将1个任务的优先级设为2"
    # signing in from another page is refused too
    assert http.post("/session", json_body={"token": token}, headers={"Origin": "http://x:1"}).status == 403
    # the bearer token still works as before, with or without an Origin
    bearer = {"Authorization": f"Bearer {token}"}
    assert http.get("/tasks", headers=bearer).status == 200
    d.stop()


def test_the_page_on_a_port_of_its_own(make_daemon):
    port = free_port()
    listen = ("--http", "127.0.0.1:0", "--web", f"127.0.0.1:{port}")
    d = make_daemon(start=False, workers=1, extra_args=listen)
    d.lines = Lines()
    d.start()
    d.lines.wait_for(LISTEN_RE)
    page = http_get(f"http://127.0.0.1:{port}", "/")
    assert page.status == 200 and "📋 任务管理器" in page.body.decode()
    other = Shim(f"http://127.0.0.1:{port}", 0)
    assert other.get("/tasks/stats").status == 200  # the page's requests go to its own origin
    assert d.lines.wait_for(re.compile(r"task manager page at http://127\.0\.0\.1:" + str(port)))
    d.stop()


def test_web_without_http_is_a_usage_error(make_daemon):
    d = make_daemon(start=False)
    done = subprocess.run(
        [MSEARCHD, "--config", str(d.config), "--web", "8502"],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 2
    assert "--web needs --http" in done.stderr
