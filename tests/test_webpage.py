"""The task manager page (📋 任务管理器) in a real headless Chromium, against a real daemon and shim.

Each test waits on the page's state (an element, a text, an attribute) with Playwright's deadlines, or on
the daemon's (the RPC `wait`); nothing sleeps. A screenshot of the page with live tasks is kept: in
$MSEARCH_TEST_ARTIFACTS when it is set, else in the test's temporary folder.
"""

# The page speaks Chinese, like the API document, with its full-width punctuation.
# ruff: noqa: RUF001

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from realparts import CHROMIUM, CHROMIUM_ARGS
from support import wait_started
from test_http import LISTEN_RE, Lines, finished, free_port, hold_worker, start_with_shim

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian package chromium)"
)

DEADLINE_MS = 30_000


def expect(locator: Any) -> Any:
    """Playwright's assertions, which wait (up to the deadline) for the page to get there."""
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=DEADLINE_MS)
    return playwright_expect(locator)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser) -> Iterator[Any]:
    """open_page(url, locale="zh-CN", width=1280) -> a page that has loaded the task manager; the
    page's script errors fail the test."""
    contexts = []
    errors: list[str] = []

    def opener(url: str, locale: str = "zh-CN", width: int = 1280, ready: bool = True) -> Any:
        context = browser.new_context(locale=locale, viewport={"width": width, "height": 800})
        context.set_default_timeout(DEADLINE_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "/")
        if ready:
            page.wait_for_selector("#tasks[aria-busy=false]")
            page.wait_for_selector("#connection.live")
        return page

    yield opener
    for context in contexts:
        context.close()
    assert errors == []


@pytest.fixture
def served(make_daemon) -> Iterator[tuple[Any, Any, Any]]:
    d, shim = start_with_shim(make_daemon, workers=1)
    with d.client() as c:
        yield d, shim, c
    d.stop()


def row(page: Any, task_id: str) -> Any:
    return page.locator(f'#tasks tbody tr[data-id="{task_id}"]')


