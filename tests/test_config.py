"""Where the daemon's settings come from: flags win over environment variables, which win over the TOML
file, found through --config, MSEARCH_CONFIG or the XDG folders; the defaults follow XDG too."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MSEARCHD, TESTS

from msearchd.client import Client


@pytest.fixture
def root() -> Iterator[Path]:
    """A short folder under /tmp: a Unix socket path is limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ms-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any MSEARCH_ or XDG_ variable of the caller's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MSEARCH_", "XDG_"))}
    return {**env, "PYTHONPATH": str(TESTS), **extra}


def settings_of(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Start msearchd with these flags and environment, read where it listens and what it says of
    itself, stop it; returns its status and the settings a task can see (priority of a type)."""
    proc = subprocess.Popen(
        [MSEARCHD, *args], env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    listening = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if " listening on " in line:
                listening.set()
        listening.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        assert listening.wait(30) and proc.poll() is None, "".join(lines)
        line = next(ln for ln in lines if " listening on " in ln)
        socket_path = line.split(" listening on ", 1)[1].split(" with ", 1)[0]
        with Client(socket_path) as c:
            status = c.status()
            status["file_scan_priority"] = c.submit("file_scan")["priority"]
            status["debug_logged"] = any(" DEBUG " in ln for ln in lines)
        status["listening_on"] = socket_path
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, "".join(lines)
    return status


def toml(path: Path, root: Path, name: str, workers: int, priority: int) -> Path:
    """A config file naming its own socket and state folder under `root`/`name`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'socket = "{root / name / "s.sock"}"\nstate_dir = "{root / name / "state"}"\n'
        f"workers = {workers}\n[priorities]\nfile_scan = {priority}\n"
    )
    return path


def test_flags_win_over_environment_which_wins_over_the_file(root):
    config = toml(root / "c.toml", root, "file", workers=3, priority=4)
    env = clean_env(MSEARCH_SOCKET=str(root / "env.sock"), MSEARCH_STATE_DIR=str(root / "env-state"))
    flags = ["--socket", str(root / "flag.sock"), "--state-dir", str(root / "flag-state"), "--workers", "1"]

    by_flags = settings_of(["--config", str(config), *flags], env)
    assert (by_flags["socket"], by_flags["state_dir"]) == (str(root / "flag.sock"), str(root / "flag-state"))
    assert by_flags["workers"]["total"] == 1
    assert by_flags["file_scan_priority"] == 4  # no flag for it: the file's

    by_env = settings_of(["--config", str(config)], env)
    assert (by_env["socket"], by_env["state_dir"]) == (str(root / "env.sock"), str(root / "env-state"))
    assert by_env["workers"]["total"] == 3

    by_file = settings_of(["--config", str(config)], clean_env())
    assert (by_file["socket"], by_file["state_dir"]) == (
        str(root / "file" / "s.sock"),
        str(root / "file" / "state"),
    )


def test_log_level_flag_wins_over_the_file(root):
    config = root / "c.toml"
    config.write_text(f'socket = "{root / "s.sock"}"\nstate_dir = "{root / "state"}"\nlog_level = "debug"\n')
    assert settings_of(["--config", str(config)], clean_env())["debug_logged"]
    assert not settings_of(["--config", str(config), "--log-level", "info"], clean_env())["debug_logged"]


def test_msearch_config_names_the_file_and_config_wins_over_it(root):
    by_env = toml(root / "env.toml", root, "env", workers=2, priority=5)
    by_flag = toml(root / "flag.toml", root, "flag", workers=1, priority=8)
    env = clean_env(MSEARCH_CONFIG=str(by_env), XDG_CONFIG_HOME=str(root / "xdg"))
    toml(root / "xdg" / "msearch" / "msearchd.toml", root, "xdg", workers=3, priority=2)

    named = settings_of([], env)
    assert (named["socket"], named["workers"]["total"], named["file_scan_priority"]) == (
        str(root / "env" / "s.sock"),
        2,
        5,
    )
    flagged = settings_of(["--config", str(by_flag)], env)
    assert (flagged["socket"], flagged["workers"]["total"], flagged["file_scan_priority"]) == (
        str(root / "flag" / "s.sock"),
        1,
        8,
    )


def test_a_config_file_named_but_missing_is_a_usage_error(root):
    missing = root / "nowhere.toml"
    # Folders of its own, should it start after all.
    here = {"XDG_RUNTIME_DIR": str(root / "run"), "XDG_STATE_HOME": str(root / "state")}
    for args, env in (
        (["--config", str(missing)], clean_env(**here)),
        ([], clean_env(MSEARCH_CONFIG=str(missing), **here)),
    ):
        out = subprocess.run([MSEARCHD, *args], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith(f"msearchd: cannot read config file {missing}: ")
        assert len(out.stderr.splitlines()) == 1


def test_xdg_folders_hold_the_defaults(root):
    toml_path = root / "config" / "msearch" / "msearchd.toml"
    toml_path.parent.mkdir(parents=True)
    toml_path.write_text("workers = 2\n[priorities]\nfile_scan = 1\n")
    env = clean_env(
        XDG_CONFIG_HOME=str(root / "config"),
        XDG_RUNTIME_DIR=str(root / "run"),
        XDG_STATE_HOME=str(root / "state"),
    )
    found = settings_of([], env)
    assert found["socket"] == str(root / "run" / "msearch" / "msearchd.sock")
    assert found["state_dir"] == str(root / "state" / "msearch")
    assert (found["workers"]["total"], found["file_scan_priority"]) == (2, 1)
    assert (root / "state" / "msearch" / "tasks.db").exists()


def test_without_xdg_variables_the_home_folders_are_used(root):
    home = root / "home"
    toml_path = home / ".config" / "msearch" / "msearchd.toml"
    toml_path.parent.mkdir(parents=True)
    toml_path.write_text("workers = 1\n[priorities]\nfile_scan = 10\n")
    # The runtime folder stays given: without it the socket would go to /tmp/msearch-UID, shared with
    # any other daemon of this user on the machine.
    env = clean_env(HOME=str(home), XDG_RUNTIME_DIR=str(root / "run"))
    found = settings_of([], env)
    assert found["state_dir"] == str(home / ".local" / "state" / "msearch")
    assert (found["workers"]["total"], found["file_scan_priority"]) == (1, 10)
