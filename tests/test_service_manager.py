"""Running under systemd: units that verify, socket activation, readiness, journal logs, completions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tomllib
from pathlib import Path

import pytest
from conftest import MSEARCHCTL, MSEARCHD, Daemon

from msearchd import units
from msearchd.client import Client

ROOT_DIR = Path(__file__).parent.parent
SYSTEMD_TOOLS = ("systemd-analyze", "systemd-socket-activate")
needs_systemd = pytest.mark.skipif(
    any(shutil.which(t) is None for t in SYSTEMD_TOOLS) or shutil.which("man") is None,
    reason="systemd's tools (systemd-analyze, systemd-socket-activate) or man are not installed",
)


def ctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MSEARCHCTL, *args], env=env, capture_output=True, text=True, timeout=60)


def verify(tmp_path: Path, *unit_files: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify --user`, with the man pages the units name findable."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    manpath = tmp_path / "manpath"
    for page in (ROOT_DIR / "man").iterdir():
        folder = manpath / f"man{page.suffix[1:]}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / page.name).symlink_to(page)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "MANPATH": str(manpath)}
    return subprocess.run(
        ["systemd-analyze", "verify", "--user", *map(str, unit_files)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def config_home(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    home = tmp_path / "config"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSEARCH_")}
    env["XDG_CONFIG_HOME"] = str(home)
    return home / "systemd" / "user", env


@needs_systemd
def test_installed_units_verify_and_run_this_msearchd_with_the_given_flags(config_home, tmp_path):
    folder, env = config_home
    done = ctl("daemon", "install", "--socket-activation", "--", "--workers", "2", "--grace", "12", env=env)
    assert done.returncode == 0, done.stderr
    service, sock = folder / units.SERVICE, folder / units.SOCKET
    assert f"wrote {service}" in done.stdout and f"wrote {sock}" in done.stdout
    assert "systemctl --user enable --now msearchd.socket" in done.stdout
    text = service.read_text()
    assert f"ExecStart={MSEARCHD} --workers 2 --grace 12\n" in text
    assert "Type=notify" in text and "TimeoutStopSec=42" in text  # grace + the margin to record
    assert "ListenStream=%t/msearch/msearchd.sock" in sock.read_text()
    checked = verify(tmp_path, service, sock)
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == ""


@needs_systemd
def test_a_broken_unit_fails_verification(tmp_path):
    """The check above can fail: a unit whose program does not exist is reported."""
    broken = tmp_path / "msearchd.service"
    broken.write_text(units.service_unit(str(tmp_path / "no-such-msearchd")))
    checked = verify(tmp_path, broken)
    assert checked.returncode != 0
    assert "no-such-msearchd" in checked.stderr


@needs_systemd
def test_the_shipped_units_are_the_templates_and_verify(tmp_path):
    shipped = ROOT_DIR / "systemd"
    assert (shipped / units.SERVICE).read_text() == units.service_unit("/usr/bin/msearchd")
    assert (shipped / units.SOCKET).read_text() == units.socket_unit()
    # Packagers install msearchd as /usr/bin/msearchd; here it is this environment's.
    local = tmp_path / units.SERVICE
    local.write_text((shipped / units.SERVICE).read_text().replace("/usr/bin/msearchd", MSEARCHD))
    checked = verify(tmp_path, local, shipped / units.SOCKET)
    assert checked.returncode == 0, checked.stderr


def test_install_quotes_arguments_and_uninstall_removes_only_its_own(config_home):
    folder, env = config_home
    done = ctl(
        "daemon",
        "install",
        "--json",
        "--",
        "--state-dir",
        "/data/my state",
        "--config",
        "/etc/50%.toml",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["written"] == [str(folder / units.SERVICE)]  # no socket unit without activation
    assert answer["commands"][-1] == "systemctl --user enable --now msearchd.service"
    assert '--state-dir "/data/my state" --config /etc/50%%.toml\n' in (folder / units.SERVICE).read_text()

    wants = folder / "default.target.wants"
    wants.mkdir()
    (wants / units.SERVICE).symlink_to(folder / units.SERVICE)  # as `systemctl --user enable` does
    foreign = folder / units.SOCKET
    foreign.write_text("[Socket]\nListenStream=/elsewhere\n")
    refused = ctl("daemon", "install", "--socket-activation", env=env)
    assert refused.returncode == 1
    assert "was not written by msearchctl; give --force" in refused.stderr
    assert foreign.read_text() == "[Socket]\nListenStream=/elsewhere\n"

    removed = ctl("daemon", "uninstall", env=env)
    assert removed.returncode == 0, removed.stderr
    assert not (folder / units.SERVICE).exists() and not (wants / units.SERVICE).is_symlink()
    assert foreign.exists()  # not ours
    again = ctl("daemon", "uninstall", env=env)
    assert again.returncode == 0 and "no units written by msearchctl" in again.stdout


@needs_systemd
def test_socket_activation_starts_the_daemon_at_the_first_connection_on_the_socket_given(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    path = run / "msearchd.sock"
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSEARCH_")}
    activator = subprocess.Popen(
        [
            "systemd-socket-activate",
            "-l",
            str(path),
            "-E",
            f"MSEARCH_STATE_DIR={state}",
            "-E",
            "MSEARCH_SOCKET=/nonexistent/elsewhere.sock",
            MSEARCHD,
            "--workers",
            "1",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert activator.stderr is not None
        assert "Listening on" in activator.stderr.readline()  # the socket exists; no daemon yet
        assert not state.exists()
        with Client(path) as client:  # this connection starts it
            status = client.status()
            assert status["socket"] == str(path)  # the socket it was given, not MSEARCH_SOCKET
            assert status["pid"] == activator.pid  # systemd-socket-activate execs the daemon
            task = client.submit("command", {"argv": ["true"]})
            assert client.wait([task["id"]], timeout=30)["tasks"][0]["status"] == "completed"
            client.shutdown()
            client.wait_closed()
        assert activator.wait(timeout=30) == 0
        assert path.is_socket()  # the service manager's socket stays for the next start
        log = activator.stderr.read()
        assert "(handed over by the service manager)" in log
    finally:
        if activator.poll() is None:
            activator.kill()
            activator.wait()


class NotifyListener:
    """The service manager's end of sd_notify: a datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(30)

    def next(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.partition("=")[::2] for line in data.splitlines())

    def until(self, key: str) -> dict[str, str]:
        while key not in (message := self.next()):
            pass
        return message


