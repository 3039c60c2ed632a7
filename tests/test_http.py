"""The REST shim over real HTTP: a real daemon, a real listening shim, and http.client or curl as clients.

Nothing here sleeps to synchronise: tests wait for a log line (a condition with a deadline), for a task
state (the RPC `wait`), or for an answer on the port.
"""

# The expected answers are Chinese, like the API document's, with its full-width punctuation.
# ruff: noqa: RUF001

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import psutil
import pytest
from conftest import MSEARCHD, Daemon
from support import wait_started

from msearchd import protocol
from msearchd.http import MAX_EVENT_STREAMS, tcp_peer_uid

LISTEN_RE = re.compile(r"http shim listening on (http://\S+) \(pid (\d+)\)")
DOC = Path(__file__).resolve().parents[2] / "shared" / "task-control-api.zh.md"
DEADLINE = 30.0


# --- helpers ------------------------------------------------------------------------------------------


class Lines(list[str]):
    """A log that wakes waiters on every new line: put in place of `Daemon.lines` before it starts."""

    def __init__(self) -> None:
        super().__init__()
        self.cond = threading.Condition()

    def append(self, line: str) -> None:
        with self.cond:
            super().append(line)
            self.cond.notify_all()

    def wait_for(
        self, pattern: re.Pattern[str], count: int = 1, timeout: float = DEADLINE
    ) -> list[re.Match[str]]:
        """The first `count` matches of `pattern`, once that many lines have arrived."""

        def matches() -> list[re.Match[str]]:
            return [m for line in list(self) if (m := pattern.search(line))]

        with self.cond:
            if not self.cond.wait_for(lambda: len(matches()) >= count, timeout):
                raise AssertionError(
                    f"no {count} line(s) matching {pattern.pattern!r}; log:\n" + "".join(self)
                )
        return matches()


@dataclass
class Reply:
    status: int
    body: Any
    headers: Message


def call(
    url: str,
    method: str,
    path: str,
    *,
    form: dict[str, str] | list[tuple[str, str]] | None = None,
    json_body: Any = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = DEADLINE,
) -> Reply:
    """One HTTP request on a fresh connection; the body parsed as JSON."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    hdrs = dict(headers or {})
    if form is not None:
        body = urlencode(form).encode()
        hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
    elif json_body is not None:
        body = json.dumps(json_body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    return Reply(resp.status, json.loads(raw) if raw else None, resp.headers)


@dataclass
class Raw:
    status: int
    body: bytes
    headers: Message


def http_get(url: str, path: str) -> Raw:
    """A GET whose body is kept as bytes (a page, a script)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=DEADLINE)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return Raw(resp.status, resp.read(), resp.headers)
    finally:
        conn.close()


@dataclass
class Shim:
    url: str
    pid: int

    def get(self, path: str, **kw: Any) -> Reply:
        return call(self.url, "GET", "/api/v1" + path, **kw)

    def post(self, path: str, **kw: Any) -> Reply:
        return call(self.url, "POST", "/api/v1" + path, **kw)


def start_with_shim(make_daemon: Any, http: str = "127.0.0.1:0", extra: tuple[str, ...] = (), **kw: Any):
    """A daemon started with --http, and its shim once it serves."""
    d = make_daemon(start=False, extra_args=("--http", http, *extra), **kw)
    d.lines = Lines()
    d.start()
    m = d.lines.wait_for(LISTEN_RE)[-1]
    return d, Shim(m.group(1), int(m.group(2)))


def dead(pid: int) -> bool:
    """The process no longer runs (a zombie that init may never reap here counts as dead)."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_DEAD, psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def wait_dead(pid: int, timeout: float = DEADLINE) -> None:
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        assert dead(pid), f"process {pid} still runs after {timeout} s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hold_worker(c) -> dict[str, Any]:
    """A task that keeps the only worker busy until cancelled or the daemon stops."""
    task = c.submit("command", {"argv": ["sleep", "600"]}, priority=0)
    wait_started(c, task["id"], timeout=DEADLINE)
    return task


def finished(c, task_type: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    task = c.submit(task_type, data or {})
    result = c.wait([task["id"]], timeout=DEADLINE)
    assert result["timed_out"] is False
    return result["tasks"][0]


def number(task_id: str) -> str:
    return task_id.removeprefix("task_")


@pytest.fixture
def served(make_daemon) -> Iterator[tuple[Daemon, Shim, Any]]:
    """One worker, a shim, and an RPC client; stopped cleanly so that no task outlives the test."""
    d, shim = start_with_shim(make_daemon, workers=1)
    with d.client() as c:
        yield d, shim, c
    d.stop()


class Standalone:
    """`python -m msearchd.http` run by hand, its stderr collected in `lines`."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()) -> None:
        self.lines = Lines()
        base = {k: v for k, v in os.environ.items() if not k.startswith("MSEARCH_") and k not in unset}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "msearchd.http", *args],
            env={**base, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def shim(self) -> Shim:
        m = self.lines.wait_for(LISTEN_RE)[-1]
        return Shim(m.group(1), int(m.group(2)))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=DEADLINE)


@pytest.fixture
def standalone() -> Iterator[Callable[..., Standalone]]:
    made: list[Standalone] = []

    def factory(*args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()) -> Standalone:
        s = Standalone(*args, env=env, unset=unset)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.stop()


