"""Fixtures that run a real msearchd per test, and helpers that synchronise on events, never on sleep."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from realparts import PostgresServer, postgres_server
from support import dead

from msearchd.client import Client

TESTS = Path(__file__).parent
BIN = Path(sys.executable).parent
MSEARCHD = str(BIN / "msearchd")
MSEARCHCTL = str(BIN / "msearchctl")
START_TIMEOUT = 20.0

HANDLERS_TOML = """
[handlers]
noop = "handlers:noop"
quick = "handlers:quick"
fail = "handlers:fail"
crash = "handlers:crash"
stepper = "handlers:stepper"
spawner = "handlers:spawner"
stubborn = "handlers:stubborn"
polite = "handlers:polite"
tidy = "handlers:tidy"
dawdler = "handlers:dawdler"
heavy = "msearchd.handlers.command:run"
chatty = "handlers:chatty"
forker = "handlers:forker"
returns = "handlers:returns"
replacer = "handlers:replacer"
asks = "handlers:asks"
batcher = "handlers:batcher"
span = "handlers:span"
"""


@dataclass
class Daemon:
    """A msearchd process of this test, with its own socket and state folder."""

    root: Path
    workers: int
    grace: float | None  # None: no --grace flag, the configured or default grace applies
    config: Path
    extra_args: tuple[str, ...] = ()
    cwd: Path | None = None  # the folder it is started in (default: the test run's)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    _logged: threading.Condition = field(default_factory=threading.Condition)

    @property
    def socket(self) -> Path:
        return self.root / "run" / "msearchd.sock"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSEARCH_")}
        env.update(
            MSEARCH_SOCKET=str(self.socket), MSEARCH_STATE_DIR=str(self.state_dir), PYTHONPATH=str(TESTS)
        )
        env.update(self.extra_env)
        return env

    def start(self) -> Daemon:
        ready = threading.Event()
        self.proc = subprocess.Popen(
            [
                MSEARCHD,
                "--workers",
                str(self.workers),
                *(("--grace", str(self.grace)) if self.grace is not None else ()),
                "--config",
                str(self.config),
                "--log-level",
                "debug",
                *self.extra_args,
            ],
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._drain, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(START_TIMEOUT):
            raise AssertionError("msearchd did not start:\n" + self.log)
        if self.proc.poll() is not None:
            raise AssertionError(f"msearchd exited with {self.proc.returncode}:\n" + self.log)
        return self

    def _drain(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._logged:
                self.lines.append(line)
                self._logged.notify_all()
            if " listening on " in line:
                ready.set()
        ready.set()  # ended: let start() see the exit instead of hanging

    def wait_for_log(self, text: str, timeout: float = 20.0) -> str:
        """The first log line containing `text`, waiting for the daemon to write it."""
        with self._logged:
            found = self._logged.wait_for(
                lambda: next((ln for ln in self.lines if text in ln), None), timeout
            )
        if found is None:
            raise AssertionError(f"msearchd did not log {text!r} within {timeout} s:\n{self.log}")
        return found

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def client(self) -> Client:
        return Client(self.socket)

    def ctl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the installed msearchctl as a user would."""
        return subprocess.run(
            [MSEARCHCTL, *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop(self) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=30)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def make_daemon() -> Iterator[Any]:
    """Factory: make_daemon(workers=2, grace=1.0, ...) -> a started Daemon.

    `settings` are top-level TOML keys, `config_extra` further tables after [handlers], `env` variables
    added to (or replacing) the daemon's environment; `store` a postgresql:// address for --store
    (default: SQLite in the daemon's state folder).
    """
    made: list[Daemon] = []
    roots: list[Path] = []

    def factory(
        workers: int = 2,
        grace: float | None = 1.0,
        config_extra: str = "",
        settings: str = "",
        start: bool = True,
        extra_args: tuple[str, ...] = (),
        cwd: Path | None = None,
        extra_env: dict[str, str] | None = None,
        store: str | None = None,
    ) -> Daemon:
        # Short paths: a Unix socket path is limited to 107 bytes.
        root = Path(tempfile.mkdtemp(prefix="ms-", dir="/tmp"))
        roots.append(root)
        config = root / "msearchd.toml"
        config.write_text(settings + HANDLERS_TOML + config_extra)
        d = Daemon(
            root=root,
            workers=workers,
            grace=grace,
            config=config,
            extra_args=(*extra_args, *(("--store", store) if store else ())),
            cwd=cwd,
            extra_env=dict(extra_env or {}),
        )
        made.append(d)
        return d.start() if start else d

    yield factory
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            # SIGTERM first: the daemon stops the commands its tasks run, which a SIGKILL would orphan.
            d.proc.terminate()
            try:
                d.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait(timeout=30)
    left = left_behind([d.state_dir for d in made if d.proc is not None])
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)
    assert not left, f"processes outlived their daemon: {left}"