def test_ready_is_told_once_the_daemon_answers_and_stopping_at_stop(make_daemon, tmp_path):
    listener = NotifyListener(tmp_path / "notify")
    d = make_daemon(start=False, extra_env={"NOTIFY_SOCKET": str(listener.path)})
    d.start()
    ready = listener.until("READY")
    assert ready["READY"] == "1" and ready["MAINPID"] == str(d.proc.pid)
    # Told only once it serves: the first connection after READY=1 is answered.
    with d.client() as client:
        assert client.status()["pid"] == d.proc.pid
        task = client.submit("command", {"argv": ["env"]})
        client.wait([task["id"]], timeout=30)
    assert listener.until("STATUS")["STATUS"].endswith("tasks pending, 0 running")
    log = (d.state_dir / "logs" / f"{task['id']}.log").read_text()
    assert "NOTIFY_SOCKET" not in log  # for the daemon alone, not for what tasks run
    d.proc.send_signal(signal.SIGTERM)
    stopping = listener.until("STOPPING")
    assert stopping["STOPPING"] == "1"
    assert d.proc.wait(timeout=30) == 0


def daemon_lines(d: Daemon) -> list[str]:
    d.stop()
    return [line.rstrip("\n") for line in d.lines]


def test_journal_format_has_priorities_and_no_time(make_daemon):
    d = make_daemon(extra_args=("--log-format", "journal"))
    with d.client() as client:
        client.submit("command", {"argv": ["sh", "-c", "exit 3"]})
    lines = daemon_lines(d)
    assert lines and all(line[:3] in {"<7>", "<6>", "<4>", "<3>", "<2>"} for line in lines), lines
    assert any(line.startswith("<6>msearchd: msearchd ") and "listening on" in line for line in lines)
    assert not any(line[3:7].isdigit() for line in lines)  # no date: the journal adds its own


def test_json_format_is_one_object_a_line(make_daemon):
    d = make_daemon(extra_args=("--log-format", "json"))
    lines = daemon_lines(d)
    entries = [json.loads(line) for line in lines]
    assert {"time", "level", "logger", "message", "pid"} <= set(entries[0])
    assert any(e["level"] == "info" and "listening on" in e["message"] for e in entries)
    assert entries[-1]["message"] == "stopped"


def test_journal_format_is_chosen_when_stderr_is_the_journal(make_daemon, tmp_path):
    """systemd says so with JOURNAL_STREAM=<device>:<inode> of the stream it gave as stderr."""
    d = make_daemon(start=False)
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    env = {**d.env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    proc = subprocess.Popen(
        [MSEARCHD, "--workers", "1", "--config", str(d.config)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=write_end,
    )
    os.close(write_end)
    with os.fdopen(read_end) as stderr:
        while "listening on" not in (line := stderr.readline()):
            assert line.startswith(("<6>", "<4>", "<7>")), line
        assert line.startswith("<6>msearchd: "), line
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        assert stderr.read().splitlines()[-1] == "<6>msearchd: stopped"


def test_completion_scripts_are_shipped_and_current():
    from typer._completion_shared import get_completion_script

    data_files = tomllib.loads((ROOT_DIR / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    shipped = {f: dest for dest, files in data_files.items() for f in files}
    expected = {
        "bash": ("completions/bash/msearchctl", "share/bash-completion/completions"),
        "zsh": ("completions/zsh/_msearchctl", "share/zsh/site-functions"),
        "fish": ("completions/fish/msearchctl.fish", "share/fish/vendor_completions.d"),
    }
    for shell, (path, dest) in expected.items():
        assert shipped.get(path) == dest
        script = get_completion_script(
            prog_name="msearchctl", complete_var="_MSEARCHCTL_COMPLETE", shell=shell
        )
        assert (ROOT_DIR / path).read_text().strip() == script.strip(), f"{path} is out of date"
    assert shipped.get("systemd/msearchd.service") == "share/systemd/user"


def test_completion_answers_through_the_installed_command():
    """The shipped bash script asks msearchctl itself; that answer lists the commands."""
    env = {
        **os.environ,
        "_MSEARCHCTL_COMPLETE": "complete_bash",
        "COMP_WORDS": "msearchctl tas",
        "COMP_CWORD": "1",
    }
    done = subprocess.run([MSEARCHCTL], env=env, capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["tasks"], (done.stdout, done.stderr)
