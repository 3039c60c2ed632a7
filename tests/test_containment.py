"""A task's processes are found by what a task cannot shed: its worker's cgroup, or (without one) its
worker's tree and session. Markers in the environment (`env -i`), the session (setsid) and the parent
(a double fork) can all be dropped."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest
from support import dead, gone, wait_started

MODES = ["cgroup", "processes"]


def start(make_daemon, mode: str, **kwargs):
    d = make_daemon(settings="cgroups = false\n" if mode == "processes" else "", **kwargs)
    if mode == "cgroup" and "workers run in cgroups under" not in d.wait_for_log("workers run in"):
        pytest.skip("the daemon may not make cgroups here")
    if mode == "processes":
        d.wait_for_log("followed by session and parent")
    return d


def command_pid(client, task_id: str) -> int:
    """The pid of the command a running `command` task runs (its current operation names it)."""
    wait_started(client, task_id)
    operation = client.get(task_id)["current_operation"]
    return int(re.search(r"\(pid (\d+)\)$", operation).group(1))


def escape(out: str) -> str:
    """A shell script that starts a `sleep` with an empty environment (`env -i`) in a session of its
    own, from a shell that exits at once (a double fork): no marker, no session, no parent of the
    task's. Its pid goes to `out` once its environment is empty."""
    sleep = shutil.which("sleep")
    return f"setsid sh -c \"env -i /bin/sh -c 'echo \\$\\$ > {out}; exec {sleep} 1718' &\""


@pytest.mark.parametrize("mode", MODES)
def test_a_command_without_markers_is_killed_by_the_next_daemon(make_daemon, mode):
    """`env -i sleep`, then kill -9 of the daemon: the sleep outlives it, and the next daemon kills it."""
    d = start(make_daemon, mode, workers=1)
    with d.client() as c:
        task = c.submit("command", {"argv": ["env", "-i", "sleep", "1717"]}, priority=0)
        sleeper = command_pid(c, task["id"])
        assert "MSEARCH_TASK_ID" not in psutil.Process(sleeper).environ()
    d.kill9()
    assert not dead(sleeper)  # the daemon's workers died with it; what they started did not
    d.start()
    assert dead(sleeper), d.log
    assert "left behind by a previous daemon" in d.wait_for_log("left behind")
    with d.client() as c:
        again = c.wait([task["id"]], statuses=["running"], timeout=20)["tasks"][0]
        assert again["attempts"] == 2
        rerun = command_pid(c, task["id"])
        assert rerun != sleeper
        c.cancel(task["id"], running=True)
        assert gone(rerun)


@pytest.mark.parametrize("mode", MODES)
def test_cancel_kills_a_double_forked_process_without_markers(make_daemon, mode, fifo):
    d = start(make_daemon, mode, workers=1)
    escaped_pid, moved = fifo("escaped"), fifo("moved")
    script = f"{escape(escaped_pid)}; echo done > {moved}; exec sleep 1000"
    with d.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", script]}, priority=0)
        escaped = psutil.Process(int(escaped_pid.read()))
        assert moved.read() == "done"
        worker = c.get(task["id"])["worker_pid"]
        assert os.getsid(escaped.pid) != os.getsid(worker)
        assert "MSEARCH_TASK_ID" not in escaped.environ()
        result = c.cancel(task["id"], running=True)
        assert result["task"]["status"] == "cancelled"
        assert gone(escaped.pid) and gone(worker)


@pytest.mark.parametrize("mode", MODES)
def test_cancel_all_running_kills_what_escaped(make_daemon, mode, fifo):
    d = start(make_daemon, mode, workers=2)
    pids = [fifo("first"), fifo("second")]
    with d.client() as c:
        for out in pids:
            c.submit("command", {"argv": ["sh", "-c", f"{escape(out)}; exec sleep 1000"]}, priority=0)
        escaped = [int(out.read()) for out in pids]
        answer = d.ctl("tasks", "cancel-all", "--running")
        assert answer.returncode == 0, answer.stderr
        assert all(gone(pid) for pid in escaped)


@pytest.mark.parametrize("mode", MODES)
def test_a_clean_stop_kills_what_finished_tasks_left(make_daemon, mode, fifo):
    d = start(make_daemon, mode, workers=1)
    out = fifo("escaped")
    with d.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", escape(out)]})
        escaped = int(out.read())
        assert c.wait([task["id"]], timeout=20)["tasks"][0]["status"] == "completed"
    assert not dead(escaped)
    assert d.stop() == 0
    assert dead(escaped)
    assert not (d.state_dir / "containment.json").exists()


@pytest.mark.parametrize("mode", MODES)
def test_a_crashed_worker_takes_what_escaped_with_it(make_daemon, mode, fifo):
    d = start(make_daemon, mode, workers=1)
    out = fifo("escaped")
    with d.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", f"{escape(out)}; exec sleep 1000"]}, priority=0)
        escaped = int(out.read())
        worker = c.get(task["id"])["worker_pid"]
        os.kill(worker, 9)  # as the OOM killer would
        done = c.wait([task["id"]], timeout=20)["tasks"][0]
        assert (done["status"], done["error"]) == ("failed", "worker killed by SIGKILL")
    assert dead(escaped)


