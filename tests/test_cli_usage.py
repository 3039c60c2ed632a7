"""msearchctl as a new user meets it: usage errors, ids, and what it says on a terminal."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import click
import pytest
from conftest import MSEARCHCTL
from support import on_terminal

from msearchctl.lazy import lazy_group


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MSEARCHCTL, *args], capture_output=True, text=True, timeout=60)


def test_a_mistyped_command_is_suggested_once():
    for args, suggestion in ((("tasks", "lst"), "'list'"), (("daemn",), "'daemon'")):
        result = run(*args)
        assert result.returncode == 2
        assert result.stderr.count("Did you mean") == 1, result.stderr
        assert f"Did you mean {suggestion}?" in result.stderr


def test_show_prints_data_as_json(daemon):
    data = {"dir": "/srv", "deep": True, "skip": None, "name": "café"}
    with daemon.client() as c:
        task = c.submit("file_scan", data)
    shown = daemon.ctl("tasks", "show", task["id"])
    assert shown.returncode == 0, shown.stderr
    line = next(ln for ln in shown.stdout.splitlines() if ln.startswith("data "))
    assert json.loads(line.removeprefix("data").strip()) == data


def test_daemon_status_wait_returns_once_the_daemon_answers(make_daemon):
    d = make_daemon(start=False)
    waiting = subprocess.Popen(
        [MSEARCHCTL, "daemon", "status", "--wait", "60", "--json"],
        env=d.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        d.start()
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, err
    assert json.loads(out)["pid"] == d.proc.pid


def test_daemon_status_wait_gives_up_with_one_sentence(make_daemon):
    d = make_daemon(start=False)
    result = subprocess.run(
        [MSEARCHCTL, "daemon", "status", "--wait", "0.2"], env=d.env, capture_output=True, text=True
    )
    assert result.returncode == 3
    assert result.stderr.startswith("msearchctl: msearchd did not answer within 0.2 s: ")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("ids", [True, False])
def test_watch_exits_3_with_a_sentence_when_the_daemon_stops(make_daemon, ids):
    d = make_daemon(workers=1)
    with d.client() as c:
        task = c.submit("command", {"argv": ["sleep", "1000"]})
    watching = subprocess.Popen(
        [MSEARCHCTL, "tasks", "watch", *([task["id"]] if ids else []), "--json"],
        env=d.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watching.stdout is not None
        first = json.loads(watching.stdout.readline())  # written once the subscription is live
        assert (first["event"], first["task_id"]) == ("state", task["id"])
        assert d.stop() == 0
        _, err = watching.communicate(timeout=60)
    finally:
        if watching.poll() is None:
            watching.kill()
            watching.wait()
    assert watching.returncode == 3, err
    assert err.startswith("msearchctl: the daemon ended the stream") and "stopped" in err
    assert len(err.strip().splitlines()) == 1


def test_log_says_on_a_terminal_that_a_task_wrote_nothing(daemon):
    with daemon.client() as c:
        quiet = c.submit("command", {"argv": ["true"]})
        c.wait([quiet["id"]], timeout=60)
    status, output = on_terminal([MSEARCHCTL, "tasks", "log", quiet["id"]], daemon.env)
    assert status == 0, output
    assert f"msearchctl: {quiet['id']} has written nothing" in output
    piped = daemon.ctl("tasks", "log", quiet["id"])
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, "", "")


def test_log_json_gives_path_and_content(daemon):
    with daemon.client() as c:
        loud = c.submit("command", {"argv": ["sh", "-c", "echo hello; echo oops >&2"]})
        quiet = c.submit("command", {"argv": ["true"]})
        c.wait([loud["id"], quiet["id"]], timeout=60)
    answer = json.loads(daemon.ctl("tasks", "log", loud["id"], "--json").stdout)
    assert answer["task_id"] == loud["id"] and answer["status"] == "completed"
    assert answer["path"] == str(daemon.state_dir / "logs" / f"{loud['id']}.log")
    assert sorted(answer["content"].splitlines()) == ["hello", "oops"]
    assert json.loads(daemon.ctl("tasks", "log", quiet["id"], "--json").stdout)["content"] is None
    assert daemon.ctl("tasks", "log", loud["id"], "--json", "--follow").returncode == 2


def test_list_says_on_a_terminal_when_it_shows_only_part(daemon):
    with daemon.client() as c:
        for _ in range(5):
            c.submit("file_scan", {})
    status, output = on_terminal([MSEARCHCTL, "tasks", "list", "--limit", "2"], daemon.env)
    assert status == 0, output
    assert "showing 2 of 5 (--limit, --offset, --all)" in output
    status, output = on_terminal([MSEARCHCTL, "tasks", "list"], daemon.env)
    assert status == 0 and "showing" not in output, output
    piped = daemon.ctl("tasks", "list", "--limit", "2")
    assert piped.returncode == 0 and piped.stderr == ""


def test_list_all_pages_through_every_task(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        holder = c.submit("command", {"argv": ["sleep", "1000"]})  # keeps the one worker busy
        c.wait([holder["id"]], statuses=["running"], timeout=60)
        c.submit_many([{"type": "file_scan"}] * 10_050)
    listed = json.loads(d.ctl("tasks", "list", "--all", "--json").stdout)
    assert len(listed) == 10_051
    assert len({t["id"] for t in listed}) == 10_051
    assert d.ctl("tasks", "list", "--all", "--limit", "5").returncode == 2
    d.ctl("tasks", "cancel", holder["id"], "--running")


def completions(env: dict[str, str], line: str) -> list[str]:
    """What bash is offered for the last word of `line` (empty when it ends with a space)."""
    words = line.split(" ")
    env = {
        **env,
        "_MSEARCHCTL_COMPLETE": "complete_bash",
        "COMP_WORDS": line,
        "COMP_CWORD": str(len(words) - 1),
    }
    result = subprocess.run([MSEARCHCTL], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [word for word in result.stdout.splitlines() if word]


def test_completion_offers_statuses_types_and_ids(daemon, tmp_path):
    with daemon.client() as c:
        first = c.submit("file_scan", {})
        second = c.submit("thumbnail_generate", {}, depends_on=[first["id"]])
        c.wait([first["id"]], timeout=60)  # no handler: it fails, and `second` stays blocked
    env = {**daemon.env, "PWD": str(tmp_path)}
    (tmp_path / "task_file").touch()  # a file name is never offered
    assert completions(env, "msearchctl tasks list --status p") == ["pending"]
    assert completions(env, "msearchctl tasks list --status pending,b") == ["pending,blocked"]
    assert completions(env, "msearchctl tasks list --type ") == ["file_scan", "thumbnail_generate"]
    assert completions(env, "msearchctl tasks cancel-by-type th") == ["thumbnail_generate"]
    assert completions(env, "msearchctl tasks show ") == [second["id"], first["id"]]  # newest first
    assert completions(env, "msearchctl tasks show task_1") == [first["id"]]
    assert completions(env, "msearchctl tasks retry ") == [first["id"]]  # only failed tasks
    assert completions(env, "msearchctl tasks wait ") == [second["id"]]  # only unfinished tasks


def test_completion_offers_nothing_from_a_daemon_that_is_down(make_daemon):
    env = make_daemon(start=False).env
    assert completions(env, "msearchctl tasks show ") == []
    assert completions(env, "msearchctl tasks list --type ") == []
    assert completions(env, "msearchctl tasks list --status c") == ["completed", "cancelled"]


# Run as msearchctl's console script runs it; then say which modules it loaded.
MODULES_PROBE = """
import sys
import msearchctl.app
sys.argv[0] = "msearchctl"
try:
    msearchctl.app.main()