class FakeDaemon:
    """A Unix socket that greets like msearchd, then answers every request with `answer(request)`.

    `answer` returning None means never answering: the request hangs until the client gives up.
    """

    def __init__(self, path: Path, answer: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        self.path = path
        self.answer = answer
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                while (message := protocol.recv_frame(conn)) is not None:
                    if message["method"] == "hello":
                        reply: dict[str, Any] | None = {
                            "protocol": protocol.PROTOCOL_VERSION,
                            "server": "fake",
                        }
                        conn.sendall(protocol.encode({"id": message["id"], "result": reply}))
                        continue
                    reply = self.answer(message)
                    if reply is not None:
                        conn.sendall(protocol.encode({"id": message["id"], **reply}))
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


# --- the process: options, start-up, token rule -------------------------------------------------------


def test_help_names_both_ways_to_run_the_shim():
    daemon_help = subprocess.run([MSEARCHD, "--help"], capture_output=True, text=True, timeout=DEADLINE)
    assert daemon_help.returncode == 0
    for needle in ("--http [HOST:]PORT", "--http-token", "MSEARCH_HTTP_TOKEN", "python -m msearchd.http"):
        assert needle in " ".join(daemon_help.stdout.split()), needle
    shim_help = subprocess.run(
        [sys.executable, "-m", "msearchd.http", "--help"], capture_output=True, text=True, timeout=DEADLINE
    )
    assert shim_help.returncode == 0
    for needle in ("[HOST:]PORT", "--socket", "--token", "MSEARCH_HTTP_TOKEN"):
        assert needle in shim_help.stdout, needle


def test_daemon_and_cli_do_not_import_the_web_stack(make_daemon):
    probe = (
        "import sys, msearchd.daemon, msearchd.client, msearchctl.app;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'uvicorn', 'starlette'}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=DEADLINE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    # And a running daemon with a shim: pydantic's compiled core is mapped in the shim only.
    d, shim = start_with_shim(make_daemon)
    assert d.proc is not None
    assert "pydantic_core" not in Path(f"/proc/{d.proc.pid}/maps").read_text()
    assert "pydantic_core" in Path(f"/proc/{shim.pid}/maps").read_text()
    assert psutil.Process(shim.pid).ppid() == d.proc.pid


@pytest.mark.parametrize("address", ["0.0.0.0:0", "[::]:0"])
def test_listening_beyond_loopback_without_token_refuses_to_start(make_daemon, address):
    d = make_daemon(start=False)
    env = {**d.env, "MSEARCH_HTTP_TOKEN": ""}  # empty is no token
    out = subprocess.run(
        [MSEARCHD, "--config", str(d.config), "--http", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert out.returncode == 2, out.stderr
    assert "needs a token" in out.stderr and "--http-token" in out.stderr
    assert not d.socket.exists()  # refused before starting anything
    alone = subprocess.run(
        [sys.executable, "-m", "msearchd.http", address, "--socket", str(d.socket)],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert alone.returncode == 2
    assert "needs a token" in alone.stderr


@pytest.mark.parametrize("address", ["localhost:http", "127.0.0.1:70000", ":8000", "::1:8000"])
def test_a_malformed_address_is_a_usage_error(make_daemon, address):
    d = make_daemon(start=False)
    out = subprocess.run(
        [MSEARCHD, "--config", str(d.config), "--http", address],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert out.returncode == 2
    assert out.stderr.startswith(f"msearchd: invalid HTTP address '{address}'")


def test_a_busy_port_stops_the_daemon_with_a_sentence(make_daemon):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = make_daemon(start=False)
        out = subprocess.run(
            [MSEARCHD, "--config", str(d.config), "--http", f"127.0.0.1:{port}"],
            env=d.env,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
    assert out.returncode == 1
    assert f"cannot listen for HTTP on 127.0.0.1:{port}: Address already in use" in out.stderr


def test_token_is_required_when_given(make_daemon):
    _, shim = start_with_shim(make_daemon, http="0.0.0.0:0", extra=("--http-token", "s3cret"))
    assert shim.url.startswith("http://0.0.0.0:")
    local = shim.url.replace("0.0.0.0", "127.0.0.1")
    # The token reaches the shim through its environment, never its argv (visible to every user).
    assert "s3cret" not in " ".join(psutil.Process(shim.pid).cmdline())
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic czNjcmV0"},
        {"Authorization": "s3cret"},
    ):
        reply = call(local, "GET", "/api/v1/tasks/stats", headers=headers)
        assert reply.status == 401, headers
        assert reply.headers["WWW-Authenticate"] == "Bearer"
        assert "Authorization: Bearer" in reply.body["detail"]
        assert call(local, "GET", "/openapi.json", headers=headers).status == 401
    refused = call(local, "POST", "/api/v1/tasks/cancel-all", form={"cancel_running": "true"})
    assert refused.status == 401
    for scheme in ("Bearer", "bearer"):
        ok = call(local, "GET", "/api/v1/tasks/stats", headers={"Authorization": f"{scheme} s3cret"})
        assert ok.status == 200
        assert ok.body["workers"]["total"] == 2
    schema = call(local, "GET", "/openapi.json", headers={"Authorization": "Bearer s3cret"}).body
    assert schema["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert all("401" in op["responses"] for path in schema["paths"].values() for op in path.values())


def test_standalone_shim_serves_the_daemons_default_socket_and_says_which(tmp_path, standalone):
    """Without --socket the shim finds the socket where msearchd puts it, as msearchctl does."""
    fallback = standalone("127.0.0.1:0", unset=("XDG_RUNTIME_DIR",))
    line = fallback.lines.wait_for(LISTEN_RE)[0].string
    assert line.rstrip().endswith(f") for msearchd at /tmp/msearch-{os.getuid()}/msearchd.sock"), line

    runtime = tmp_path / "run"
    (runtime / "msearch").mkdir(mode=0o700, parents=True)
    stats = {"total": 7, "by_status": {}, "by_type": {}, "workers": {"busy": 0, "total": 1}}
    fake = FakeDaemon(runtime / "msearch" / "msearchd.sock", lambda request: {"result": stats})
    try:
        found = standalone("127.0.0.1:0", env={"XDG_RUNTIME_DIR": str(runtime)})
        shim = found.shim()
        line = found.lines.wait_for(LISTEN_RE)[0].string
        assert line.rstrip().endswith(f") for msearchd at {runtime}/msearch/msearchd.sock"), line
        assert shim.get("/tasks/stats").body == stats
    finally:
        fake.close()


def test_without_the_http_extra_the_shim_says_so_in_one_sentence(tmp_path):
    """The same sentence as msearchd --http, and the exit code of a usage error: no traceback."""
    (tmp_path / "fastapi.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'fastapi'\", name='fastapi')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "msearchd.http", "127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr == (
        "msearchd-http: python -m msearchd.http needs fastapi, which is not installed: "
        "pip install 'msearchd[http]'\n"
    )


def test_standalone_shim_takes_its_token_from_the_environment(make_daemon, standalone):
    d = make_daemon()
    shim = standalone("127.0.0.1:0", "--socket", str(d.socket), env={"MSEARCH_HTTP_TOKEN": "t0k"}).shim()
    assert shim.get("/tasks/stats").status == 401
    assert shim.get("/tasks/stats", headers={"Authorization": "Bearer t0k"}).status == 200


def test_loopback_without_token_refuses_foreign_hosts_and_origins(served):
    _, shim, _ = served
    rebound = shim.get("/tasks/stats", headers={"Host": "evil.example:8000"})
    assert rebound.status == 403
    assert "evil.example" in rebound.body["detail"]
    cross_site = shim.post(
        "/tasks/cancel-all", form={"cancel_running": "true"}, headers={"Origin": "https://evil.example"}
    )
    assert cross_site.status == 403
    assert "https://evil.example" in cross_site.body["detail"]
    unreadable = shim.get("/tasks/stats", headers={"Host": "[::1"})
    assert unreadable.status == 403
    # A page of the local web UI (another port on localhost) is welcome.
    assert shim.get("/tasks/stats", headers={"Origin": "http://localhost:8502"}).status == 200
    assert shim.get("/tasks/stats", headers={"Host": f"localhost:{urlsplit(shim.url).port}"}).status == 200


def test_changes_come_only_from_the_shims_own_origin(served):
    """A form post needs no preflight: a page on another local port must not cancel, retry or reprioritise."""
    _, shim, c = served
    held = hold_worker(c)["id"]
    waiting = c.submit("file_scan")["id"]
    port = urlsplit(shim.url).port
    cancel_all = {"form": {"cancel_running": "on"}}
    refused: list[tuple[str, str, dict[str, Any], str]] = [
        ("POST", "/tasks/cancel-all", {**cancel_all, "headers": {"Origin": "http://127.0.0.1:9999"}}, "9999"),
        # The same port under another name is another origin (and may be another server).
        ("POST", "/tasks/cancel-all", {**cancel_all, "headers": {"Origin": f"http://localhost:{port}"}}, ""),
        ("POST", "/tasks/cancel-all", {**cancel_all, "headers": {"Origin": f"http://[::1]:{port}"}}, ""),
        ("POST", "/tasks/cancel-all", {**cancel_all, "headers": {"Origin": f"https://127.0.0.1:{port}"}}, ""),
        ("POST", "/tasks/cancel-all", {**cancel_all, "headers": {"Origin": "null"}}, "null"),
        (
            "POST",
            "/tasks/cancel-all",
            {**cancel_all, "headers": {"Sec-Fetch-Site": "cross-site"}},
            "cross-site",
        ),
        (
            "POST",
            "/tasks/cancel-all",
            {**cancel_all, "headers": {"Sec-Fetch-Site": "same-site"}},
            "same-site",
        ),
        (
            "POST",
            f"/tasks/{waiting}/priority",
            {"form": {"priority": "0"}, "headers": {"Origin": "http://localhost:8502"}},
            "8502",
        ),
        (
            "POST",
            f"/tasks/{held}/cancel",
            {"form": {"cancel_running": "true"}, "headers": {"Origin": "http://127.0.0.1:1"}},
            "",
        ),
    ]
    for method in ("PUT", "PATCH", "DELETE"):
        refused.append((method, f"/tasks/{waiting}", {"headers": {"Origin": "http://127.0.0.1:9999"}}, ""))
    for method, path, kw, needle in refused:
        reply = call(shim.url, method, "/api/v1" + path, **kw)
        assert reply.status == 403, (method, path, kw, reply.body)
        assert reply.body["detail"].startswith("拒绝"), reply.body
        assert needle in reply.body["detail"]
    assert c.get(held)["status"] == "running"
    assert c.get(waiting)["status"] == "pending" and c.get(waiting)["priority"] != 0

    # Reading stays open to the local web UI, and changes from the shim's own pages go through,
    # under whichever loopback name the page was loaded.
    assert shim.get("/tasks/stats", headers={"Origin": "http://127.0.0.1:9999"}).status == 200
    own = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
    moved = shim.post(f"/tasks/{waiting}/priority", form={"priority": "0"}, headers=own)
    assert moved.status == 200, moved.body
    named = {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}
    assert shim.post(f"/tasks/{waiting}/priority", form={"priority": "1"}, headers=named).status == 200
    typed = shim.post(
        f"/tasks/{waiting}/priority", form={"priority": "2"}, headers={"Sec-Fetch-Site": "none"}
    )
    assert typed.status == 200  # a request the user made by hand (no page involved)
    assert c.get(waiting)["priority"] == 2
    stopped = shim.post("/tasks/cancel-all", form={"cancel_running": "on"}, headers=own)
    assert stopped.status == 200 and stopped.body["message"] == "已取消2个任务"


def test_forwarding_headers_change_nothing(served):
    """The shim is not behind a proxy: X-Forwarded-* headers name no client and no scheme."""
    _, shim, _ = served
    port = urlsplit(shim.url).port
    for value in ("10.1.2.3", "203.0.113.9, 127.0.0.1", "not-an-address", "[::1]:80", ""):
        reply = shim.get("/tasks/stats", headers={"X-Forwarded-For": value})
        assert reply.status == 200, (value, reply.status, reply.body)
    forwarded = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=10.1.2.3;proto=https",
        "Origin": f"http://127.0.0.1:{port}",
    }
    assert shim.post("/tasks/cancel-all", headers=forwarded).status == 200
    assert (
        shim.post("/tasks/cancel-all", headers={**forwarded, "Origin": f"https://127.0.0.1:{port}"}).status
        == 403
    )


def test_an_unreadable_peer_address_has_no_owner():
    assert tcp_peer_uid(("not-an-address", 1), ("127.0.0.1", 8000)) is None
    assert tcp_peer_uid(("127.0.0.1", 1), ("::1", 8000)) is None


# --- the paths ----------------------------------------------------------------------------------------


def test_submit_then_get_by_either_id(served):
    _, shim, c = served
    hold_worker(c)
    data = {"path": "/srv/照片", "size": 2**64 - 1, "min": -(2**63), "ratio": 0.5, "tags": [None, True, {}]}
    reply = shim.post("/tasks", json_body={"type": "file_scan", "data": data, "priority": 4})
    assert reply.status == 201
    task_id = reply.body["data"]["task_id"]
    assert reply.body["success"] is True
    assert reply.body["message"] == f"任务已提交: {task_id}"
    rpc = c.get(task_id)
    assert rpc["data"] == data and rpc["priority"] == 4 and rpc["status"] == "pending"
    assert reply.body["data"]["task"] == rpc
    for ref in (task_id, number(task_id)):
        got = shim.get(f"/tasks/{ref}")
        assert got.status == 200
        assert got.body == rpc  # every field of the RPC task, same values
    padded = "task_" + number(task_id).zfill(25)  # leading zeros name the same task
    dep = shim.post("/tasks", json_body={"type": "file_embed_image", "depends_on": [padded]})
    assert dep.status == 201
    assert dep.body["data"]["task"]["status"] == "blocked"
    assert dep.body["data"]["task"]["depends_on"] == [task_id]
    assert dep.body["data"]["task"]["priority"] == 3  # the type's default


def test_submit_refuses_bad_input(served):
    _, shim, c = served
    hold_worker(c)
    cancelled = c.submit("file_scan")
    c.cancel(cancelled["id"])
    before = c.count()
    cases = [
        ({"data": {}}, 400, "缺少参数: type"),
        ({"type": "file scan"}, 400, "参数type的值无效"),
        ({"type": "file_scan", "priority": 12}, 400, "参数priority必须是0到11之间的整数，收到: 12"),
        ({"type": "file_scan", "priority": "3"}, 400, "参数priority必须是0到11之间的整数"),
        ({"type": "file_scan", "data": [1]}, 400, "参数data必须是JSON对象"),
        (
            {"type": "file_scan", "data": {"n": [2**64]}},
            400,
            "请求体中的整数超出64位范围: 18446744073709551616",
        ),
        ({"type": "file_scan", "data": {"n": -1e300}}, 400, "请求体中的数超出范围: -1e+300"),
        ({"type": "file_scan", "depends_on": ["task_x"]}, 400, "参数depends_on中的任务ID无效"),
        ({"type": "file_scan", "depends_on": ["0"]}, 400, "参数depends_on中的任务ID无效"),
        ({"type": "file_scan", "depends_on": [True]}, 400, "参数depends_on中的任务ID无效"),
        ({"type": "file_scan", "colour": "red"}, 400, "未知参数: colour"),
        ({"type": "command", "data": {"argv": "ls"}}, 400, "参数无效: "),
        ({"type": "file_scan", "depends_on": ["task_999"]}, 404, "依赖的任务不存在"),
        ({"type": "file_scan", "depends_on": [cancelled["id"]]}, 409, "依赖的任务已取消"),
    ]
    for body, status, text in cases:
        reply = shim.post("/tasks", json_body=body)
        assert (reply.status, text in reply.body["detail"]) == (status, True), (body, reply.body)
    form = shim.post("/tasks", form={"type": "file_scan"})
    assert form.status == 415
    assert "application/json" in form.body["detail"]
    assert (
        shim.post(
            "/tasks",
            body=b'{"type": "file_scan", "data": {"x": NaN}}',
            headers={"Content-Type": "application/json"},
        ).status
        == 400
    )
    assert c.count() == before  # nothing refused was queued


def test_get_unknown_or_malformed_id_is_404(served):
    _, shim, _ = served
    for ref, shown in (
        ("task_999", "task_999"),
        ("999", "task_999"),
        ("task_important_file", "task_important_file"),
        ("0", "0"),
    ):
        reply = shim.get(f"/tasks/{ref}")
        assert reply.status == 404
        assert reply.body == {"detail": f"任务不存在: {shown}"}


def test_list_filters_pages_and_counts(served):
    _, shim, c = served
    held = hold_worker(c)
    scans = [c.submit("file_scan", {"i": i})["id"] for i in range(5)]
    thumbs = [c.submit("thumbnail_generate")["id"] for _ in range(2)]
    c.cancel(thumbs[0])

    everything = shim.get("/tasks")
    assert everything.status == 200
    assert everything.body["total"] == 8 and (everything.body["limit"], everything.body["offset"]) == (100, 0)
    assert [t["id"] for t in everything.body["tasks"]] == [held["id"], *scans, *thumbs]
    # Tasks that wait do not change between two reads; the running one may (progress, log file).
    waiting = [t for t in c.list() if t["status"] != "running"]
    assert [t for t in everything.body["tasks"] if t["status"] != "running"] == waiting

    pending = shim.get("/tasks?status=pending").body
    assert [t["id"] for t in pending["tasks"]] == [*scans, thumbs[1]]
    assert pending["total"] == 6
    two = shim.get("/tasks?status=running,cancelled").body
    assert [t["id"] for t in two["tasks"]] == [held["id"], thumbs[0]]
    page = shim.get("/tasks?task_type=file_scan&limit=2&offset=2").body
    assert [t["id"] for t in page["tasks"]] == scans[2:4]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 2)
    assert shim.get("/tasks?task_type=nothing_of_this_type").body == {
        "tasks": [],
        "total": 0,
        "limit": 100,
        "offset": 0,
    }

    bad = {
        "status=bogus": "参数status的值无效: 'bogus'",
        "status=": "参数status的值无效: ''",
        "limit=0": "参数limit必须大于或等于1，收到: '0'",
        "limit=10001": "参数limit必须小于或等于10000",
        "limit=ten": "参数limit必须是整数，收到: 'ten'",
        "offset=-1": "参数offset必须大于或等于0",
        "task_type=a%20b": "参数task_type的值无效",
        "state=pending": "未知参数: state",
        "limit=1&limit=2": "参数limit重复出现",
    }
    for query, text in bad.items():
        reply = shim.get(f"/tasks?{query}")
        assert reply.status == 400, query
        assert reply.body["detail"].startswith(text), (query, reply.body)


def test_stats_are_the_rpc_stats(served):
    _, shim, c = served
    finished(c, "fail")
    finished(c, "noop")
    hold_worker(c)
    c.submit("file_scan")
    reply = shim.get("/tasks/stats")
    assert reply.status == 200
    rpc = c.stats()
    for key in ("total", "by_status", "by_type", "workers"):
        assert reply.body[key] == rpc[key], key
    assert set(reply.body) == set(rpc)  # nothing of the RPC's answer left out
    assert reply.body["by_status"]["failed"] == 1 and reply.body["by_status"]["pending"] == 1
    assert reply.body["workers"] == {"busy": 1, "total": 1}
    assert shim.get("/tasks/stats?verbose=1").status == 400


def test_priority(served):
    _, shim, c = served
    hold_worker(c)
    task = c.submit("file_scan")["id"]
    for ref, value in ((task, "0"), (number(task), "10")):
        reply = shim.post(f"/tasks/{ref}/priority", form={"priority": value})
        assert reply.status == 200
        assert reply.body["success"] is True
        assert reply.body["message"] == f"任务优先级已更新: {task} -> {value}"
        assert c.get(task)["priority"] == int(value)
        assert reply.body["data"]["task"]["priority"] == int(value)
    as_json = shim.post(f"/tasks/{task}/priority", json_body={"priority": 2.0})  # JSON's integer
    assert as_json.status == 200 and as_json.body["message"] == f"任务优先级已更新: {task} -> 2"

    refused: list[tuple[dict[str, Any], str]] = [
        ({"form": {"priority": "12"}}, "参数priority必须是0到11之间的整数，收到: 12"),
        ({"form": {"priority": "-1"}}, "参数priority必须是0到11之间的整数，收到: -1"),
        ({"form": {"priority": "abc"}}, "参数priority必须是0到11之间的整数，收到: 'abc'"),
        ({"form": {"priority": "1.5"}}, "参数priority必须是0到11之间的整数，收到: '1.5'"),
        ({"form": {"priority": ""}}, "缺少参数: priority"),  # an empty field is an absent one
        ({"form": {"priority": " 1"}}, "参数priority必须是0到11之间的整数"),
        ({"form": {"priority": "1_0"}}, "参数priority必须是0到11之间的整数"),
        ({"form": {}}, "缺少参数: priority"),
        ({}, "缺少参数: priority"),
        ({"form": [("priority", "1"), ("priority", "2")]}, "参数priority重复出现"),
        ({"form": {"priority": "1", "urgent": "yes"}}, "未知参数: urgent"),
        ({"json_body": {"priority": True}}, "参数priority必须是0到11之间的整数，收到: true"),
        ({"json_body": {"priority": "3"}}, "参数priority必须是0到11之间的整数"),
        ({"json_body": {"priority": 3.5}}, "参数priority必须是0到11之间的整数"),
        ({"json_body": [3]}, "JSON请求体必须是一个对象"),
        (
            {"body": b"priority", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
            "表单字段 'priority' 没有值",
        ),
    ]
    for kw, text in refused:
        reply = shim.post(f"/tasks/{task}/priority", **kw)
        assert reply.status == 400, kw
        assert reply.body["detail"].startswith(text), (kw, reply.body)
    assert c.get(task)["priority"] == 2  # no refused value was applied

    for ref in ("task_999", "999", "task_important_file"):
        missing = shim.post(f"/tasks/{ref}/priority", form={"priority": "0"})
        assert missing.status == 404
        assert missing.body == {"detail": "任务不存在"}


def test_priority_of_a_finished_task_is_409(make_daemon):
    d, shim = start_with_shim(make_daemon, workers=1)
    with d.client() as c:
        done = finished(c, "noop")
        reply = shim.post(f"/tasks/{done['id']}/priority", form={"priority": "1"})
        assert reply.status == 409
        assert reply.body == {"detail": "任务状态不是等待中，无法修改优先级: completed"}
        assert c.get(done["id"])["priority"] == done["priority"]
        running = hold_worker(c)
        reply = shim.post(f"/tasks/{number(running['id'])}/priority", form={"priority": "5"})
        assert reply.status == 409
        assert reply.body == {"detail": "任务状态不是等待中，无法修改优先级: running"}
    d.stop()


def test_cancel_a_waiting_task(served):
    _, shim, c = served
    hold_worker(c)
    root = c.submit("file_scan")["id"]
    child = c.submit("file_embed_image", depends_on=[root])["id"]
    reply = shim.post(f"/tasks/{number(root)}/cancel")
    assert reply.status == 200
    assert reply.body["success"] is True
    assert reply.body["message"] == f"任务已取消: {root}"
    assert reply.body["data"]["cancelled_dependents"] == 1
    assert reply.body["data"]["task"]["status"] == "cancelled"
    assert c.get(root)["status"] == "cancelled" and c.get(child)["status"] == "cancelled"

    again = shim.post(f"/tasks/{root}/cancel")
    assert again.status == 409
    assert again.body == {"detail": f"任务已结束（cancelled），无法取消: {root}"}
    for ref in ("task_999", "999", "task_important_file"):
        missing = shim.post(f"/tasks/{ref}/cancel")
        assert missing.status == 404
        assert missing.body == {"detail": "任务不存在或无法取消"}

    other = c.submit("file_scan")["id"]
    bad = shim.post(f"/tasks/{other}/cancel", form={"cancel_running": "maybe"})
    assert bad.status == 400
    assert bad.body == {"detail": "参数cancel_running的值无效: 'maybe'（可用 true/false/1/0/yes/no/on/off）"}
    assert shim.post(f"/tasks/{other}/cancel?cancel_running=true").status == 400  # form, not query
    assert c.get(other)["status"] == "pending"
    ok = shim.post(f"/tasks/{other}/cancel", json_body={"cancel_running": False})
    assert ok.status == 200 and ok.body["message"] == f"任务已取消: {other}"


def test_cancel_a_running_task_needs_cancel_running(served):
    _, shim, c = served
    running = hold_worker(c)["id"]
    for form in (
        None,
        {"cancel_running": "false"},
        {"cancel_running": "No"},
        {"cancel_running": "0"},
        {"cancel_running": "off"},
        {"cancel_running": ""},  # an empty field is an absent one: the default, false
    ):
        refused = shim.post(f"/tasks/{running}/cancel", form=form)
        assert refused.status == 409
        assert refused.body == {"detail": f"任务正在运行，需设置cancel_running=true才能取消: {running}"}
    assert c.get(running)["status"] == "running"
    ok = shim.post(f"/tasks/{running}/cancel", form={"cancel_running": "TRUE"})
    assert ok.status == 200
    assert ok.body["message"] == f"任务已取消: {running}"
    after = c.get(running)
    assert after["status"] == "cancelled"
    assert ok.body["data"]["task"] == after  # the task as it ended, stop_reason included


@pytest.mark.parametrize("spelling", ["true", "1", "yes", "YES", "True", "on", "t", "Y"])
def test_cancel_all(served, spelling):
    _, shim, c = served
    running = hold_worker(c)["id"]
    waiting = [c.submit("file_scan")["id"] for _ in range(3)]
    first = shim.post("/tasks/cancel-all", form={"cancel_running": "false"})
    assert first.status == 200
    assert first.body["success"] is True
    assert first.body["message"] == "已取消3个任务"
    assert first.body["result"] == {"cancelled": 3, "failed": 0, "total": 3, "cancelled_dependents": 0}
    assert {c.get(t)["status"] for t in waiting} == {"cancelled"}
    assert c.get(running)["status"] == "running"
    assert shim.post("/tasks/cancel-all", form={"cancel_running": "maybe"}).status == 400
    assert c.get(running)["status"] == "running"
    second = shim.post("/tasks/cancel-all", form={"cancel_running": spelling})
    assert second.status == 200
    assert second.body["message"] == "已取消1个任务"
    assert second.body["result"]["cancelled"] == 1
    assert c.get(running)["status"] == "cancelled"
    empty = shim.post("/tasks/cancel-all")
    assert empty.body["message"] == "已取消0个任务"


def test_cancel_by_type(served):
    _, shim, c = served
    running = c.submit("heavy", {"argv": ["sleep", "600"]}, priority=0)["id"]  # heavy runs commands
    c.wait([running], statuses=["running"], timeout=DEADLINE)
    images = [c.submit("image_preprocess")["id"] for _ in range(2)]
    embed = c.submit("file_embed_image", depends_on=[images[0]])["id"]
    thumb = c.submit("thumbnail_generate")["id"]
    reply = shim.post("/tasks/cancel-by-type", form={"task_type": "image_preprocess"})
    assert reply.status == 200
    assert reply.body["success"] is True
    assert reply.body["message"] == "已取消2个image_preprocess任务"
    assert reply.body["result"] == {
        "cancelled": 2,
        "failed": 0,
        "total": 2,
        "cancelled_dependents": 1,
        "task_type": "image_preprocess",
    }
    assert c.get(embed)["status"] == "cancelled"
    assert c.get(thumb)["status"] == "pending"
    keep = shim.post("/tasks/cancel-by-type", json_body={"task_type": "heavy"})
    assert keep.body["message"] == "已取消0个heavy任务"
    assert c.get(running)["status"] == "running"
    stop = shim.post("/tasks/cancel-by-type", form={"task_type": "heavy", "cancel_running": "yes"})
    assert stop.body["message"] == "已取消1个heavy任务"
    assert c.get(running)["status"] == "cancelled"
    for form, text in (
        ({}, "缺少参数: task_type"),
        ({"cancel_running": "true"}, "缺少参数: task_type"),
        ({"task_type": "", "cancel_running": "true"}, "缺少参数: task_type"),
        ({"task_type": "a b"}, "参数task_type的值无效"),
        ({"task_type": "thumbnail_generate", "cancel_running": "2"}, "参数cancel_running的值无效"),
    ):
        bad = shim.post("/tasks/cancel-by-type", form=form)
        assert bad.status == 400
        assert bad.body["detail"].startswith(text)
    assert c.get(thumb)["status"] == "pending"


def test_retry(served):
    _, shim, c = served
    failed = finished(c, "fail", {"message": "disk full"})
    assert failed["status"] == "failed"
    completed = finished(c, "noop")
    hold_worker(c)
    reply = shim.post(f"/tasks/{number(failed['id'])}/retry")
    assert reply.status == 200
    assert reply.body["success"] is True
    assert reply.body["message"] == f"任务已重试: {failed['id']}"
    new_id = reply.body["data"]["new_task_id"]
    new = c.get(new_id)
    assert (
        new["retry_of"] == failed["id"] and new["type"] == "fail" and new["data"] == {"message": "disk full"}
    )
    assert reply.body["data"]["task"] == new

    again = shim.post(f"/tasks/{failed['id']}/retry")
    assert again.status == 409
    assert again.body == {"detail": f"任务已经重试过: {failed['id']} -> {new_id}"}
    not_failed = shim.post(f"/tasks/{completed['id']}/retry")
    assert not_failed.status == 409
    assert not_failed.body == {"detail": "任务状态不是失败，无法重试: completed"}
    pending = shim.post(f"/tasks/{new_id}/retry")
    assert pending.body == {"detail": "任务状态不是失败，无法重试: pending"}
    for ref, shown in (
        ("task_999", "task_999"),
        ("999", "task_999"),
        ("task_important_file", "task_important_file"),
    ):
        missing = shim.post(f"/tasks/{ref}/retry")
        assert missing.status == 404
        assert missing.body == {"detail": f"任务不存在: {shown}"}
    assert shim.post(f"/tasks/{completed['id']}/retry", form={"force": "1"}).status == 400
    assert c.count(status="pending") == 1  # only the one retry was queued


def test_bodies_in_every_accepted_encoding(served):
    _, shim, c = served
    hold_worker(c)
    task = c.submit("file_scan")["id"]
    boundary = "XyZ"
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="priority"\r\n\r\n7\r\n--{boundary}--\r\n'
    ).encode()
    reply = shim.post(
        f"/tasks/{task}/priority",
        body=multipart,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert reply.status == 200 and c.get(task)["priority"] == 7
    for content_type, broken in (
        (f"multipart/form-data; boundary={boundary}", multipart.replace(b'; name="priority"', b"")),
        ("multipart/form-data", multipart),  # no boundary
    ):
        unreadable = shim.post(f"/tasks/{task}/priority", body=broken, headers={"Content-Type": content_type})
        assert unreadable.status == 400
        assert unreadable.body == {
            "detail": "multipart表单无法解析: 缺少boundary、字段缺少name，或格式有误"
        }, content_type
    utf8 = shim.post(
        f"/tasks/{task}/priority",
        body=b"priority=%EF%BC%95",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert utf8.status == 400 and "'５'" in utf8.body["detail"]  # a full-width digit is not an integer
    charset = shim.post(
        f"/tasks/{task}/priority",
        body=b'{"priority": 8}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert charset.status == 200 and c.get(task)["priority"] == 8
    unsupported = shim.post(
        f"/tasks/{task}/priority", body=b"priority=1", headers={"Content-Type": "text/plain"}
    )
    assert unsupported.status == 415
    assert "application/x-www-form-urlencoded" in unsupported.body["detail"]
    broken = shim.post(
        f"/tasks/{task}/priority", body=b'{"priority": ', headers={"Content-Type": "application/json"}
    )
    assert broken.status == 400 and broken.body["detail"].startswith("请求体不是有效的JSON")
    huge = shim.post(
        f"/tasks/{task}/priority",
        body=b"priority=1&x=" + b"a" * (1024 * 1024),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert huge.status == 413
    assert c.get(task)["priority"] == 8


def test_wrong_method_is_405_naming_the_methods_served(served):
    _, shim, _ = served
    for method, path, allow in (
        ("OPTIONS", "/tasks", "GET, POST"),
        ("DELETE", "/tasks/task_1", "GET"),
        ("GET", "/tasks/task_1/cancel", "POST"),
        ("PUT", "/tasks/cancel-all", "POST"),  # not GET: /tasks/{task_id} is not what this path means
        ("GET", "/tasks/cancel-all", "POST"),
        ("GET", "/tasks/cancel-by-type", "POST"),
        ("POST", "/tasks/stats", "GET"),
    ):
        reply = call(shim.url, method, "/api/v1" + path)
        assert reply.status == 405, (method, path, reply.body)
        assert reply.headers["Allow"] == allow, (method, path)
        assert reply.body == {"detail": f"不支持的请求方法: {method}（/api/v1{path} 只接受 {allow}）"}


def test_unknown_paths_are_404_in_the_documents_language(served):
    _, shim, _ = served
    for path in (
        "/api/v1/task",
        "/api/v2/tasks",
        "/api/v1/tasks/task_1/cancel/now",
        "/index.html",
        "/docs/static/nope.js",
    ):
        for method in ("GET", "POST"):
            reply = call(shim.url, method, path)
            if path.startswith("/docs/static/") and method == "POST":  # where files are served
                assert reply.status == 405 and reply.headers["Allow"] == "GET, HEAD"
                assert reply.body == {"detail": f"不支持的请求方法: POST（{path} 只接受 GET, HEAD）"}
                continue
            assert reply.status == 404, (method, path)
            assert reply.body == {"detail": f"路径不存在: {path}"}, (method, path)
    reply = call(shim.url, "POST", "/")  # the task manager page
    assert reply.status == 405 and reply.headers["Allow"] == "GET, HEAD"


def test_openapi_describes_every_path_and_every_answer(served):
    _, shim, c = served
    schema = call(shim.url, "GET", "/openapi.json").body
    ops = {(path, method) for path, item in schema["paths"].items() for method in item}
    assert ops == {
        ("/api/v1/tasks", "get"),
        ("/api/v1/tasks", "post"),
        ("/api/v1/tasks/stats", "get"),
        ("/api/v1/tasks/{task_id}", "get"),
        ("/api/v1/tasks/cancel-all", "post"),
        ("/api/v1/tasks/cancel-by-type", "post"),
        ("/api/v1/tasks/{task_id}/cancel", "post"),
        ("/api/v1/tasks/{task_id}/priority", "post"),
        ("/api/v1/tasks/{task_id}/retry", "post"),
        ("/api/v1/events", "get"),
        ("/api/v1/selection/cancel", "post"),
        ("/api/v1/selection/priority", "post"),
        ("/api/v1/selection/retry", "post"),
        ("/api/v1/queue", "get"),
        ("/api/v1/queue/pause", "post"),
        ("/api/v1/queue/resume", "post"),
        ("/api/v1/queue/drain", "post"),
        ("/api/v1/tasks/retry", "post"),
        ("/api/v1/tasks/cancel", "post"),
        ("/api/v1/tasks/priority", "post"),
        ("/api/v1/tasks/{task_id}/history", "get"),
        ("/api/v1/tasks/{task_id}/log", "get"),
        ("/api/v1/session", "post"),
        ("/api/v1/session", "delete"),
    }
    text = json.dumps(schema)
    assert "422" not in schema["paths"]["/api/v1/tasks"]["get"]["responses"]
    assert "HTTPValidationError" not in text
    forms = {"application/x-www-form-urlencoded", "multipart/form-data", "application/json"}
    for path in ("cancel-all", "cancel-by-type", "{task_id}/cancel", "{task_id}/priority", "{task_id}/retry"):
        body = schema["paths"][f"/api/v1/tasks/{path}"]["post"]["requestBody"]
        assert set(body["content"]) == forms, path
    priority = schema["paths"]["/api/v1/tasks/{task_id}/priority"]["post"]["requestBody"]
    assert priority["required"] is True
    form_schema = priority["content"]["application/x-www-form-urlencoded"]["schema"]
    assert form_schema["required"] == ["priority"]
    assert (
        form_schema["properties"]["priority"]["minimum"] == 0
        and form_schema["properties"]["priority"]["maximum"] == 11
    )
    assert set(schema["paths"]["/api/v1/tasks"]["post"]["requestBody"]["content"]) == {"application/json"}
    params = {p["name"]: p for p in schema["paths"]["/api/v1/tasks"]["get"]["parameters"]}
    assert set(params) == {"status", "task_type", "limit", "offset", "order"}
    assert params["limit"]["schema"]["maximum"] == 10000
    # The documented task has every field the RPC returns.
    hold_worker(c)
    task = c.submit("file_scan")
    documented = schema["components"]["schemas"]["Task"]["properties"]
    assert set(task) <= set(documented)

    # Every status an operation can give is declared: probe each with good and bad input.
    probes: list[tuple[str, str, dict[str, Any]]] = []
    for tid in (task["id"], number(task["id"]), "task_999", "bogus"):
        probes += [
            ("get", f"/api/v1/tasks/{tid}", {}),
            ("post", f"/api/v1/tasks/{tid}/priority", {"form": {"priority": "5"}}),
            ("post", f"/api/v1/tasks/{tid}/priority", {"form": {"priority": "50"}}),
            ("post", f"/api/v1/tasks/{tid}/retry", {}),
            (
                "post",
                f"/api/v1/tasks/{tid}/cancel",
                {"body": b"x", "headers": {"Content-Type": "text/plain"}},
            ),
            ("post", f"/api/v1/tasks/{tid}/cancel", {}),
        ]
    probes += [
        ("get", "/api/v1/tasks", {}),
        ("get", "/api/v1/tasks?limit=-5", {}),
        ("get", "/api/v1/tasks/stats", {}),
        ("post", "/api/v1/tasks", {"json_body": {"type": "noop"}}),
        ("post", "/api/v1/tasks", {"json_body": {"type": "noop", "depends_on": [999]}}),
        ("post", "/api/v1/tasks/cancel-by-type", {"form": {"task_type": "noop"}}),
        (
            "post",
            "/api/v1/tasks/cancel-all",
            {"body": b" " * (1024 * 1024 + 1), "headers": {"Content-Type": "application/json"}},
        ),
        ("post", "/api/v1/tasks/cancel-all", {"form": {"cancel_running": "true"}}),
        ("post", "/api/v1/tasks/retry", {"json_body": {"task_ids": [task["id"], 999]}}),
        ("post", "/api/v1/tasks/cancel", {"json_body": {"task_ids": []}}),
        ("post", "/api/v1/tasks/priority", {"form": {"priority": "1"}}),
        ("get", f"/api/v1/tasks/{task['id']}/history", {}),
        ("get", "/api/v1/tasks/task_999/log", {}),
        ("get", f"/api/v1/tasks/{task['id']}/log?offset=x", {}),
    ]
    seen = set()
    for method, path, kw in probes:
        reply = call(shim.url, method.upper(), path, **kw)
        template = re.sub(
            r"/tasks/(?!stats|cancel-all|cancel-by-type|retry$|cancel$|priority$)[^/?]+",
            "/tasks/{task_id}",
            path.split("?")[0],
        )
        declared = schema["paths"][template][method]["responses"]
        assert str(reply.status) in declared, (method, path, reply.status, reply.body)
        assert isinstance(reply.body.get("detail", ""), str)
        seen.add(reply.status)
    assert {200, 201, 400, 404, 409, 413, 415} <= seen


def test_the_schema_of_cancel_running_says_what_the_shim_accepts(served):
    """An empty form field is an absent one (false); in JSON an empty string is refused."""
    _, shim, _ = served
    schema = call(shim.url, "GET", "/openapi.json").body
    body = schema["paths"]["/api/v1/tasks/cancel-all"]["post"]["requestBody"]["content"]
    form_pattern = body["application/x-www-form-urlencoded"]["schema"]["properties"]["cancel_running"][
        "pattern"
    ]
    assert body["multipart/form-data"]["schema"]["properties"]["cancel_running"]["pattern"] == form_pattern
    json_kinds = body["application/json"]["schema"]["properties"]["cancel_running"]["anyOf"]
    json_pattern = next(k["pattern"] for k in json_kinds if k["type"] == "string")
    for value in ("", "on", "OFF", "True", "t", "Y", "0", "maybe", "2", " ", "true ", "nein"):
        by_form = shim.post("/tasks/cancel-all", form={"cancel_running": value})
        by_json = shim.post("/tasks/cancel-all", json_body={"cancel_running": value})
        assert by_form.status in (200, 400) and by_json.status in (200, 400), value
        assert (by_form.status == 200) == bool(re.fullmatch(form_pattern, value)), (value, by_form.body)
        assert (by_json.status == 200) == bool(re.fullmatch(json_pattern, value)), (value, by_json.body)
    assert re.fullmatch(form_pattern, "") and not re.fullmatch(json_pattern, "")


def test_docs_need_nothing_but_the_shim(served):
    """/docs and /redoc load their scripts, styles and icons from the shim: they work offline."""
    _, shim, _ = served
    for page in ("/docs", "/redoc"):
        reply = http_get(shim.url, page)
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/html")
        html = reply.body.decode()
        assert "://" not in html, page  # no absolute URL: nothing from a CDN
        urls = set(re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", html))
        urls |= set(re.findall(r"""url\s*:\s*["']([^"']+)["']""", html))
        assert any(u.endswith(".js") for u in urls), (page, urls)
        assert "/openapi.json" in urls, (page, urls)
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), (page, url)
            asset = http_get(shim.url, url)
            assert asset.status == 200, (page, url)
            assert asset.body, (page, url)
    swagger = http_get(shim.url, "/docs").body.decode()
    assert '"validatorUrl": null' in swagger  # no badge fetched from swagger.io either


# --- the document's examples, with curl ---------------------------------------------------------------

TASKS = "http://localhost:8000/api/v1/tasks"
EXAMPLES = {
    "cancel": f"curl -X POST {TASKS}/task_12345/cancel",
    "priority_0": f'curl -X POST {TASKS}/task_12345/priority -d "priority=0"',
    "priority_10": f'curl -X POST {TASKS}/task_12345/priority -d "priority=10"',
    "cancel_all_false": f'curl -X POST {TASKS}/cancel-all -d "cancel_running=false"',
    "cancel_all_true": f'curl -X POST {TASKS}/cancel-all -d "cancel_running=true"',
    "by_type_image": f'curl -X POST {TASKS}/cancel-by-type -d "task_type=image_preprocess"',
    "by_type_video": (
        f'curl -X POST {TASKS}/cancel-by-type -d "task_type=file_embed_video&cancel_running=true"'
    ),
    "list_pending": f"curl -s {TASKS}?status=pending | python3 -m json.tool",
    "important_file": f'curl -X POST {TASKS}/task_important_file/priority -d "priority=0"',
    "by_type_thumbnail": f'curl -X POST {TASKS}/cancel-by-type -d "task_type=thumbnail_generate"',
    "retry": f"curl -X POST {TASKS}/task_12345/retry",
    "list_failed": f'curl -s "{TASKS}?status=failed" | python3 -m json.tool',
    "preview_123": f'curl -X POST {TASKS}/task_preview_123/priority -d "priority=10"',
}


def test_examples_are_the_documents():
    if not DOC.exists():
        pytest.skip(f"{DOC} is not beside this checkout")
    in_doc = {line.strip() for line in DOC.read_text().splitlines() if line.strip().startswith("curl ")}
    assert in_doc == set(EXAMPLES.values())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.skipif(shutil.which("python3") is None, reason="the examples pipe into python3")
def test_every_curl_example_of_the_document(served):
    _, shim, c = served
    port = urlsplit(shim.url).port

    def run(name: str, task_id: str | None = None) -> Any:
        command = EXAMPLES[name].replace("localhost:8000", f"localhost:{port}")
        if task_id is not None:
            command = command.replace("task_12345", task_id)
        out = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=DEADLINE)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    failed = finished(c, "fail")["id"]
    held = hold_worker(c)["id"]
    p1, p2 = c.submit("file_scan")["id"], c.submit("file_scan")["id"]

    listed = run("list_pending")
    assert [t["id"] for t in listed["tasks"]] == [p1, p2] and listed["total"] == 2
    assert [t["id"] for t in run("list_failed")["tasks"]] == [failed]
    cancelled = run("cancel", p1)
    assert (cancelled["success"], cancelled["message"]) == (True, f"任务已取消: {p1}")
    assert c.get(p1)["status"] == "cancelled"
    assert run("priority_0", p2)["message"] == f"任务优先级已更新: {p2} -> 0"
    assert c.get(p2)["priority"] == 0
    assert run("priority_10", p2)["message"] == f"任务优先级已更新: {p2} -> 10"
    assert c.get(p2)["priority"] == 10
    assert run("important_file") == {"detail": "任务不存在"}
    assert run("preview_123") == {"detail": "任务不存在"}
    retried = run("retry", failed)
    assert retried["message"] == f"任务已重试: {failed}"
    assert c.get(retried["data"]["new_task_id"])["retry_of"] == failed

    for _ in range(2):
        c.submit("image_preprocess")
    assert run("by_type_image")["message"] == "已取消2个image_preprocess任务"
    c.submit("thumbnail_generate")
    assert run("by_type_thumbnail")["result"] == {
        "cancelled": 1,
        "failed": 0,
        "total": 1,
        "cancelled_dependents": 0,
        "task_type": "thumbnail_generate",
    }
    c.submit("file_embed_video")
    assert run("by_type_video")["message"] == "已取消1个file_embed_video任务"
    # Left waiting: p2 and the retry; the held task runs on.
    assert run("cancel_all_false")["message"] == "已取消2个任务"
    assert c.get(held)["status"] == "running"
    assert run("cancel_all_true") == {
        "success": True,
        "message": "已取消1个任务",
        "result": {"cancelled": 1, "failed": 0, "total": 1, "cancelled_dependents": 0},
    }
    assert c.get(held)["status"] == "cancelled"


# --- load, and a daemon that is away or broken --------------------------------------------------------


def test_fifty_clients_at_once(served):
    _, shim, c = served
    hold_worker(c)
    n = 50
    start = threading.Barrier(n)

    def client(i: int) -> str:
        start.wait(DEADLINE)
        made = shim.post("/tasks", json_body={"type": "file_scan", "data": {"i": i}})
        assert made.status == 201, made.body
        task_id = made.body["data"]["task_id"]
        got = shim.get(f"/tasks/{number(task_id)}")
        assert got.status == 200 and got.body["data"] == {"i": i}
        moved = shim.post(f"/tasks/{task_id}/priority", form={"priority": str(i % 12)})
        assert moved.body["message"] == f"任务优先级已更新: {task_id} -> {i % 12}"
        assert shim.get("/tasks?status=pending&limit=1").status == 200
        if i % 2:
            gone = shim.post(f"/tasks/{task_id}/cancel")
            assert gone.body["message"] == f"任务已取消: {task_id}"
        return task_id

    with ThreadPoolExecutor(n) as pool:
        ids = list(pool.map(client, range(n)))
    assert len(set(ids)) == n
    tasks = {t["id"]: t for t in c.list(task_type="file_scan")}
    assert set(tasks) == set(ids)
    for i, task_id in enumerate(ids):
        assert tasks[task_id]["data"] == {"i": i}
        assert tasks[task_id]["priority"] == i % 12
        assert tasks[task_id]["status"] == ("cancelled" if i % 2 else "pending")


def test_unreachable_daemon_is_503(tmp_path, standalone):
    socket_path = tmp_path / "nobody.sock"
    shim = standalone("127.0.0.1:0", "--socket", str(socket_path)).shim()
    for method, path in (
        ("GET", "/tasks"),
        ("GET", "/tasks/task_1"),
        ("POST", "/tasks/task_1/cancel"),
        ("GET", "/tasks/stats"),
    ):
        reply = call(shim.url, method, "/api/v1" + path)
        assert reply.status == 503, path
        assert reply.body == {
            "detail": f"msearchd守护进程不可用: 无法连接 {socket_path}（套接字不存在），守护进程是否在运行？"
        }
    assert refused_event_stream(shim).body == reply.body


def test_standalone_shim_follows_the_daemon_across_a_restart(make_daemon, standalone):
    d = make_daemon(workers=1)
    shim = standalone("127.0.0.1:0", "--socket", str(d.socket)).shim()
    with d.client() as c:
        task = c.submit("file_embed_audio", {"f": "a.wav"})
    assert shim.get(f"/tasks/{task['id']}").body["data"] == {"f": "a.wav"}
    assert d.stop() == 0
    down = shim.get(f"/tasks/{task['id']}")
    assert down.status == 503
    assert down.body["detail"].startswith(f"msearchd守护进程不可用: 无法连接 {d.socket}")
    d.start()
    # The pooled connections died with the old daemon; the shim must not answer from them.
    for _ in range(3):
        back = shim.get(f"/tasks/{task['id']}")
        assert back.status == 200 and back.body["id"] == task["id"]


def test_daemon_errors_are_500_with_a_log_line_and_a_hang_is_503(tmp_path, standalone):
    path = tmp_path / "fake.sock"

    def answer(request: dict[str, Any]) -> dict[str, Any] | None:
        if request["method"] == "stats":
            return {"error": {"code": "internal", "message": "the store is on fire"}}
        if request["method"] == "get":
            return {"error": {"code": "surprise", "message": "a code nobody knows"}}
        if request["method"] == "cancel_all":
            return {"result": "not the map the shim expects"}
        return None  # never answer

    fake = FakeDaemon(path, answer)
    try:
        run = standalone("127.0.0.1:0", "--socket", str(path), "--rpc-timeout", "0.5")
        shim = run.shim()
        broken = shim.get("/tasks/stats")
        assert broken.status == 500
        assert broken.body == {"detail": "msearchd内部错误（internal）: the store is on fire"}
        run.lines.wait_for(re.compile(r"ERROR msearchd.http: msearchd answered with an error \(internal\)"))
        unknown = shim.get("/tasks/task_1")
        assert unknown.status == 500 and "a code nobody knows" in unknown.body["detail"]
        odd = shim.post("/tasks/cancel-all")
        assert odd.status == 500
        assert odd.body["detail"].startswith("内部错误: TypeError: ")
        run.lines.wait_for(re.compile(r"ERROR msearchd.http: POST /api/v1/tasks/cancel-all failed"))
        hung = shim.post("/tasks/task_1/cancel")
        assert hung.status == 503
        assert hung.body == {"detail": "msearchd守护进程不可用: 守护进程未在0.5秒内回答cancel请求"}
    finally:
        fake.close()


# --- the shim's life beside the daemon ----------------------------------------------------------------


def test_a_killed_shim_is_restarted_and_the_daemon_serves_meanwhile(make_daemon):
    d, shim = start_with_shim(make_daemon, workers=1)
    assert d.proc is not None
    os.kill(shim.pid, signal.SIGKILL)
    added = d.ctl("tasks", "add", "file_scan", "--json")
    assert added.returncode == 0, added.stderr
    assert d.ctl("tasks", "stats", "--json").returncode == 0
    d.lines.wait_for(
        re.compile(
            rf"http shim \(pid {shim.pid}\) killed by SIGKILL after [0-9.]+ s; restarting it in 0.25 s"
        )
    )
    restarted = d.lines.wait_for(LISTEN_RE, count=2)[1]
    new_pid = int(restarted.group(2))
    assert new_pid != shim.pid and restarted.group(1) == shim.url  # same port: the daemon kept the socket
    assert psutil.Process(new_pid).ppid() == d.proc.pid
    assert call(shim.url, "GET", "/api/v1/tasks/stats").body["total"] == 1
    # A shim that keeps dying is restarted after a growing delay.
    os.kill(new_pid, signal.SIGKILL)
    d.lines.wait_for(re.compile(rf"http shim \(pid {new_pid}\) killed by SIGKILL .* restarting it in 0.50 s"))
    d.lines.wait_for(LISTEN_RE, count=3)
    assert d.stop() == 0


def test_a_hung_shim_does_not_stall_the_daemon(make_daemon):
    d, shim = start_with_shim(make_daemon, workers=1)
    os.kill(shim.pid, signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError):
            call(shim.url, "GET", "/api/v1/tasks/stats", timeout=1.0)
        added = d.ctl("tasks", "add", "--json", "noop")
        assert added.returncode == 0, added.stderr
        task_id = json.loads(added.stdout)["id"]
        waited = d.ctl("tasks", "wait", task_id, "--timeout", "20")
        assert waited.returncode == 0, waited.stderr
        shown = json.loads(d.ctl("tasks", "show", task_id, "--json").stdout)
        assert shown["status"] == "completed"
    finally:
        # Stopping the daemon with its shim still stopped: the daemon resumes and ends it.
        assert d.stop() == 0
    wait_dead(shim.pid)
    assert "ignored SIGTERM" not in d.log


def test_stopping_the_daemon_ends_the_shim_and_frees_the_port(make_daemon):
    port = free_port()
    d, shim = start_with_shim(make_daemon, http=f"127.0.0.1:{port}")
    assert shim.url == f"http://127.0.0.1:{port}"
    assert d.stop() == 0
    wait_dead(shim.pid)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_a_daemon_killed_by_sigkill_takes_its_shim_along(make_daemon):
    port = free_port()
    d, shim = start_with_shim(make_daemon, http=f"127.0.0.1:{port}")
    d.kill9()
    wait_dead(shim.pid)
    # Nothing holds the port any more: a new daemon on the same state serves it again.
    d.lines = Lines()
    d.start()
    again = d.lines.wait_for(LISTEN_RE)[0]
    assert again.group(1) == f"http://127.0.0.1:{port}"
    assert call(again.group(1), "GET", "/api/v1/tasks/stats").status == 200
    assert d.stop() == 0


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_without_a_token_only_the_daemons_user_is_served(served):
    """On loopback without a token, another local user must not reach the queue through HTTP."""
    _, shim, c = served
    url = urlsplit(shim.url)
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            os.setgid(65534)
            os.setuid(65534)
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=DEADLINE)
            body = json.dumps({"type": "command", "data": {"argv": ["touch", "/tmp/pwned"]}})
            conn.request("POST", "/api/v1/tasks", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            code = 0 if response.status == 403 and "uid 65534" in response.read().decode() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert c.count() == 0
    assert shim.get("/tasks/stats").status == 200  # the daemon's own user still is served


def sse_events(response: http.client.HTTPResponse) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a Server-Sent Events stream, as they arrive."""
    kind, data = "", ""
    while line := response.readline():
        text = line.decode().rstrip("\n")
        if text.startswith("event: "):
            kind = text.removeprefix("event: ")
        elif text.startswith("data: "):
            data = text.removeprefix("data: ")
        elif text == "" and kind:
            yield kind, json.loads(data)
            kind, data = "", ""


def test_events_stream_as_server_sent_events(served, fifo):
    _, shim, c = served
    url = urlsplit(shim.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=DEADLINE)
    conn.request("GET", "/api/v1/events?task_type=stepper,noop")
    response = conn.getresponse()
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.readline() == b": subscribed\n"  # live from here
    gate = fifo("steps")
    task = c.submit("stepper", {"fifo": str(gate), "steps": 2})
    c.submit("file_scan")  # another type: not in this stream
    seen = []
    with open(gate.path, "w") as steps:
        steps.write("next\n")
        steps.flush()
        for kind, event in sse_events(response):
            assert event["task_id"] == task["id"] and event["event"] == kind
            seen.append((kind, event.get("progress")))
            if kind == "progress" and event["progress"] < 1:
                steps.write("next\n")
                steps.flush()
            if kind == "completed":
                break
    conn.close()
    assert seen == [
        ("submitted", None),
        ("started", None),
        ("progress", 0.5),
        ("progress", 1.0),
        ("completed", None),
    ]


def test_events_refuse_bad_filters(served):
    _, shim, _ = served
    assert shim.get("/events?task_id=banana").status == 400
    assert shim.get("/events?colour=red").status == 400
    spec = call(shim.url, "GET", "/openapi.json")
    assert "text/event-stream" in spec.body["paths"]["/api/v1/events"]["get"]["responses"]["200"]["content"]
    assert "事件流已达上限" in spec.body["paths"]["/api/v1/events"]["get"]["responses"]["503"]["description"]


def open_event_stream(shim: Shim, query: str = "") -> socket.socket:
    """A raw connection reading /api/v1/events, once the subscription is live; closing it is a client
    vanishing (no end of stream is ever sent)."""
    url = urlsplit(shim.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=DEADLINE)
    sock.sendall(f"GET /api/v1/events{query} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
    got = b""
    while b": subscribed\n\n" not in got:
        chunk = sock.recv(4096)
        assert chunk, f"the shim closed the stream: {got!r}"
        got += chunk
    assert got.startswith(b"HTTP/1.1 200 "), got
    return sock


def refused_event_stream(shim: Shim) -> Reply:
    """A request for /api/v1/events that must be refused: its answer, without waiting on a stream."""
    url = urlsplit(shim.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=DEADLINE)
    try:
        conn.request("GET", "/api/v1/events")
        response = conn.getresponse()
        assert response.status != 200, "the stream was opened"
        return Reply(response.status, json.loads(response.read()), response.headers)
    finally:
        conn.close()


def test_event_streams_are_capped_and_a_vanished_client_frees_its_own(make_daemon, standalone):
    d = make_daemon(workers=1)
    run = standalone("127.0.0.1:0", "--socket", str(d.socket), "--log-level", "debug")
    shim = run.shim()
    streams = [open_event_stream(shim) for _ in range(MAX_EVENT_STREAMS)]
    try:
        over = refused_event_stream(shim)
        assert over.status == 503
        assert over.body == {
            "detail": f"同时打开的事件流已达上限（{MAX_EVENT_STREAMS}个），请先关闭不用的事件流再试"
        }
        # A stream whose client vanished is closed on both sides, and its place is free again.
        daemon_side = len(psutil.Process(shim.pid).net_connections("unix"))
        streams.pop().close()
        run.lines.wait_for(re.compile(rf"event stream closed \({MAX_EVENT_STREAMS - 1} open\)"))
        assert len(psutil.Process(shim.pid).net_connections("unix")) == daemon_side - 1
        streams.append(open_event_stream(shim))
        assert refused_event_stream(shim).status == 503
        # The streams still open are live.
        with d.client() as c:
            task = c.submit("noop")
        seen = b""
        while f'"task_id": "{task["id"]}"'.encode() not in seen:
            chunk = streams[0].recv(65536)
            assert chunk, seen
            seen += chunk
    finally:
        for sock in streams:
            sock.close()
    run.lines.wait_for(re.compile(r"event stream closed \(0 open\)"))