def left_behind(state_dirs: list[Path], timeout: float = 10.0) -> list[str]:
    """Workers and whatever they started that still run once their daemon has stopped (workers die
    with it, a moment later): each carries its daemon's state folder in MSEARCH_WORKER_OF, or is in
    the cgroup its daemon left named in the state folder (after a kill -9). They are killed, and
    described; such cgroups are removed."""
    marks = {str(p) for p in state_dirs}
    if not marks:
        return []
    cgroups = []
    for state_dir in state_dirs:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            named = json.loads((state_dir / "containment.json").read_text())["cgroup"]
            if named and Path(named).name.startswith("msearchd-"):
                cgroups.append(Path(named))

    def alive() -> list[psutil.Process]:
        found = []
        in_cgroups = set()
        for listing in (path for cgroup in cgroups for path in cgroup.glob("**/cgroup.procs")):
            with contextlib.suppress(OSError, ValueError):
                in_cgroups.update(int(pid) for pid in listing.read_text().split())
        for proc in psutil.process_iter():
            try:
                mine = proc.pid in in_cgroups or proc.environ().get("MSEARCH_WORKER_OF") in marks
                if mine and not dead(proc.pid):
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    deadline = time.monotonic() + timeout
    while (procs := alive()) and time.monotonic() < deadline:
        psutil.wait_procs(procs, timeout=max(0.0, deadline - time.monotonic()))
    described = []
    for proc in alive():
        with contextlib.suppress(psutil.Error):
            described.append(f"{proc.pid} {' '.join(proc.cmdline())}")
            proc.kill()
    for cgroup in cgroups:
        for folder in sorted(cgroup.glob("**/"), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
    return described


@pytest.fixture
def daemon(make_daemon: Any) -> Daemon:
    return make_daemon()


def _no_skip_under_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under CI=true a skip fails: every skip here is for a missing tool, file or privilege, which CI
    must provide, so that a test cannot pass there by not running. An expected failure is no skip."""
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where nothing may be missing: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _no_skip_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _no_skip_under_ci(outcome.get_result())  # a module skipped whole, as by pytest.importorskip


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    with daemon.client() as c:
        yield c


class Fifo:
    """A named pipe that tasks and the test use to signal each other, with deadlines."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / name
        os.mkfifo(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def read(self, timeout: float = 20.0) -> str:
        """Wait until a writer has written one line and closed the pipe; returns the line."""
        deadline = time.monotonic() + timeout
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            data = b""
            while not data.endswith(b"\n"):
                left = deadline - time.monotonic()
                ready, _, _ = select.select([fd], [], [], max(left, 0))
                if not ready:
                    raise AssertionError(f"nothing written to {self.path} within {timeout} s")
                chunk = os.read(fd, 4096)
                if not chunk:
                    # The writer closed without a full line: wait for the next writer.
                    os.close(fd)
                    fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
                data += chunk
            return data.decode().strip()
        finally:
            os.close(fd)

    def write(self, text: str = "go", timeout: float = 20.0) -> None:
        """Write a line once a reader has opened the pipe."""
        done = threading.Event()
        error: list[BaseException] = []

        def opener() -> None:
            try:
                with open(self.path, "w") as f:
                    f.write(text + "\n")
            except BaseException as exc:
                error.append(exc)
            done.set()

        threading.Thread(target=opener, daemon=True).start()
        if not done.wait(timeout):
            raise AssertionError(f"no reader opened {self.path} within {timeout} s")
        if error:
            raise error[0]


@pytest.fixture
def fifo(tmp_path: Path) -> Any:
    """Factory: fifo(name) -> Fifo in a fresh folder."""
    return lambda name="fifo": Fifo(tmp_path, name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session, in a temporary folder; each test makes its own
    database on it (`fresh_database`)."""
    try:
        with postgres_server() as server:
            yield server
    except LookupError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test alone, which it may stop and start again."""
    try:
        with postgres_server() as server:
            yield server
    except LookupError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))


@pytest.fixture
def fresh_database(postgres: PostgresServer) -> Any:
    """Factory: fresh_database() -> the URL of a new, empty database on the session's server."""
    made = iter(range(1_000_000))
    prefix = f"t{os.getpid()}_{time.monotonic_ns()}"
    return lambda: postgres.create_database(f"{prefix}_{next(made)}")