except SystemExit as exc:
    print(repr(sorted(sys.modules)), file=sys.stderr)
    raise SystemExit(exc.code) from None
"""


def test_a_command_loads_its_own_module_and_not_the_others(daemon):
    """Start-up pays for the command that runs: not for the other commands, rich, json or asyncio."""
    with daemon.client() as c:
        c.pause()  # the task stays pending, for cancel to take it as the benchmark does
        task = c.submit("command", {"argv": ["true"]})
    result = subprocess.run(
        [sys.executable, "-c", MODULES_PROBE, "tasks", "cancel", task["id"]],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"cancelled {task['id']}\n"
    loaded = set(ast.literal_eval(result.stderr.strip().splitlines()[-1]))
    assert "msearchctl.commands.control" in loaded
    others = {f"msearchctl.commands.{m}" for m in ("tasks", "follow", "queue", "daemon", "scan")}
    heavy = {"msearchctl.render", "rich", "json", "asyncio"}
    assert loaded & (others | heavy) == set()


def test_a_command_its_group_does_not_list_is_reported():
    """A group names its commands so as to import only the one that runs: one left out would vanish."""
    group = lazy_group({"queue": ("pause", "resume", "drain")})(name="queue")
    with pytest.raises(RuntimeError, match=r"msearchctl.commands.queue defines .*'status'"):
        group.get_command(click.Context(group), "pause")
    assert lazy_group({"queue": ("pause", "resume", "drain", "status")})(name="queue").commands.keys() == {
        "pause",
        "resume",
        "drain",
        "status",
    }
