"""Promises of the README and the man pages that no other test holds the daemon to: stop signals,
leases, type limits, HTTP addresses, entry-point handlers, the asyncio client, a socket folder of
another user, and the live watch table."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import MSEARCHCTL, MSEARCHD, TESTS
from support import gone, wait_started

from msearchd.client import AsyncClient
from msearchd.errors import NotFound, Unavailable
from msearchd.store import Store

LISTEN_RE = re.compile(r"http shim listening on (http://\S+) \(pid (\d+)\)")


# --- stop signals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_sigint_and_sighup_stop_the_daemon_as_sigterm_does(make_daemon, fifo, sig):
    d = make_daemon(workers=1)
    pipe = fifo("pids")
    with d.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", f"sleep 1000 & echo $! > {pipe}; wait"]}, priority=0)
        sleeper = int(pipe.read())
        queued = c.submit("file_scan")
    assert d.proc is not None
    d.proc.send_signal(sig)
    assert d.proc.wait(timeout=60) == 0
    assert gone(sleeper)
    assert not d.socket.exists()
    d.wait_for_log("msearchd: stopped\n")
    store = Store(d.state_dir / "tasks.db")
    try:
        for task_id, attempts in ((task["id"], 1), (queued["id"], 0)):
            saved = store.get(int(task_id.removeprefix("task_")))
            assert saved is not None and (str(saved.status), saved.attempts) == ("pending", attempts)
    finally:
        store.close()


# --- leases -------------------------------------------------------------------------------------------


def known_to_be_quick(c: Any) -> None:
    """Run enough `quick` tasks for the daemon to know they are short: it leases them from then on."""
    ids = c.submit_many([{"type": "quick"}] * 50)["task_ids"]
    assert not c.wait(ids, timeout=60)["timed_out"]


def test_a_lease_holds_64_tasks_at_most(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate, hold = fifo("gate"), fifo("hold")
    with d.client() as c:
        known_to_be_quick(c)
        c.submit("stepper", {"fifo": str(gate), "steps": 1}, priority=0)
        held = {"type": "quick", "data": {"fifo": str(hold)}, "priority": 1}
        first, *rest = c.submit_many([held, *[{"type": "quick", "priority": 1}] * 199])["task_ids"]
        gate.write()  # the worker is free: it gets the first quick task and those after it
        line = d.wait_for_log("go back to the queue")
        # The first one holds its lease: the rest of the lease goes back once it overran.
        assert f"{first} overran its lease; 63 task(s) after it go back" in line
        hold.write()
        done = c.wait([first, *rest], timeout=60)
        assert not done["timed_out"]
        assert {t["status"] for t in done["tasks"]} == {"completed"}


def test_a_worker_at_work_is_handed_its_next_lease_before_it_ends_the_one_it_has(make_daemon, fifo):
    """It goes from one lease into the next without waiting for the daemon: the next lease is out
    while the last task of the one before still runs."""
    d = make_daemon(workers=1)
    gate, hold = fifo("gate"), fifo("hold")
    with d.client() as c:
        known_to_be_quick(c)
        c.submit("stepper", {"fifo": str(gate), "steps": 1}, priority=0)
        quick = {"type": "quick", "priority": 1}
        held = {"type": "quick", "data": {"fifo": str(hold)}, "priority": 1}
        ids = c.submit_many([*[quick] * 63, held, *[quick] * 3])["task_ids"]
        last, following = ids[63], ids[64:]  # a lease holds 64: the held one ends the first
        with c.events(task_ids=following) as stream:
            gate.write()  # the worker is free: it gets the first lease, and stops at its last task
            assert stream.ready(timeout=20), "no lease went out while the worker was at work"
            event = next(stream)
        assert (event["event"], event["task_id"]) == ("started", following[0])
        assert c.get(last)["status"] == "running"
        hold.write()
        done = c.wait(ids, timeout=60)
        assert {t["status"] for t in done["tasks"]} == {"completed"}


def test_a_worker_held_up_by_a_task_is_handed_one_lease_ahead_at_most(make_daemon, fifo):
    """A task of a short type that runs long holds its worker: the worker is handed more once, which
    goes back to the queue when it overran, and not lease after lease while another worker reports."""
    d = make_daemon(workers=2)
    gate, gate2, hold = fifo("gate"), fifo("gate2"), fifo("hold")
    with d.client() as c:
        known_to_be_quick(c)
        c.submit("stepper", {"fifo": str(gate), "steps": 1}, priority=0)
        c.submit("stepper", {"fifo": str(gate2), "steps": 1}, priority=0)
        held = c.submit("quick", {"fifo": str(hold)}, priority=1)["id"]
        # About a second of work for the other worker, 10 ms a task: it reports all along.
        rest = c.submit_many([{"type": "quick", "data": {"sleep": 0.01}, "priority": 2}] * 100)["task_ids"]
        gate.write()  # one worker takes `held` and the tasks after it, and stays in `held`
        d.wait_for_log(f"{held} overran its lease")  # those went back
        gate2.write()  # the other worker runs them, reporting as it goes
        done = c.wait(rest, timeout=60)
        assert {t["status"] for t in done["tasks"]} == {"completed"}
        overruns = [line for line in d.lines if f"{held} overran its lease" in line]
        assert len(overruns) == 2, overruns  # its first lease, then the one more it was handed
        hold.write()
        assert c.wait([held], timeout=20)["tasks"][0]["status"] == "completed"


def test_one_task_handed_to_a_worker_at_work_goes_back_if_the_task_before_it_runs_long(make_daemon, fifo):
    """A worker near the end of its lease is handed its next one, even a lease of one task, which
    then waits behind the task it is at. If that task runs far longer than expected, what waits
    behind it goes back to the queue, as the tasks after the first of a lease do."""
    d = make_daemon(workers=1)
    gate, hold = fifo("gate"), fifo("hold")
    with d.client() as c:
        known_to_be_quick(c)
        # One lease of two: the worker waits in the first for the gate, then stays in the second.
        first, second = c.submit_many(
            [{"type": "quick", "data": {"fifo": str(f)}, "priority": 1} for f in (gate, hold)]
        )["task_ids"]
        behind = c.submit("quick", priority=2)["id"]  # the worker is at work: it waits
        assert c.get(behind)["status"] == "pending"
        gate.write()  # `first` ends: a turn of the dispatcher, which hands `behind` to the worker
        d.wait_for_log(f"{second} overran its lease")
        assert c.get(behind)["status"] == "pending"  # back in the queue, its start not counted
        assert c.get(behind)["attempts"] == 0
        assert c.get(second)["status"] == "running"
        hold.write()  # the worker is free again, and runs it
        done = c.wait([first, second, behind], timeout=20)["tasks"]
        assert {t["status"] for t in done} == {"completed"}


def test_an_end_in_a_lease_is_reported_before_the_next_task_ends(make_daemon, fifo, tmp_path):
    """Ends of a lease's tasks are reported together, but 10 ms late at most: the first end is known
    while the second task still runs (half a second, by its own clock), and the third has not started."""
    d = make_daemon(workers=1)
    gate = fifo("gate")
    third_ran = tmp_path / "third"
    with d.client() as c, c.events(types=["quick"]) as stream:
        known_to_be_quick(c)
        c.submit("stepper", {"fifo": str(gate), "steps": 1}, priority=0)
        first, second, third = c.submit_many(
            [
                {"type": "quick", "priority": 1},
                {"type": "quick", "data": {"sleep": 0.5}, "priority": 1},
                {"type": "quick", "data": {"record": str(third_ran)}, "priority": 1},
            ]
        )["task_ids"]
        gate.write()
        for event in stream:
            if event["event"] == "started" and event["task_id"] == third:
                assert event["worker_pid"] == c.get(first)["worker_pid"]  # one lease: all three
            if event["event"] == "completed" and event["task_id"] == first:
                break
        assert not third_ran.exists()
        assert c.get(second)["status"] == "running"
        done = c.wait([first, second, third], timeout=30)
        assert [t["status"] for t in done["tasks"]] == ["completed"] * 3


# --- type limits --------------------------------------------------------------------------------------


def held_heavy(c: Any, gate: Any) -> str:
    return c.submit("heavy", {"argv": ["sh", "-c", f"read x < {gate}"]}, priority=0)["id"]


def passes_them(c: Any) -> None:
    """A task of another type, queued behind the limited ones, runs: the dispatcher passed them."""
    other = c.submit("command", {"argv": ["true"]}, priority=5)
    assert c.wait([other["id"]], timeout=20)["tasks"][0]["status"] == "completed"


def test_a_type_limit_above_one_holds_and_survives_a_restart(make_daemon, fifo):
    # "heavy" runs commands under another type name (see conftest), two at a time at most.
    d = make_daemon(workers=4, config_extra="\n[type_limits]\nheavy = 2\n")
    gates = [fifo(f"gate{i}") for i in range(3)]
    with d.client() as c:
        heavy = [held_heavy(c, gate) for gate in gates]
        for task_id in heavy[:2]:
            wait_started(c, task_id)
        passes_them(c)
        assert c.get(heavy[2])["status"] == "pending"
    d.kill9()
    d.start()  # the two running are interrupted: all three are queued again, under the same limit
    with d.client() as c:
        for task_id in heavy[:2]:
            wait_started(c, task_id)
        passes_them(c)
        assert [c.get(t)["status"] for t in heavy] == ["running", "running", "pending"]
        assert [c.get(t)["attempts"] for t in heavy] == [2, 2, 0]
        gates[0].write()
        wait_started(c, heavy[2])  # a place freed up
        gates[1].write()
        gates[2].write()
        done = c.wait(heavy, timeout=30)
        assert [t["status"] for t in done["tasks"]] == ["completed"] * 3


# --- HTTP addresses and token -------------------------------------------------------------------------


def shim_url(d: Any) -> str:
    match = LISTEN_RE.search(d.wait_for_log("http shim listening on"))
    assert match is not None
    return match.group(1)


def get_stats(host: str, port: int, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/api/v1/tasks/stats", headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_given_a_bare_port_listens_on_loopback(make_daemon):
    port = free_port()
    d = make_daemon(workers=1, extra_args=("--http", str(port)))
    assert shim_url(d) == f"http://127.0.0.1:{port}"
    status, stats = get_stats("127.0.0.1", port)
    assert (status, stats["workers"]["total"]) == (200, 1)


def test_http_on_an_ipv6_loopback_in_brackets(make_daemon):
    d = make_daemon(workers=1, extra_args=("--http", "[::1]:0"))
    url = shim_url(d)
    port = int(url.rpartition(":")[2])
    assert url == f"http://[::1]:{port}"
    assert get_stats("::1", port)[0] == 200


def test_the_daemon_takes_its_http_token_from_the_environment(make_daemon):
    d = make_daemon(
        workers=1, extra_args=("--http", "0.0.0.0:0"), extra_env={"MSEARCH_HTTP_TOKEN": "fr0m-env"}
    )
    url = shim_url(d)  # beyond loopback: it started, so it has a token
    port = int(url.rpartition(":")[2])
    assert get_stats("127.0.0.1", port)[0] == 401
    assert get_stats("127.0.0.1", port, {"Authorization": "Bearer fr0m-env"})[0] == 200
    pid = int(LISTEN_RE.search(d.wait_for_log("http shim listening on")).group(2))  # type: ignore[union-attr]
    assert "fr0m-env" not in " ".join(psutil.Process(pid).cmdline())


# --- entry-point handlers -----------------------------------------------------------------------------


def install_entry_points(folder: Path, handlers: dict[str, str]) -> None:
    """A tiny installed distribution in `folder` registering `handlers` under msearchd.handlers."""
    package = folder / "msearch_plugin"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import os\n\n\n"
        "def mark(ctx, data):\n"
        "    with open(data['out'], 'a') as f:\n"
        "        f.write(f\"plugin {ctx.task_id} {os.environ['MSEARCH_TASK_ID']}\\n\")\n"
    )
    info = folder / "msearch_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: msearch-plugin\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in handlers.items())
    (info / "entry_points.txt").write_text(f"[msearchd.handlers]\n{lines}")


def test_entry_point_handlers_run_a_new_type_and_yield_to_the_config_file(make_daemon, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    # A new type, and one that the test config already names (noop = "handlers:noop"): the file wins.
    install_entry_points(plugins, {"plugin_mark": "msearch_plugin:mark", "noop": "msearch_plugin:mark"})
    d = make_daemon(workers=1, extra_env={"PYTHONPATH": f"{TESTS}{os.pathsep}{plugins}"})
    out = tmp_path / "out"
    with d.client() as c:
        new = c.submit("plugin_mark", {"out": str(out)})
        configured = c.submit("noop", {"out": str(out)})
        done = c.wait([new["id"], configured["id"]], timeout=30)
    assert [t["status"] for t in done["tasks"]] == ["completed", "completed"]
    assert out.read_text() == f"plugin {new['id']} {new['id']}\n"


# --- the asyncio client -------------------------------------------------------------------------------


def test_async_client_submits_waits_and_follows_events(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate = fifo("gate")

    async def scenario() -> tuple[list[tuple[str, str]], dict[str, Any], dict[str, Any]]:
        c = await AsyncClient.connect(d.socket)
        try:
            held = await c.submit("command", {"argv": ["sh", "-c", f"read x < {gate}"]}, priority=0)
            await c.wait([held["id"]], statuses=["running"], timeout=20)
            stream = await c.events(types=["noop"])
            task = await c.submit("noop", priority=9)
            assert (await c.set_priority(task["id"], 2))["priority"] == 2
            with pytest.raises(NotFound):
                await c.get("task_999999")
            await asyncio.to_thread(gate.write)
            done = await c.wait([task["id"]], timeout=20)
            seen = []
            async for event in stream:
                seen.append((event["event"], event["task_id"]))
                if event["event"] == "completed":
                    break
            await stream.close()
            return seen, done, await c.get(held["id"])
        finally:
            await c.close()

    seen, done, held = asyncio.run(asyncio.wait_for(scenario(), 60))
    task_id = done["tasks"][0]["id"]
    assert (done["timed_out"], done["tasks"][0]["status"], done["tasks"][0]["priority"]) == (
        False,
        "completed",
        2,
    )
    assert seen == [(kind, task_id) for kind in ("submitted", "priority_changed", "started", "completed")]
    assert held["status"] == "completed"


def test_async_client_sees_the_daemon_go(make_daemon):
    d = make_daemon(workers=1)

    async def scenario() -> tuple[bool, bool]:
        c = await AsyncClient.connect(d.socket)
        await c.status()
        before = c.closed
        assert await asyncio.to_thread(d.stop) == 0
        with pytest.raises(Unavailable):
            await c.status()
        after = c.closed
        await c.close()
        return before, after

    before, after = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert (before, after) == (False, True)


# --- a socket folder of another user ------------------------------------------------------------------


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
def test_a_socket_folder_of_another_user_stops_the_daemon(make_daemon):
    d = make_daemon(start=False)
    folder = d.socket.parent
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)  # nobody's
    out = subprocess.run(
        [MSEARCHD, "--config", str(d.config)], env=d.env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert out.stderr == (
        f"msearchd: the socket folder {folder} belongs to uid 65534, not to this user (uid {os.getuid()})\n"
    )
    assert list(folder.iterdir()) == []
    assert (folder.stat().st_uid, folder.stat().st_mode & 0o777) == (65534, 0o700)


# --- the live watch table -----------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


class Terminal:
    """A command on a pseudo-terminal, and what it has drawn so far (escape sequences removed)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.main, child = pty.openpty()
        env = {**env, "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "50"}
        # Ctrl-C reaches a command run from a terminal even where the suite itself ignores SIGINT (as
        # a job started in the background by a non-interactive shell does, and its children with it).
        self.proc = subprocess.Popen(
            argv,
            stdin=child,
            stdout=child,
            stderr=child,
            env=env,
            close_fds=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        os.close(child)
        self.raw = bytearray()

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    def wait_for(self, pattern: str, timeout: float = 30.0) -> None:
        """Read until what the command drew matches `pattern`."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text):
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} never appeared:\n{self.text}"
            if select.select([self.main], [], [], left)[0]:
                try:
                    self.raw += os.read(self.main, 65536)
                except OSError:  # the command closed the terminal
                    assert re.search(pattern, self.text), f"{pattern!r} never appeared:\n{self.text}"

    def finish(self, timeout: float = 30.0) -> int:
        """Read all the command writes until it closes the terminal; returns its exit status."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.main], [], [], left)[0]:
                continue
            try:
                chunk = os.read(self.main, 65536)
            except OSError:  # EIO: every holder of the terminal's other end has closed it
                break
            if not chunk:
                break
            self.raw += chunk
        return self.proc.wait(timeout=max(deadline - time.monotonic(), 1.0))

    def close(self) -> None:
        os.close(self.main)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_watch_draws_a_live_table_on_a_terminal_and_exits_130_on_ctrl_c(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate = fifo("steps")
    with d.client() as c:
        task = c.submit("stepper", {"fifo": str(gate), "steps": 2})
        c.wait([task["id"]], statuses=["running"], timeout=20)
    term = Terminal([MSEARCHCTL, "tasks", "watch"], d.env)
    try:
        term.wait_for(rf"ID\s+TYPE\s+STATUS\s+PROGRESS.*\n.*{task['id']}\s+stepper\s+running\s")
        with open(gate.path, "w") as steps:
            steps.write("next\n")
            steps.flush()
            term.wait_for(rf"{task['id']}\s+stepper\s+running\s.*\s50%\s.*step 1 of 2")
            steps.write("next\n")
        term.wait_for(rf"{task['id']}\s+stepper\s+completed\s.*100%")
        term.proc.send_signal(signal.SIGINT)
        assert term.finish() == 130
        assert "Traceback" not in term.text
    finally:
        term.close()


def test_watch_of_given_tasks_ends_by_itself_when_they_end(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", "exit 3"]})
        c.wait([task["id"]], timeout=20)
    term = Terminal([MSEARCHCTL, "tasks", "watch", task["id"]], d.env)
    try:
        assert term.finish() == 0
        assert re.search(rf"{task['id']}\s+command\s+failed\s.*command exited with code 3", term.text)
    finally:
        term.close()
