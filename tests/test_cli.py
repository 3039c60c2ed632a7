"""The installed msearchctl, as a shell script would use it: output, --json shapes and exit codes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading

import pytest
from conftest import MSEARCHCTL
from support import gone, wait_started

from msearchd import protocol

TASK_KEYS = {
    "id",
    "type",
    "status",
    "priority",
    "data",
    "depends_on",
    "progress",
    "current_operation",
    "attempts",
    "error",
    "retry_of",
    "retried_as",
    "created_at",
    "started_at",
    "finished_at",
}


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("msearchctl: ")
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_add_show_list_with_json(daemon):
    task = json.loads(
        ok(daemon.ctl("tasks", "add", "command", "--priority", "7", "--json", "--", "sleep", "30"))
    )
    assert set(task) >= TASK_KEYS
    assert (task["type"], task["priority"], task["data"]) == ("command", 7, {"argv": ["sleep", "30"]})
    plain = ok(
        daemon.ctl("tasks", "add", "file_scan", "--data", '{"dir": "/srv"}', "--depends-on", task["id"])
    )
    second = plain.strip()
    assert second.startswith("task_")
    number = second.removeprefix("task_")
    shown = json.loads(ok(daemon.ctl("tasks", "show", number, "--json")))
    assert (shown["id"], shown["data"], shown["depends_on"], shown["status"]) == (
        second,
        {"dir": "/srv"},
        [task["id"]],
        "blocked",
    )
    listed = json.loads(ok(daemon.ctl("tasks", "list", "--status", "blocked", "--json")))
    assert [t["id"] for t in listed] == [second]
    listed = json.loads(ok(daemon.ctl("tasks", "list", "--type", "command", "--json")))
    assert [t["id"] for t in listed] == [task["id"]]
    human = ok(daemon.ctl("tasks", "show", second))
    assert "waiting for " + task["id"] in human
    table = ok(daemon.ctl("tasks", "list"))
    assert [line.split("\t")[0] for line in table.splitlines()] == [task["id"], second]
    daemon.ctl("tasks", "cancel", task["id"], "--running")


def test_add_wait_queues_and_waits_in_one_process(daemon):
    line = ok(daemon.ctl("tasks", "add", "command", "--wait", "--", "true")).strip()
    task_id, status = line.split(" ")
    assert status == "completed"
    shown = json.loads(ok(daemon.ctl("tasks", "show", task_id, "--json")))
    assert (shown["status"], shown["data"]) == ("completed", {"argv": ["true"]})
    failed = daemon.ctl("tasks", "add", "command", "--wait", "--json", "--", "sh", "-c", "exit 3")
    assert failed.returncode == 1, failed.stderr
    task = json.loads(failed.stdout)
    assert set(task) >= TASK_KEYS
    assert task["status"] == "failed" and task["finished_at"] is not None
    plain = daemon.ctl("tasks", "add", "command", "--wait", "--", "sh", "-c", "exit 3")
    assert plain.returncode == 1
    number = int(task["id"].removeprefix("task_")) + 1
    assert plain.stdout == f"task_{number} failed: {task['error']}\n"


def test_cancel_pending_and_running(make_daemon, fifo):
    daemon = make_daemon(workers=1)  # the running task holds the only worker: the others stay queued
    pipe = fifo("started")
    running = json.loads(
        ok(
            daemon.ctl(
                "tasks",
                "add",
                "command",
                "-p",
                "0",
                "--json",
                "--",
                "sh",
                "-c",
                f"echo $$ > {pipe}; exec sleep 1000",
            )
        )
    )
    shell = int(pipe.read())
    queued = ok(daemon.ctl("tasks", "add", "thumbnail_generate")).strip()
    dependent = ok(daemon.ctl("tasks", "add", "file_scan", "--depends-on", queued)).strip()
    assert ok(daemon.ctl("tasks", "cancel", queued)) == (
        f"cancelled {queued} and 1 task(s) that depended on it\n"
    )
    refused(daemon.ctl("tasks", "cancel", running["id"]), "is running; add --running")
    assert not gone(shell)
    out = json.loads(ok(daemon.ctl("tasks", "cancel", running["id"], "--running", "--json")))
    assert out["task"]["status"] == "cancelled" and out["task"]["stop_reason"] == "sigterm"
    assert gone(shell)
    refused(daemon.ctl("tasks", "cancel", dependent), "already cancelled")


def test_priority_command(daemon):
    sleeper = ok(daemon.ctl("tasks", "add", "command", "--", "sleep", "1000")).strip()
    task = ok(
        daemon.ctl("tasks", "add", "thumbnail_generate", "--depends-on", sleeper)
    ).strip()  # stays blocked
    assert ok(daemon.ctl("tasks", "priority", task, "0")) == f"{task} priority 0\n"
    assert json.loads(ok(daemon.ctl("tasks", "priority", task, "11", "--json")))["priority"] == 11
    refused(daemon.ctl("tasks", "priority", task, "12"), "priority must be from 0 to 11, got 12")
    refused(daemon.ctl("tasks", "priority", task, "-1"), "priority must be from 0 to 11, got -1")
    assert json.loads(ok(daemon.ctl("tasks", "show", task, "--json")))["priority"] == 11
    refused(daemon.ctl("tasks", "priority", "task_999", "1"), "task task_999 does not exist")
    usage = daemon.ctl("tasks", "priority", task, "high")
    assert usage.returncode == 2 and "not a valid integer" in usage.stderr
    daemon.ctl("tasks", "cancel", sleeper, "--running")


def test_bulk_cancels_report_counts(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate = fifo("gate")
    held = ok(d.ctl("tasks", "add", "command", "-p", "0", "--", "sh", "-c", f"read x < {gate}")).strip()
    with d.client() as c:
        wait_started(c, held)
    for _ in range(3):
        ok(d.ctl("tasks", "add", "thumbnail_generate"))
    ok(d.ctl("tasks", "add", "file_scan"))
    by_type = json.loads(ok(d.ctl("tasks", "cancel-by-type", "thumbnail_generate", "--json")))
    assert {k: by_type[k] for k in ("cancelled", "failed", "total", "task_type")} == {
        "cancelled": 3,
        "failed": 0,
        "total": 3,
        "task_type": "thumbnail_generate",
    }
    assert ok(d.ctl("tasks", "cancel-all")) == "cancelled 1 task(s)\n"
    everything = json.loads(ok(d.ctl("tasks", "cancel-all", "--running", "--json")))
    assert (everything["cancelled"], everything["failed"], everything["total"]) == (1, 0, 1)
    with d.client() as c:
        assert c.get(held)["status"] == "cancelled"


def test_retry_reports_each_id(daemon):
    failed = ok(daemon.ctl("tasks", "add", "command", "--", "sh", "-c", "exit 3")).strip()
    done = ok(daemon.ctl("tasks", "add", "command", "--", "true")).strip()
    with daemon.client() as c:
        c.wait([failed, done], timeout=20)
    result = daemon.ctl("tasks", "retry", failed, done, "task_404", "--json")
    assert result.returncode == 1  # some were refused
    answers = json.loads(result.stdout)
    assert answers[0]["task_id"] == failed and answers[0]["new_task_id"].startswith("task_")
    assert answers[1] == {"task_id": done, "error": f"{done} is completed; only failed tasks can be retried"}
    assert answers[2] == {"task_id": "task_404", "error": "task task_404 does not exist"}
    with daemon.client() as c:
        c.wait([answers[0]["new_task_id"]], timeout=20)
    out = ok(daemon.ctl("tasks", "retry", "--all-failed", "--type", "command"))
    assert out.startswith(answers[0]["new_task_id"] + " -> task_")
    assert (
        ok(daemon.ctl("tasks", "retry", "--all-failed", "--type", "file_scan"))
        == "no failed tasks to retry\n"
    )


def test_stats_and_wait(daemon):
    good = ok(daemon.ctl("tasks", "add", "command", "--", "true")).strip()
    bad = ok(daemon.ctl("tasks", "add", "command", "--", "false")).strip()
    assert daemon.ctl("tasks", "wait", good).returncode == 0
    waited = daemon.ctl("tasks", "wait", good, bad, "--json")
    assert waited.returncode == 1
    assert [t["status"] for t in json.loads(waited.stdout)["tasks"]] == ["completed", "failed"]
    stats = json.loads(ok(daemon.ctl("tasks", "stats", "--json")))
    assert stats["by_status"]["completed"] == 1 and stats["by_status"]["failed"] == 1
    assert stats["by_type"] == {"command": {"completed": 1, "failed": 1}}
    assert stats["workers"] == {"busy": 0, "total": 2}
    assert stats["running"] == []
    slow = ok(daemon.ctl("tasks", "add", "command", "--", "sleep", "1000")).strip()
    with daemon.client() as c:
        c.wait([slow], statuses=["running"], timeout=20)
    stats = json.loads(ok(daemon.ctl("tasks", "stats", "--json")))
    assert [r["id"] for r in stats["running"]] == [slow]
    assert stats["workers"]["busy"] == 1
    table = [line.split("\t") for line in ok(daemon.ctl("tasks", "stats")).splitlines()]
    assert table[0][0] == "TYPE" and {len(row) for row in table} == {len(table[0])}  # one clean table
    timed_out = daemon.ctl("tasks", "wait", slow, "--timeout", "0.2")
    assert timed_out.returncode == 4
    daemon.ctl("tasks", "cancel", slow, "--running")


@pytest.mark.parametrize(
    "args",
    [
        ("tasks", "add", "command"),
        ("tasks", "add", "file_scan", "--data", "{not json"),
        ("tasks", "add", "file_scan", "--data", "[1]"),
        ("tasks", "add", "file_scan", "--data", '{"x": NaN}'),
        ("tasks", "list", "--status", ""),
        ("tasks", "list", "--status", "pending,"),
        ("tasks", "list", "--type", ""),
        ("tasks", "watch", "1", "--type", "file_scan"),
        ("tasks", "show", "banana"),
        ("tasks", "retry"),
        ("tasks", "retry", "1", "--all-failed"),
        ("tasks", "retry", "1", "--type", "x"),
        ("tasks", "list", "--limit", "0"),
        ("tasks", "frobnicate"),
        ("--no-such-flag",),
    ],
)
def test_usage_errors_exit_2(daemon, args):
    result = daemon.ctl(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.strip()
    with daemon.client() as c:
        assert c.count() == 0


def test_filters_name_real_types(daemon):
    ok(daemon.ctl("tasks", "add", "file_scan"))
    assert len(json.loads(ok(daemon.ctl("tasks", "list", "--type", "file_scan", "--json")))) == 1
    refused(daemon.ctl("tasks", "list", "--type", "file scan"), "invalid task type 'file scan'")
    refused(daemon.ctl("tasks", "retry", "--all-failed", "--type", "a/b"), "invalid task type 'a/b'")


def test_task_data_sent_as_bytes_shows_as_text(daemon):
    with daemon.client() as c:
        task = c.submit("file_scan", {"name": b"caf\xc3\xa9 \xff"})  # from the Python API: msgpack bin
    shown = json.loads(ok(daemon.ctl("tasks", "show", task["id"], "--json")))
    assert shown["data"] == {"name": "café \\xff"}
    listed = json.loads(ok(daemon.ctl("tasks", "list", "--json")))
    assert [t["data"] for t in listed] == [{"name": "café \\xff"}]


def test_daemon_status_and_stop(daemon):
    status = json.loads(ok(daemon.ctl("daemon", "status", "--json")))
    assert status["pid"] == daemon.proc.pid
    assert ok(daemon.ctl("daemon", "status")).startswith("msearchd ")
    assert ok(daemon.ctl("daemon", "stop")) == f"msearchd (pid {daemon.proc.pid}) stopped\n"
    assert daemon.proc.wait(timeout=30) == 0
    down = daemon.ctl("daemon", "status")
    assert down.returncode == 3
    assert "cannot reach msearchd" in down.stderr and "Traceback" not in down.stderr


def test_unreachable_daemon_exits_3_for_every_command(tmp_path):
    env = {**os.environ, "MSEARCH_SOCKET": str(tmp_path / "nobody.sock")}
    for args in (
        ("tasks", "list"),
        ("tasks", "cancel", "1"),
        ("tasks", "add", "file_scan"),
        ("daemon", "stop"),
    ):
        result = subprocess.run([MSEARCHCTL, *args], env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 3, args
        assert result.stderr.startswith("msearchctl: cannot reach msearchd at ")


def test_bad_task_ids_are_usage_errors_even_without_a_daemon(tmp_path):
    env = {**os.environ, "MSEARCH_SOCKET": str(tmp_path / "nobody.sock")}
    for args in (
        ("tasks", "show", "foo"),
        ("tasks", "cancel", "foo"),
        ("tasks", "priority", "foo", "1"),
        ("tasks", "history", "foo"),
        ("tasks", "log", "foo"),
        ("tasks", "wait", "foo"),
    ):
        result = subprocess.run([MSEARCHCTL, *args], env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, (args, result.stderr)
        assert "invalid task id" in result.stderr and "cannot reach" not in result.stderr


def test_a_daemon_that_does_not_answer_is_unreachable(tmp_path):
    # What the kernel does for a stopped (SIGSTOP) daemon: it accepts the connection, nobody answers.
    path = tmp_path / "stopped.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        env = {**os.environ, "MSEARCH_SOCKET": str(path)}
        result = subprocess.run(
            [MSEARCHCTL, "daemon", "status"], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 3, result.stderr
    assert result.stderr == (
        f"msearchctl: msearchd at {path} accepted the connection but did not answer within 5 s; "
        "is it stopped or overloaded?\n"
    )


def test_an_answer_cut_short_means_the_daemon_went_away(tmp_path):
    path = tmp_path / "cut.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()

        def answer_half() -> None:
            conn, _ = listener.accept()
            with conn:
                protocol.recv_frame(conn)  # the hello
                conn.sendall(protocol.encode({"id": 1, "result": {}})[:-1])  # then gone, mid-frame

        server = threading.Thread(target=answer_half)
        server.start()
        env = {**os.environ, "MSEARCH_SOCKET": str(path)}
        result = subprocess.run(
            [MSEARCHCTL, "daemon", "status"], env=env, capture_output=True, text=True, timeout=60
        )
        server.join(timeout=30)
    assert (result.returncode, result.stderr) == (
        3,
        "msearchctl: msearchd closed the connection in the middle of an answer\n",
    )


def test_socket_option_overrides_environment(daemon, tmp_path):
    env = {**daemon.env, "MSEARCH_SOCKET": str(tmp_path / "wrong.sock")}
    result = subprocess.run(
        [MSEARCHCTL, "--socket", str(daemon.socket), "daemon", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_help_answers_the_question(daemon):
    top = ok(daemon.ctl("--help"))
    assert "Exit codes" in top
    cancel = ok(daemon.ctl("tasks", "cancel", "--help"))
    assert "--running" in cancel and "SIGTERM" in cancel


def test_completion_script_is_offered(daemon):
    # As a user types it in bash: the shell is found among msearchctl's parents, whatever runs pytest.
    shown = subprocess.run(
        ["bash", "-c", f"{MSEARCHCTL} --show-completion; exit $?"],  # not exec: bash stays its parent
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    script = ok(shown)
    assert "_MSEARCHCTL_COMPLETE" in script  # the script calls back into msearchctl for the words


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_completes_commands(daemon, shell):
    # What each shell's script asks the program when the user presses Tab after "msearchctl tasks ca":
    env = {
        **daemon.env,
        "_MSEARCHCTL_COMPLETE": f"complete_{shell}",
        "_TYPER_COMPLETE_ARGS": "msearchctl tasks ca",
        "_TYPER_COMPLETE_FISH_ACTION": "get-args",
        "COMP_WORDS": "msearchctl tasks ca",
        "COMP_CWORD": "2",
    }
    result = subprocess.run([MSEARCHCTL], env=env, capture_output=True, text=True, timeout=30)
    assert "cancel" in result.stdout and "cancel-all" in result.stdout and "cancel-by-type" in result.stdout
    assert "retry" not in result.stdout