def test_workers_and_what_they_start_are_in_the_daemon_s_cgroup(make_daemon):
    d = start(make_daemon, "cgroup", workers=1)
    ledger = json.loads((d.state_dir / "containment.json").read_text())
    cgroup = Path(ledger["cgroup"])
    assert cgroup.name == f"msearchd-{d.proc.pid}"
    with d.client() as c:
        task = c.submit("command", {"argv": ["sleep", "1000"]}, priority=0)
        sleeper = command_pid(c, task["id"])
        worker = c.get(task["id"])["worker_pid"]
        own = Path(f"/proc/{sleeper}/cgroup").read_text()
        assert f"{cgroup.name}/worker-{worker}" in own
        c.cancel(task["id"], running=True)
    d.stop()
    assert not cgroup.exists()


def test_a_ledger_names_only_what_a_daemon_made(tmp_path):
    """A ledger naming a cgroup a daemon did not make, or a process whose pid another one took since,
    kills nothing."""
    from msearchd.containment import LEDGER, Ledger, cgroup2_root, kill_left_behind, start_ticks

    def ledger(**entries) -> None:
        Ledger(tmp_path / LEDGER, **entries).save()

    sleeper = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        ticks = start_ticks(sleeper.pid)
        assert ticks is not None
        ledger(workers={sleeper.pid: ticks + 1})  # the pid, reused by another process
        assert kill_left_behind(tmp_path, 5.0) == 0
        ledger(escaped={sleeper.pid: ticks - 1})
        assert kill_left_behind(tmp_path, 5.0) == 0
        assert sleeper.poll() is None
        root = cgroup2_root()
        if root is not None and os.access(root, os.W_OK):
            foreign = root / f"not-a-daemon-{os.getpid()}"
            foreign.mkdir()
            try:
                (foreign / "cgroup.procs").write_text(str(sleeper.pid))
                ledger(cgroup=foreign)
                assert kill_left_behind(tmp_path, 5.0) == 0
                ledger(cgroup=root)  # the whole hierarchy: never
                assert kill_left_behind(tmp_path, 5.0) == 0
                assert sleeper.poll() is None
            finally:
                sleeper.kill()
                sleeper.wait()
                foreign.rmdir()
            sleeper = subprocess.Popen(["sleep", "1000"], start_new_session=True)
            ticks = start_ticks(sleeper.pid)
        ledger(escaped={sleeper.pid: ticks})  # listed as it is: killed
        assert kill_left_behind(tmp_path, 5.0) == 1
        assert sleeper.wait(timeout=20) == -9
        assert not (tmp_path / LEDGER).exists()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_without_a_cgroup_what_left_its_session_is_listed_for_the_next_daemon(make_daemon, fifo):
    """setsid, a double fork and `env -i`, then kill -9 of the daemon: without a cgroup, the ledger
    lists the process once a second, and the next daemon kills it."""
    d = start(make_daemon, "processes", workers=1)
    out = fifo("escaped")
    with d.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", f"{escape(out)}; exec sleep 1000"]}, priority=0)
        escaped = int(out.read())
    d.wait_for_log(f"processes [{escaped}] left their worker's session")
    listed = json.loads((d.state_dir / "containment.json").read_text())["escaped"]
    assert [pid for pid, _ in listed] == [escaped]
    d.kill9()
    assert not dead(escaped)
    d.start()
    assert dead(escaped), d.log
    with d.client() as c:
        c.wait([task["id"]], statuses=["running"], timeout=20)
        c.cancel(task["id"], running=True)


def test_the_cgroups_setting_is_a_boolean(tmp_path):
    from msearchd import config
    from msearchd.errors import InvalidArgument

    toml = tmp_path / "msearchd.toml"
    toml.write_text("cgroups = false\n")
    assert config.load(toml, {}).cgroups is False
    toml.write_text("")
    assert config.load(toml, {}).cgroups is True
    toml.write_text('cgroups = "no"\n')
    with pytest.raises(InvalidArgument, match="cgroups must be true or false"):
        config.load(toml, {})


@pytest.mark.parametrize("mode", MODES)
def test_an_orphan_that_exits_after_its_task_is_reaped(make_daemon, mode, fifo):
    """What a task orphans is adopted (by the daemon, or without a cgroup by its worker) and reaped
    once it exits, also after its task ended: no zombie is left."""
    d = start(make_daemon, mode, workers=1)
    out, gate = fifo("orphan"), fifo("gate")
    script = f"setsid sh -c \"sh -c 'echo \\$\\$ > {out}; read x < {gate}' &\""
    with d.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", script]})
        orphan = int(out.read())
        assert c.wait([task["id"]], timeout=20)["tasks"][0]["status"] == "completed"
        worker = c.get(task["id"])["worker_pid"]
        assert psutil.Process(orphan).ppid() == (worker if mode == "processes" else d.proc.pid)
        gate.write()  # it exits now, its parent long gone, its worker idle
        assert gone_soon(orphan)


def gone_soon(pid: int, timeout: float = 20.0) -> bool:
    """True once `pid` is reaped (not a zombie), within `timeout`: the adopter reaps it on SIGCHLD,
    a moment after it exits."""
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return gone(pid)
