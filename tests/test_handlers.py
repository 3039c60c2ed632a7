"""Handlers: the built-in command type, Python handlers, progress, follow-ups, crashes."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from support import gone, gone_within

from msearchd.errors import InvalidArgument


def finished(client, task):
    result = client.wait([task["id"]], timeout=20)
    assert not result["timed_out"]
    return result["tasks"][0]


def test_command_output_goes_to_its_log(client, tmp_path):
    task = client.submit(
        "command",
        {
            "argv": ["sh", "-c", 'echo "out $GREETING"; echo err >&2; pwd'],
            "cwd": str(tmp_path),
            "env": {"GREETING": "hello"},
        },
    )
    done = finished(client, task)
    assert done["status"] == "completed"
    assert done["progress"] == 1.0
    log = Path(done["log_path"]).read_text().splitlines()
    assert log == ["out hello", "err", str(tmp_path)]


@pytest.mark.parametrize("cwd", [None, "/"], ids=["spawn", "with-cwd"])
def test_a_command_s_environment_is_the_worker_s_with_its_own_variables_and_the_markers(make_daemon, cwd):
    d = make_daemon(workers=1, extra_env={"FROM_DAEMON": "kept", "OVERRIDDEN": "by the daemon"})
    data = {"argv": ["env", "-0"], "env": {"OVERRIDDEN": "by the task", "GREETING": "grüß dich"}}
    if cwd:
        data["cwd"] = cwd
    with d.client() as c:
        first, second = (finished(c, c.submit("command", data)) for _ in range(2))  # by the same worker
    for done in (first, second):
        assert done["status"] == "completed"
        env = dict(entry.split("=", 1) for entry in Path(done["log_path"]).read_text().split("\0") if entry)
        assert env["FROM_DAEMON"] == "kept"
        assert env["OVERRIDDEN"] == "by the task"
        assert env["GREETING"] == "grüß dich"
        assert env["MSEARCH_TASK_ID"] == done["id"]
        assert env["MSEARCH_WORKER_OF"] == str(d.state_dir)


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["sh", "-c", "exit 3"], "command exited with code 3"),
        (["sh", "-c", "kill -SEGV $$"], "command killed by SIGSEGV"),
        (["/no/such/program"], "command not found: /no/such/program"),
    ],
)
def test_command_failures_say_why(client, argv, error):
    done = finished(client, client.submit("command", {"argv": argv}))
    assert (done["status"], done["error"]) == ("failed", error)


@pytest.mark.parametrize(
    "data", [{}, {"argv": []}, {"argv": "ls -l"}, {"argv": ["ls", 3]}, {"argv": ["ls"], "env": {"A": 1}}]
)
def test_malformed_command_is_refused_at_submit(client, data):
    with pytest.raises(InvalidArgument, match="command task"):
        client.submit("command", data)
    assert client.count() == 0


def test_type_without_handler_fails_at_once(client):
    done = finished(client, client.submit("file_embed_image", {"path": "/x.jpg"}))
    assert (done["status"], done["error"]) == ("failed", "no handler for type file_embed_image")


def test_python_handler_failures(client):
    clean = finished(client, client.submit("fail", {"message": "corrupt file"}))
    assert clean["error"] == "corrupt file"
    raised = finished(client, client.submit("fail", {"exception": True, "message": "boom"}))
    assert raised["error"] == "ValueError: boom"
    assert "Traceback" in Path(raised["log_path"]).read_text()


def test_handler_submits_follow_ups(client):
    parent = client.submit(
        "noop", {"follow_ups": [{"type": "file_scan", "data": {"dir": "/a"}, "priority": 2}]}
    )
    done = finished(client, parent)
    assert done["status"] == "completed"
    child_id = done["current_operation"].removeprefix("submitted ")
    child = client.get(child_id)
    assert (child["type"], child["data"], child["priority"]) == ("file_scan", {"dir": "/a"}, 2)


def test_refused_follow_up_fails_the_parent(client):
    parent = client.submit("noop", {"follow_ups": [{"type": "file_scan", "priority": 99}]})
    done = finished(client, parent)
    assert done["status"] == "failed"
    assert done["error"].startswith("follow-up file_scan task refused: priority must be from 0 to 11")


def test_progress_is_reported_and_kept(client, fifo):
    gate = fifo("steps")
    events = client.events(types=["stepper"])
    task = client.submit("stepper", {"fifo": str(gate), "steps": 4})
    seen = []
    with open(gate.path, "w") as steps:  # opens once the handler runs and opens its end
        steps.write("next\n")
        steps.flush()
        for event in events:
            if event["event"] == "progress":
                seen.append((event["progress"], event["current_operation"]))
                assert client.get(task["id"])["progress"] == event["progress"]
                if len(seen) < 4:
                    steps.write("next\n")
                    steps.flush()
            elif event["event"] == "completed":
                break
    events.close()
    assert seen == [(0.25, "step 1 of 4"), (0.5, "step 2 of 4"), (0.75, "step 3 of 4"), (1.0, "step 4 of 4")]
    assert client.get(task["id"])["current_operation"] == "step 4 of 4"


def test_worker_crash_fails_the_task_and_is_replaced(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        crashed = finished(c, c.submit("crash", {"signal": "SIGSEGV"}))
        assert (crashed["status"], crashed["error"]) == ("failed", "worker killed by SIGSEGV")
        assert gone(crashed["worker_pid"])
        killed = finished(c, c.submit("crash", {"signal": "SIGKILL"}))
        assert killed["error"] == "worker killed by SIGKILL"
        after = finished(c, c.submit("noop"))
        assert after["status"] == "completed"
        assert after["worker_pid"] not in (crashed["worker_pid"], killed["worker_pid"])
    assert "killed by SIGSEGV while running" in d.wait_for_log("SIGSEGV")


def test_a_worker_killed_while_a_fork_of_it_lives_on_is_noticed(make_daemon, fifo):
    """A handler that forks without exec (multiprocessing does) leaves the worker's channel open in
    the child: the worker's death must still fail its task, end the child and bring a new worker."""
    d = make_daemon(workers=1)
    started = fifo("started")
    with d.client() as c:
        task = c.submit("forker", {"started": str(started)})
        child = int(started.read())
        worker = c.get(task["id"])["worker_pid"]
        os.kill(worker, signal.SIGKILL)  # as the OOM killer would
        done = c.wait([task["id"]], timeout=30)
        assert not done["timed_out"]
        assert (done["tasks"][0]["status"], done["tasks"][0]["error"]) == (
            "failed",
            "worker killed by SIGKILL",
        )
        assert gone_within(child)  # killed at once, reaped in the background
        after = finished(c, c.submit("noop"))
        assert after["status"] == "completed" and after["worker_pid"] != worker
    assert "a process it forked holds its channel open" in d.wait_for_log("holds its channel")


