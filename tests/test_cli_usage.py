"""msearchctl as a new user meets it: usage errors, ids, and what it says on a terminal."""

from __future__ import annotations

import json
import subprocess

from conftest import MSEARCHCTL


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