def artifact(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("MSEARCH_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def test_the_page_loads_in_chinese_and_in_english(served, open_page):
    _, shim, c = served
    failed = finished(c, "fail", {"message": "磁盘已满"})["id"]
    page = open_page(shim.url)
    assert page.title() == "📋 任务管理器 · msearch"
    assert page.locator("h1").inner_text() == "📋 任务管理器"
    assert page.locator("#batch-retry").inner_text() == "🔄 批量重试"
    assert row(page, failed).locator(".status").inner_text() == "失败"
    assert row(page, failed).locator(".error-col").inner_text() == "磁盘已满"
    assert page.locator("#counts .status-failed .n").inner_text() == "1"
    assert page.get_by_role("checkbox", name=f"选择 {failed}").is_visible()  # accessible names
    english = open_page(shim.url, locale="en-US", width=600)  # a narrow window
    assert english.locator("h1").inner_text() == "📋 Task manager"
    assert row(english, failed).locator(".status").inner_text() == "failed"
    assert not english.locator("th.minor").first.is_visible()  # minor columns make room
    assert english.locator("#batch-retry").is_visible()


def test_a_running_tasks_progress_bar_moves_without_a_reload(served, open_page, fifo, tmp_path):
    _, shim, c = served
    failed = finished(c, "fail", {"message": "文件不存在: /photos/a.jpg"})["id"]
    finished(c, "noop")
    gate = fifo("steps")
    task = c.submit("stepper", {"fifo": str(gate), "steps": 4}, priority=1)["id"]
    assert c.wait([task], statuses=["running"], timeout=30)["timed_out"] is False
    for _ in range(3):
        c.submit("quick", {}, priority=9)
    page = open_page(shim.url)
    page.evaluate("window.notReloaded = true")
    bar = row(page, task).get_by_role("progressbar")
    assert bar.get_attribute("aria-valuenow") == "0"
    with open(gate.path, "w") as steps:
        steps.write("next\n")
        steps.flush()
        page.wait_for_function(
            "id => document.querySelector(`tr[data-id='${id}'] [role=progressbar]`)"
            ".getAttribute('aria-valuenow') === '25'",
            arg=task,
        )
        expect(row(page, task).locator(".operation-col")).to_have_text("step 1 of 4")
        steps.write("next\n")
        steps.flush()
        page.wait_for_function(
            "id => document.querySelector(`tr[data-id='${id}'] [role=progressbar]`)"
            ".getAttribute('aria-valuenow') === '50'",
            arg=task,
        )
        assert row(page, failed).locator(".status").inner_text() == "失败"
        page.screenshot(path=str(artifact(tmp_path, "task-manager.png")))
        for _ in range(2):
            steps.write("next\n")
        steps.flush()
    row(page, task).locator(".status.status-completed").wait_for()
    assert page.evaluate("window.notReloaded") is True


def test_batch_retry_retries_exactly_the_selected_failed_tasks_and_sums_up(served, open_page):
    _, shim, c = served
    failed = [finished(c, "fail", {"message": f"失败 {i}"})["id"] for i in range(3)]
    done = finished(c, "noop")["id"]
    other_failed = finished(c, "fail")["id"]  # not selected: must stay as it is
    page = open_page(shim.url)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/tasks/retry" in r.url else None)
    page.get_by_role("checkbox", name=f"选择 {failed[2]}").check()
    page.get_by_role("checkbox", name=f"选择 {failed[0]}").click(modifiers=["Shift"])  # the range
    page.get_by_role("checkbox", name=f"选择 {done}").check()
    expect(page.locator("#selection-count")).to_have_text("已选 4 个")
    page.get_by_role("button", name="🔄 批量重试").click()
    summary = page.locator("#summary")
    expect(summary.locator("#summary-counts")).to_have_text("成功 3 个，失败 1 个")
    items = summary.locator("li").all_inner_texts()
    assert items[0] == f"{done}: 任务状态不是失败，无法重试: completed"
    retried = {c.get(t)["retried_as"] for t in failed}
    assert None not in retried
    assert sorted(items[1:]) == sorted(f"{t} → {c.get(t)['retried_as']}" for t in failed)
    assert c.get(other_failed)["retried_as"] is None and c.get(done)["retried_as"] is None
    assert len(requests) == 1  # one request for the selection
    page.get_by_role("button", name="关闭").click()
    for new in retried:  # the new tasks show up without a reload
        row(page, new).wait_for()


def test_cancelling_a_running_task_asks_first_then_shows_cancelled(served, open_page):
    _, shim, c = served
    task = c.submit("command", {"argv": ["sleep", "600"]}, priority=0)["id"]
    wait_started(c, task)
    page = open_page(shim.url)
    row(page, task).get_by_role("button", name=task).click()
    detail = page.locator("#detail")
    detail.get_by_role("button", name="停止").click()
    confirm = page.locator("#confirm")
    expect(confirm.locator("#confirm-text")).to_have_text(f"任务 {task} 正在运行，确定要停止它吗？")
    confirm.get_by_role("button", name="取消").click()  # thought better of it
    expect(confirm).to_be_hidden()
    assert c.get(task)["status"] == "running"
    detail.get_by_role("button", name="停止").click()
    confirm.get_by_role("button", name="确定").click()
    row(page, task).locator(".status.status-cancelled").wait_for()
    assert row(page, task).locator(".status").inner_text() == "已取消"
    assert c.get(task)["status"] == "cancelled"
    detail.locator(".status.status-cancelled").wait_for()  # the open detail follows too


def test_a_priority_change_reorders_the_queue(served, open_page, tmp_path):
    _, shim, c = served
    hold = hold_worker(c)["id"]
    record = tmp_path / "order"
    first = c.submit("quick", {"record": str(record)}, priority=6)["id"]
    second = c.submit("quick", {"record": str(record)}, priority=9)["id"]
    page = open_page(shim.url)
    page.get_by_role("checkbox", name=f"选择 {second}").check()
    page.locator("#batch-priority-value").select_option("0")
    page.get_by_role("button", name="设置优先级").click()
    expect(page.locator("#summary-counts")).to_have_text("成功 1 个，失败 0 个")
    page.get_by_role("button", name="关闭").click()
    page.wait_for_function(
        "id => document.querySelector(`tr[data-id='${id}'] td.priority`).textContent === '0'", arg=second
    )
    c.cancel(hold, running=True)
    c.wait([first, second], timeout=30)
    assert record.read_text().split() == [second, first]


def test_a_dropped_stream_reconnects_and_the_table_catches_up(make_daemon, open_page):
    port = free_port()
    d = make_daemon(start=False, workers=1, extra_args=("--http", f"127.0.0.1:{port}"))
    d.lines = Lines()
    d.start()
    url = d.lines.wait_for(LISTEN_RE)[0].group(1)
    with d.client() as c:
        hold = hold_worker(c)["id"]
        waiting = c.submit("quick", {}, priority=11)["id"]
    page = open_page(url)
    row(page, waiting).wait_for()
    assert d.stop() == 0  # the daemon, and its shim with it
    expect(page.locator("#connection.lost")).to_contain_text("连接中断")
    # Keep the page away until the changes below are made: it must learn of them by resynchronising.
    page.route("**/api/v1/events*", lambda route: route.abort())
    d.start()
    d.lines.wait_for(LISTEN_RE, count=2)
    with d.client() as c:
        c.cancel(waiting)
        c.cancel(hold, running=True)
        new = c.submit("noop", {"note": "while the page was away"}, priority=0)["id"]
        assert c.wait([new], timeout=30)["timed_out"] is False
    assert row(page, new).count() == 0
    page.unroute("**/api/v1/events*")
    page.locator("#connection.live").wait_for()
    row(page, new).locator(".status.status-completed").wait_for()
    row(page, waiting).locator(".status.status-cancelled").wait_for()
    row(page, hold).locator(".status.status-cancelled").wait_for()


def test_a_load_that_fails_while_another_is_under_way_is_shown_not_thrown(served, open_page):
    """A load asked for while one is under way waits for that one; when it fails (the daemon
    stopping, say), the page says so once and raises nothing: an uncaught error fails the test."""
    _, shim, c = served
    done = finished(c, "noop")["id"]
    page = open_page(shim.url)
    row(page, done).wait_for()
    detail = "msearchd守护进程不可用: 守护进程正在停止，或与它的连接中断"
    page.route(
        "**/api/v1/tasks/stats",
        lambda route: route.fulfill(
            status=503, content_type="application/json", body=f'{{"detail": "{detail}"}}'
        ),
    )
    # Two loads in one go, as a filter changed twice or an event and a click would ask.
    page.evaluate(
        """() => {
        const filter = document.querySelector("#status-filter");
        filter.dispatchEvent(new Event("change"));
        filter.dispatchEvent(new Event("change"));
        }"""
    )
    expect(page.locator("#notice")).to_contain_text(detail)
    page.unroute("**/api/v1/tasks/stats")
    page.select_option("#status-filter", "failed")  # and the page loads again, once it can
    expect(row(page, done)).to_have_count(0)


class _ForeignSite(http.server.BaseHTTPRequestHandler):
    """Another site on this machine (another port is the same site to a browser, and gets its
    cookies) whose page posts to the shim as a form would."""

    target = ""

    def do_GET(self) -> None:
        page = f"""<!doctype html><title>elsewhere</title><script>
        fetch("{self.target}/api/v1/tasks/cancel-all", {{
          method: "POST", mode: "no-cors", credentials: "include",
          headers: {{"Content-Type": "application/x-www-form-urlencoded"}}, body: "cancel_running=true",
        }}).finally(() => {{ document.title = "sent"; }});
        </script>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *_: Any) -> None:
        pass


def test_with_a_token_the_page_signs_in_and_refuses_other_origins(make_daemon, open_page):
    token = "a-token-for-the-page"
    d, shim = start_with_shim(make_daemon, workers=1, extra_env={"MSEARCH_HTTP_TOKEN": token})
    with d.client() as c:
        hold_worker(c)
        task = c.submit("quick", {}, priority=11)["id"]
    page = open_page(shim.url, ready=False)
    page.locator("#signin").wait_for()
    assert page.locator("#app").is_hidden()
    page.get_by_label("访问令牌").fill("not-the-token")
    page.get_by_role("button", name="登录").click()
    page.locator("#signin-error", has_text="令牌无效").wait_for()
    page.get_by_label("访问令牌").fill(token)
    page.get_by_role("button", name="登录").click()
    row(page, task).wait_for()
    page.locator("#connection.live").wait_for()
    cookies = page.context.cookies()
    assert [(k["name"], k["httpOnly"], k["sameSite"]) for k in cookies] == [
        ("msearch_session", True, "Strict")
    ]
    assert page.evaluate("document.cookie") == ""  # out of reach of scripts

    _ForeignSite.target = shim.url
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ForeignSite)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        foreign = page.context.new_page()  # same browser, signed in to the shim
        foreign.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        foreign.wait_for_function("document.title === 'sent'")
    finally:
        server.shutdown()
        server.server_close()
    with d.client() as c:
        assert c.get(task)["status"] == "pending"  # refused: another origin
        assert c.count(status="running") == 1
    # The page's own request, with the same cookie, is accepted.
    answer = page.evaluate(
        """async (id) => {
            const r = await fetch('/api/v1/tasks/cancel', {method: 'POST',
              headers: {'Content-Type': 'application/json'}, body: JSON.stringify({task_ids: [id]})});
            return [r.status, await r.json()];
        }""",
        task,
    )
    assert answer[0] == 200 and answer[1]["succeeded"] == 1
    row(page, task).locator(".status.status-cancelled").wait_for()
    d.stop()


def test_the_detail_shows_lineage_dependents_history_and_follows_a_log(served, open_page, fifo):
    _, shim, c = served
    gate = fifo("gate")
    script = f"echo 第一行; read line < {gate}; echo 第二行"
    command = c.submit("command", {"argv": ["sh", "-c", script]}, priority=0)["id"]
    child = c.submit("noop", {}, depends_on=[command])["id"]
    assert c.wait([command], statuses=["running"], timeout=30)["timed_out"] is False
    page = open_page(shim.url)
    row(page, command).get_by_role("button", name=command).click()
    detail = page.locator("#detail")
    expect(detail.locator("#detail-title")).to_have_text(f"任务详情 {command}")
    expect(detail.locator("#log")).to_have_text("第一行\n")
    gate.write("go")  # the command writes its second line while the page follows the log
    expect(detail.locator("#log")).to_have_text("第一行\n第二行\n")
    expect(detail.locator("ol.history li").first).to_contain_text("submitted")
    detail.get_by_role("button", name=child).click()  # a dependent, linked
    expect(detail.locator("#detail-title")).to_have_text(f"任务详情 {child}")
    detail.get_by_role("button", name="关闭").click()

    failed = finished(c, "fail")["id"]
    retried = c.retry(failed)["new_task_id"]
    row(page, failed).get_by_role("button", name=failed).click()
    detail.get_by_role("button", name=retried).click()  # retried as ->
    expect(detail.locator("#detail-title")).to_have_text(f"任务详情 {retried}")
    detail.get_by_role("button", name=failed).click()  # <- retry of
    expect(detail.locator("#detail-title")).to_have_text(f"任务详情 {failed}")