@pytest.mark.parametrize("cwd", [None, "/"], ids=["spawn", "with-cwd"])
def test_a_command_gets_only_stdin_stdout_and_stderr(client, cwd):
    """Nothing of the worker leaks into what it starts: not its channel to the daemon, nor other files."""
    data = {"argv": ["sh", "-c", "ls /proc/$$/fd"]}
    if cwd:
        data["cwd"] = cwd
    done = finished(client, client.submit("command", data))
    assert done["status"] == "completed"
    assert Path(done["log_path"]).read_text().split() == ["0", "1", "2"]


def test_each_command_log_holds_its_own_output_and_a_silent_command_leaves_none(make_daemon):
    d = make_daemon(workers=1)  # one worker: every command's log comes from the same spare file
    argvs = [["true"], ["sh", "-c", "echo one"], ["true"], ["sh", "-c", "echo two; echo err >&2"], ["true"]]
    with d.client() as c:
        ids = [c.submit("command", {"argv": argv})["id"] for argv in argvs]
        done = {t["id"]: t for t in c.wait(ids, timeout=20)["tasks"]}
    assert [done[i]["status"] for i in ids] == ["completed"] * 5
    logs = [done[i]["log_path"] and Path(done[i]["log_path"]).read_text() for i in ids]
    assert logs == [None, "one\n", None, "two\nerr\n", None]
    assert sorted(p.name for p in (d.state_dir / "logs").glob("task_*.log")) == sorted(
        f"{ids[i]}.log" for i in (1, 3)
    )


