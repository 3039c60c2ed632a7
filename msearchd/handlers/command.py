"""The built-in `command` type: run an argv, keep its output in the task's log file."""

from __future__ import annotations

import fcntl
import functools
import os
import select
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msearchd.errors import InvalidArgument
from msearchd.handlers import TaskCancelled, TaskContext, TaskFailed


def validate(data: Mapping[str, Any]) -> None:
    """Refuse a malformed command at submit time rather than failing it later."""
    argv = data.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise InvalidArgument("a command task needs data.argv: a non-empty list of strings")
    cwd = data.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise InvalidArgument("data.cwd of a command task must be a string")
    env = data.get("env")
    if env is not None and not (
        isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise InvalidArgument("data.env of a command task must map strings to strings")


def run(ctx: TaskContext, data: dict[str, Any]) -> None:
    validate(data)
    argv: list[str] = data["argv"]
    env = {**os.environ, **data.get("env", {})}
    # Reading ctx.cancelled opts in to cooperative cancel: the worker then waits for the command to
    # end on the SIGTERM it receives with the whole process group, instead of interrupting us.
    _ = ctx.cancelled
    log = Path(ctx.log_path)
    log_fd, spare = _open_log(log)
    try:
        try:
            pid = _start(argv, data.get("cwd"), env, log_fd)
        except FileNotFoundError:
            raise TaskFailed(f"command not found: {argv[0]}") from None
        except PermissionError:
            raise TaskFailed(f"command not executable: {argv[0]}") from None
        except OSError as exc:
            raise TaskFailed(f"cannot start {argv[0]}: {exc.strerror}") from None
        if ctx.cancelled:
            # The group's SIGTERM came before the command existed: pass it on.
            os.kill(pid, signal.SIGTERM)
        if not _ends_within(pid, QUIET_START):
            ctx.set_operation(f"running {shlex.join(argv)} (pid {pid})")
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    finally:
        os.close(log_fd)
        if spare is not None:
            spare.take_back(log)
    if ctx.cancelled:
        raise TaskCancelled("sigterm" if code == -signal.SIGTERM else "cooperative")
    if code < 0:
        raise TaskFailed(f"command killed by {signal.Signals(-code).name}")
    if code > 0:
        raise TaskFailed(f"command exited with code {code}")


# A command that ends this soon is not announced as the task's current operation: for a short
# command that message would cost the daemon as much as the rest of the task.
QUIET_START = 0.01


def _ends_within(pid: int, seconds: float) -> bool:
    """True if the child `pid` exits within `seconds` (it is not reaped)."""
    fd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(seconds * 1000))
    finally:
        os.close(fd)


class SpareLog:
    """An empty file a worker keeps, to become the log of its next command.

    Creating a file costs this machine's ext4 0.5-0.7 ms (allocating the inode), more than running
    `true`; linking an existing one under a new name costs 15 us. So a command's log is the spare,
    linked under the task's log name; if the command wrote nothing, the name is removed again and the
    spare serves the next command; if it wrote, the output keeps the name and a new spare is made.
    The log is in its place from the start, for `tail -f`, and a silent command leaves no empty file.
    """

    def __init__(self, folder: Path) -> None:
        self.path = spare_path(folder, os.getpid())
        # False once something failed: logs are then created as usual, never linked to a file that
        # might hold output.
        self.usable = True
        try:
            self.path.unlink(missing_ok=True)  # a worker of an earlier daemon with this pid left it
        except OSError:
            self.usable = False

    def link(self, log: Path) -> None:
        """Give the spare the name `log`; FileExistsError if that name exists already."""
        try:
            log.hardlink_to(self.path)
        except FileNotFoundError:  # the first command of this worker, or the last one wrote output
            self.path.parent.mkdir(exist_ok=True)
            self.path.touch()
            log.hardlink_to(self.path)

    def take_back(self, log: Path) -> None:
        """After the command: an empty log nobody writes to becomes the spare again."""
        try:
            if log.stat().st_size == 0 and not _written_by_others(log):
                log.unlink()
                return
            self.path.unlink()  # the output keeps the file
        except FileNotFoundError:
            pass  # removed meanwhile: the next command makes a new spare
        except OSError:
            self.usable = False


def spare_path(log_folder: Path, worker_pid: int) -> Path:
    """Where worker `worker_pid` keeps its spare log: the daemon removes it when the worker ends."""
    return log_folder / ".spare" / str(worker_pid)


def clear_spares(log_folder: Path) -> None:
    """Remove the spares of an earlier daemon's workers (one killed with -9 leaves them): none of
    those workers runs any more."""
    folder = log_folder / ".spare"
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink(missing_ok=True)


def _written_by_others(path: Path) -> bool:
    """True if some process still has the file open for writing: one the command left running in
    the background, say, whose output must stay in this task's log. The kernel grants a read lease
    only on a file nobody has open for writing."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:  # EAGAIN: open for writing; or leases are not available: keep the log
        return True
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


_spares: dict[Path, SpareLog] = {}


def _open_log(log: Path) -> tuple[int, SpareLog | None]:
    """An fd appending to the task's log, and the spare it was made from, if it was."""
    spare = _spares.get(log.parent)
    if spare is None:
        spare = _spares[log.parent] = SpareLog(log.parent)
    if not spare.usable:
        return _append(log), None
    try:
        spare.link(log)
    except FileExistsError:  # an earlier attempt of this task wrote it: append to it
        return _append(log), None
    except OSError:  # no hard links on this filesystem, say: create logs as usual from now on
        spare.usable = False
        return _append(log), None
    return os.open(log, os.O_WRONLY | os.O_APPEND), spare


def _append(log: Path) -> int:
    """An fd appending to the log; what an earlier attempt wrote there is followed by a line that
    tells where this attempt begins."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    if os.fstat(fd).st_size:
        os.write(fd, f"\n--- another attempt, {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
    return fd


# Signals Python ignores for itself, which a command gets back at their defaults (as subprocess does).
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def _start(argv: list[str], cwd: str | None, env: dict[str, str], log_fd: int) -> int:
    """Start the command with stdin from /dev/null and its output in the log; returns its pid.

    posix_spawn (vfork and exec) costs about 0.6 ms here against 0.9 ms for subprocess, which is
    most of the time a short command takes. It cannot change folder, so a `cwd` goes through
    subprocess.
    """
    if cwd is not None:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT
        )
        proc.returncode = 0  # waited for with os.waitpid: keep Popen from reaping it on collection
        return proc.pid
    path = _which(argv[0], env.get("PATH", os.defpath))
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        return os.posix_spawn(
            path,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsigdef=_RESET_SIGNALS,
        )
    finally:
        os.close(devnull)


@functools.cache
def _which(name: str, search_path: str) -> str:
    """Where `name` is on `search_path`; the name itself if it has a slash or is not found (then
    the spawn fails with the error a shell would give)."""
    if "/" in name:
        return name
    return shutil.which(name, path=search_path) or name
