"""Figures of the task manager page (📋 任务管理器) in a headless Chromium, against a real daemon and shim.

    .venv/bin/python bench/bm_web.py [--tasks 100000] [--json out.json] [--screenshot docs/task-manager.png]

- first render with N tasks in the store: from navigation to the table usable (its rows drawn, the
  `aria-busy` mark cleared), median of 5 loads;
- latency from a handler's progress report to the bar moving: a handler reports the time of each report
  as its current operation, and the page notes when the cell shows it (median, p99);
- the main thread with 1,000 progress events a second: long tasks (PerformanceObserver `longtask`, > 50 ms)
  and the worst lag of a 50 ms timer while they arrive;
- 🔄 批量重试 of 1,000 selected failed tasks: from the click to the summary shown.

Printed, never asserted: the machine is shared and noisy. Needs the system's Chromium (Debian package).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchlib import MSEARCHD, Gate, clean_env, median, percentile, temp_root
from realparts import CHROMIUM, CHROMIUM_ARGS

HANDLERS = """
[handlers]
noop = "handlers:noop"
gate = "handlers:gate"
ticker = "handlers:ticker"
fail = "handlers:fail"
"""
LISTEN = re.compile(r"http shim listening on (http://\S+)")


class Served:
    """msearchd --http on a free port, in a temporary folder."""

    def __init__(self, root: Path, workers: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "msearchd.toml").write_text(HANDLERS)
        self.env = clean_env(
            MSEARCH_SOCKET=str(root / "run" / "d.sock"),
            MSEARCH_STATE_DIR=str(root / "state"),
            PYTHONPATH=str(Path(__file__).resolve().parent),
        )
        self.proc = subprocess.Popen(
            [MSEARCHD, "--workers", str(workers), "--config", str(root / "msearchd.toml"), "--http", "0"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        found = threading.Event()
        self.url = ""

        def drain() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                m = LISTEN.search(line)
                if m and not self.url:
                    self.url = m.group(1)
                    found.set()

        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(60):
            raise RuntimeError("the shim did not start")

    def client(self) -> Any:
        from msearchd.client import Client

        return Client(self.root / "run" / "d.sock")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def open_page(browser: Any, url: str, locale: str = "zh-CN") -> Any:
    context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 800}, bypass_csp=True)
    context.set_default_timeout(120_000)
    page = context.new_page()
    page.goto(url + "/")
    page.wait_for_selector("#tasks[aria-busy=false]")
    page.wait_for_selector("#connection.live")
    return page


def first_render(browser: Any, root: Path, n: int, out: dict[str, Any]) -> None:
    served = Served(root / "render", workers=1)
    gate = Gate(served.root)
    try:
        with served.client() as c:
            c.submit("gate", gate.data(), priority=0)
            gate.wait_holding(1)  # the tasks below stay queued
            for start in range(0, n, 10_000):
                c.submit_many([{"type": "noop", "priority": 11} for _ in range(min(10_000, n - start))])
        times = []
        for _ in range(5):
            context = browser.new_context(
                locale="zh-CN", viewport={"width": 1280, "height": 800}, bypass_csp=True
            )
            page = context.new_page()
            page.goto(served.url + "/")
            page.wait_for_function(
                "() => document.querySelector('#tasks').getAttribute('aria-busy') === 'false'", polling="raf"
            )
            times.append(page.evaluate("() => performance.now()"))
            context.close()
        out["first_render_ms"] = {"tasks": n, "median": median(times), "all": times}
    finally:
        gate.open()
        served.stop()


OBSERVE = """
(id) => {
  window.lags = [];
  const row = document.querySelector(`tr[data-id='${id}']`);
  new MutationObserver(() => {
    const sent = parseFloat(row.cells[6].textContent);
    if (sent) window.lags.push(Date.now() / 1000 - sent);
  }).observe(row.cells[6], { childList: true, characterData: true, subtree: true });
}
"""


def latency(browser: Any, root: Path, out: dict[str, Any]) -> None:
    served = Served(root / "latency", workers=1)
    try:
        page = open_page(browser, served.url)
        with served.client() as c:
            task = c.submit("ticker", {"reports": 1, "rate": 1})["id"]
            c.wait([task], timeout=60)
            page.wait_for_selector(f"tr[data-id='{task}']")
            ticker = c.submit("ticker", {"reports": 300, "rate": 20})["id"]
            page.wait_for_selector(f"tr[data-id='{ticker}']")
            page.evaluate(OBSERVE, ticker)
            c.wait([ticker], timeout=120)
        page.wait_for_function("() => window.lags.length > 250", polling=200)
        lags = [x * 1000 for x in page.evaluate("() => window.lags")]
        out["progress_latency_ms"] = {
            "reports": len(lags),
            "median": median(lags),
            "p99": percentile(lags, 99),
        }
    finally:
        served.stop()


WATCH = """
() => {
  window.longTasks = [];
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.longTasks.push(entry.duration);
  }).observe({ type: "longtask", buffered: false });
  window.maxLag = 0;
  let last = performance.now();
  window.lagTimer = setInterval(() => {
    const now = performance.now();
    window.maxLag = Math.max(window.maxLag, now - last - 50);
    last = now;
  }, 50);
  window.progressEvents = 0;
  const counter = new EventSource("/api/v1/events");
  counter.addEventListener("progress", () => window.progressEvents++);
  window.counter = counter;
}
"""


def flood(browser: Any, root: Path, out: dict[str, Any]) -> None:
    workers, rate, seconds = 4, 250, 10
    served = Served(root / "flood", workers=workers)
    try:
        page = open_page(browser, served.url)
        with served.client() as c:
            c.wait([c.submit("noop")["id"]], timeout=60)  # workers up
            page.evaluate(WATCH)
            t0 = time.monotonic()
            ids = [
                c.submit("ticker", {"reports": rate * seconds, "rate": rate})["id"] for _ in range(workers)
            ]
            c.wait(ids, timeout=120)
            wall = time.monotonic() - t0
        # is the page still answering at once after the flood? time a click on a filter to its redraw
        t1 = time.perf_counter()
        page.locator("#counts .status-completed").click()
        page.wait_for_function(
            "[...document.querySelectorAll('#tasks tbody tr')]"
            ".every(r => r.classList.contains('row-completed'))"
        )
        click_ms = (time.perf_counter() - t1) * 1000
        got = page.evaluate(
            "() => { clearInterval(window.lagTimer); window.counter.close();"
            " return [window.longTasks, window.maxLag, window.progressEvents]; }"
        )
        long_tasks, max_lag, events = got
        out["flood"] = {
            "events_per_second": events / wall,
            "seconds": wall,
            "long_tasks": len(long_tasks),
            "long_task_ms_total": sum(long_tasks),
            "long_task_ms_max": max(long_tasks, default=0),
            "timer_lag_ms_max": max_lag,
            "filter_click_to_redraw_ms": click_ms,
        }
    finally:
        served.stop()


def batch_retry(browser: Any, root: Path, out: dict[str, Any]) -> None:
    served = Served(root / "retry", workers=2)
    try:
        with served.client() as c:
            ids = c.submit_many([{"type": "fail"} for _ in range(1000)])["task_ids"]
            c.wait(ids, timeout=120)
        page = open_page(browser, served.url)
        page.locator("#select-failed").click()
        page.locator("#selection-count", has_text="1000").wait_for()
        t0 = time.perf_counter()
        page.get_by_role("button", name="🔄 批量重试").click()
        page.locator("#summary-counts").wait_for()
        wall = time.perf_counter() - t0
        out["batch_retry_1000"] = {
            "wall_ms": wall * 1000,
            "summary": page.locator("#summary-counts").inner_text(),
        }
    finally:
        served.stop()


def screenshot(browser: Any, root: Path, path: Path) -> None:
    """The page with live tasks, for the README."""
    served = Served(root / "shot", workers=3)
    try:
        with served.client() as c:
            for message in ("文件不存在: /photos/2023/IMG_0042.jpg", "视频解码失败: codec not supported"):
                c.submit("fail", {"message": message}, priority=6)
            done = [c.submit("noop", {}, priority=p)["id"] for p in (0, 9)]
            c.wait(done, timeout=60)
            embed = c.submit("ticker", {"reports": 400, "rate": 10, "label": "向量化 frame"}, priority=1)
            c.submit("ticker", {"reports": 200, "rate": 10, "label": "生成缩略图"}, priority=9)
            c.submit("ticker", {"reports": 300, "rate": 10, "label": "预处理 chunk"}, priority=6)
            for p in (1, 6):
                c.submit("noop", {}, priority=p)
            c.submit("noop", {}, priority=9, depends_on=[embed["id"]])
        page = open_page(browser, served.url)
        page.set_viewport_size({"width": 1280, "height": 600})
        page.locator(".operation-col", has_text=re.compile(r"生成缩略图 1[2-9]\d/")).wait_for()
        page.screenshot(path=str(path))
    finally:
        served.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--screenshot", type=Path, help="also write a screenshot of the page with live tasks")
    parser.add_argument("--only", help="comma-separated: render,latency,flood,retry")
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("bm_web: Chromium is not installed (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    wanted = set((args.only or "render,latency,flood,retry").split(","))
    out: dict[str, Any] = {}
    with temp_root("msw-") as root, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        if "render" in wanted:
            first_render(browser, root, args.tasks, out)
            print("first render", json.dumps(out["first_render_ms"]), flush=True)
        if "latency" in wanted:
            latency(browser, root, out)
            print("progress latency", json.dumps(out["progress_latency_ms"]), flush=True)
        if "flood" in wanted:
            flood(browser, root, out)
            print("1,000 events/s", json.dumps(out["flood"]), flush=True)
        if "retry" in wanted:
            batch_retry(browser, root, out)
            print("batch retry", json.dumps(out["batch_retry_1000"], ensure_ascii=False), flush=True)
        if args.screenshot:
            screenshot(browser, root, args.screenshot)
            print("screenshot", args.screenshot)
        browser.close()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