def test_what_a_command_leaves_running_writes_to_that_command_s_log(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate, wrote = fifo("gate"), fifo("wrote")
    script = f"(read x < {gate}; echo late; echo done > {wrote}) &"
    with d.client() as c:
        ids = [
            c.submit("command", {"argv": argv})["id"]
            for argv in (["sh", "-c", script], ["sh", "-c", "echo next"], ["true"])
        ]
        done = {t["id"]: t for t in c.wait(ids, timeout=20)["tasks"]}
        gate.write()  # the process left behind writes only now, after the later commands ended
        assert wrote.read() == "done"
    left_behind, loud, silent = (done[i] for i in ids)
    assert left_behind["log_path"] is not None  # kept: a process still had it open
    assert Path(left_behind["log_path"]).read_text() == "late\n"
    assert Path(loud["log_path"]).read_text() == "next\n"
    assert silent["log_path"] is None
    spare = d.state_dir / "logs" / ".spare" / str(silent["worker_pid"])
    assert spare.exists() and spare.stat().st_size == 0
    d.stop()
    assert not spare.exists()  # removed with its worker


class CommandContext:
    """What the command handler needs of a task's context, to run it in the test's own process."""

    def __init__(self, log_path: Path) -> None:
        self.task_id = log_path.stem
        self.log_path = str(log_path)
        self.cancelled = False

    def set_operation(self, _: str) -> None:
        pass


def run_command(log_path: Path, argv: list[str]) -> str:
    from msearchd.handlers import command

    command.run(CommandContext(log_path), {"argv": argv})
    return log_path.read_text() if log_path.exists() else ""


def test_a_command_appends_to_the_log_an_earlier_attempt_left_after_a_mark(tmp_path):
    log = tmp_path / "task_1.log"
    log.write_text("first attempt\n")
    mark = r"\n--- another attempt, \d{4}-\d\d-\d\d \d\d:\d\d:\d\d ---\n"
    second = run_command(log, ["sh", "-c", "echo second attempt"])
    assert re.fullmatch(f"first attempt\n{mark}second attempt\n", second), second
    # Silent, but the earlier output stays, and the attempt shows.
    assert re.fullmatch(f"first attempt\n{mark}second attempt\n{mark}", run_command(log, ["true"]))


def test_spare_logs_an_earlier_daemon_left_are_removed_at_start(make_daemon):
    d = make_daemon(start=False)
    stale = d.state_dir / "logs" / ".spare" / "4242"
    stale.parent.mkdir(parents=True)
    stale.write_text("output of a task of a daemon killed with -9\n")
    d.start()
    assert not stale.exists()
    with d.client() as c:  # and the workers make their own
        done = finished(c, c.submit("command", {"argv": ["true"]}))
    assert done["status"] == "completed" and done["log_path"] is None
    assert (stale.parent / str(done["worker_pid"])).exists()


def test_commands_still_log_where_files_cannot_be_linked(tmp_path, monkeypatch):
    from msearchd.handlers import command

    def refuse(source: str, name: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    monkeypatch.setattr(command, "_spares", {})
    argvs = (["sh", "-c", "echo one"], ["true"], ["sh", "-c", "echo three"])
    logs = [run_command(tmp_path / f"task_{i}.log", argv) for i, argv in enumerate(argvs)]
    assert logs == ["one\n", "", "three\n"]
    assert (tmp_path / "task_1.log").exists()  # created as before: a silent command's log stays
