"""The built-in `command` type: run an argv, keep its output in the task's log file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import shlex
import signal
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msearchd.errors import InvalidArgument
from msearchd.handlers import TaskCancelled, TaskContext, TaskFailed
from msearchd.spawn import TASK_ENV, WORKER_MARK

# Variables the worker sets for what a task starts: a task may not set them.
MARKERS = (TASK_ENV, WORKER_MARK)


def validate(data: Mapping[str, Any]) -> None:
    """Refuse a malformed command at submit time rather than failing it later."""
    argv = data.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise InvalidArgument("a command task needs data.argv: a non-empty list of strings")
    if not argv[0]:
        raise InvalidArgument("data.argv[0] of a command task, the program to run, must not be empty")
    if any("\0" in a for a in argv):
        raise InvalidArgument("data.argv of a command task must not contain NUL bytes")
    cwd = data.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or not cwd or "\0" in cwd):
        raise InvalidArgument("data.cwd of a command task must be a folder name without NUL bytes")
    env = data.get("env")
    if env is None:
        return
    if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise InvalidArgument("data.env of a command task must map strings to strings")
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise InvalidArgument(f"data.env of a command task: {name!r} is not a variable name")
        if "\0" in value:
            raise InvalidArgument(f"data.env of a command task: the value of {name} holds a NUL byte")
        if name in MARKERS:
            raise InvalidArgument(f"data.env of a command task must not set {name}: the worker sets it")


def run(ctx: TaskContext, data: dict[str, Any]) -> None:
    try:
        validate(data)  # again: under another type's name it was not checked at submit
    except InvalidArgument as exc:
        raise TaskFailed(exc.message) from None
    argv: list[str] = data["argv"]
    cwd: str | None = data.get("cwd")
    task_env: dict[str, str] = data.get("env", {})
    env = _environment(task_env)
    # Reading ctx.cancelled opts in to cooperative cancel: the worker then waits for the command to
    # end on the SIGTERM it receives with the whole process group, instead of interrupting us.
    _ = ctx.cancelled
    log = ctx.log_path
    log_fd, spare = _open_log(log)
    try:
        try:
            pid = _start(argv, cwd, env, log_fd)
        except OSError as exc:
            raise TaskFailed(_start_error(exc, argv[0], cwd)) from None
        if ctx.cancelled:
            # The group's SIGTERM came before the command existed: pass it on.
            os.kill(pid, signal.SIGTERM)
        if not _ends_within(pid, QUIET_START):
            ctx.set_operation(f"running {shlex.join(argv)} (pid {pid})")
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    finally:
        written = os.fstat(log_fd)
        os.close(log_fd)  # first: our own fd would count as someone writing (see take_back)
        if spare is not None:
            spare.take_back(log, written)
    if ctx.cancelled:
        raise TaskCancelled("sigterm" if code == -signal.SIGTERM else "cooperative")
    if code < 0:
        raise TaskFailed(f"command killed by {signal.Signals(-code).name}")
    if code > 0:
        raise TaskFailed(f"command exited with code {code}")


def _environment(task_env: dict[str, str]) -> dict[bytes, bytes]:
    """The worker's environment with the task's variables, the worker's markers last: what the task
    starts must stay findable (see msearchd.workers).

    Made from the bytes CPython's `os.environ` keeps for the process (`_data`, there since 3.2), as
    posix_spawn takes them: reading `os.environ` or `os.environb` name by name costs 30 us a command,
    a copy of that dict under 1. Elsewhere, `os.environb` it is.
    """
    kept = getattr(os.environ, "_data", None)
    worker_env: dict[bytes, bytes] = kept if isinstance(kept, dict) else dict(os.environb)
    env = worker_env.copy()
    if task_env:
        env.update((os.fsencode(name), os.fsencode(value)) for name, value in task_env.items())
        for marker in _MARKER_KEYS:
            if marker in worker_env:
                env[marker] = worker_env[marker]
    return env


_MARKER_KEYS = tuple(os.fsencode(name) for name in MARKERS)


def _start_error(exc: OSError, program: str, cwd: str | None) -> str:
    """Why the command could not start, in the words of a shell: the folder or the program."""
    if cwd is not None and exc.filename == cwd:
        if isinstance(exc, FileNotFoundError):
            return f"folder not found: {cwd}"
        if isinstance(exc, NotADirectoryError):
            return f"not a folder: {cwd}"
        return f"cannot enter folder {cwd}: {exc.strerror}"
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {program}"
    if isinstance(exc, PermissionError):
        return f"command not executable: {program}"
    return f"cannot start {program}: {exc.strerror}"


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

    def __init__(self, folder: str) -> None:
        self.path = str(spare_path(Path(folder), os.getpid()))
        # False once something failed: logs are then created as usual, never linked to a file that
        # might hold output.
        self.usable = True
        self.inode: int | None = None  # of the spare this worker made: a log links only to it
        try:
            Path(self.path).unlink(missing_ok=True)  # a worker of an earlier daemon with this pid left it
        except OSError:
            self.usable = False

    def link(self, log: str) -> None:
        """Give the spare the name `log`; FileExistsError if that name exists already."""
        try:
            os.link(self.path, log)
        except FileNotFoundError:  # the first command of this worker, or the last one wrote output
            Path(self.path).parent.mkdir(exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            self.inode = os.fstat(fd).st_ino
            os.close(fd)
            os.link(self.path, log)

    def take_back(self, log: str, written: os.stat_result) -> None:
        """After the command: an empty log nobody writes to becomes the spare again. `written` is
        the log as the command left it (its fd's stat)."""
        try:
            if written.st_size == 0 and not _written_by_others(log, written.st_ino):
                os.unlink(log)  # noqa: PTH108 - a str: no Path object per command
                return
            os.unlink(self.path)  # noqa: PTH108 - the output keeps the file
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


def _written_by_others(path: str, inode: int) -> bool:
    """True if some process still has the file open for writing: one the command left running in
    the background, say, whose output must stay in this task's log. The kernel grants a read lease
    only on a file nobody has open for writing. Also true if `path` no longer names the file `inode`."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if os.fstat(fd).st_ino != inode:
            return True
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:  # EAGAIN: open for writing; or leases are not available: keep the log
        return True
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


_spares: dict[str, SpareLog] = {}  # by logs folder


def _open_log(log: str) -> tuple[int, SpareLog | None]:
    """An fd appending to the task's log, and the spare it was made from, if it was.

    A log is never opened through a symbolic link, nor appended to unless it is a plain file with
    no other name: whoever could plant one in the logs folder would have the task write elsewhere.
    """
    folder = log.rpartition("/")[0]
    spare = _spares.get(folder)
    if spare is None:
        spare = _spares[folder] = SpareLog(folder)
    if spare.usable:
        try:
            spare.link(log)
        except FileExistsError:  # an earlier attempt of this task wrote it: append to it
            return _append_to_existing(log), None
        except OSError:  # no hard links on this filesystem, say: create logs as usual from now on
            spare.usable = False
        else:
            fd = _open_spare(log, spare)
            if fd is not None:
                return fd, spare
    try:
        return _open_nofollow(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL), None
    except FileExistsError:
        return _append_to_existing(log), None


def _open_spare(log: str, spare: SpareLog) -> int | None:
    """An fd appending to `log`, just linked to the spare, if it is the file this worker made. If
    something replaced the spare (a link elsewhere), the name goes again, and so do spares."""
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    except OSError:
        fd = None
    if fd is not None and os.fstat(fd).st_ino == spare.inode:
        return fd
    if fd is not None:
        os.close(fd)
    with contextlib.suppress(OSError):  # if the name stays, it is refused as a log below
        os.unlink(log)  # noqa: PTH108 - a str, as all log names here
    spare.usable = False
    return None


def _open_nofollow(log: str, flags: int) -> int:
    try:
        return os.open(log, flags | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TaskFailed(f"the task's log {log} is a symbolic link: not followed") from None
        raise TaskFailed(f"cannot open the task's log {log}: {exc.strerror}") from None


def _append_to_existing(log: str) -> int:
    """An fd appending to the log an earlier attempt left; O_NONBLOCK so that a planted FIFO cannot
    block the worker."""
    fd = _open_nofollow(log, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1:
        os.close(fd)
        raise TaskFailed(f"the task's log {log} is not a plain file of its own: not written")
    os.set_blocking(fd, True)
    if found.st_size:  # what an earlier attempt wrote is followed by a line that tells where this one begins
        os.write(fd, f"\n--- another attempt, {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
    return fd


# Signals Python ignores for itself, which a command gets back at their defaults (as subprocess does).
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def _start(argv: list[str], cwd: str | None, env: dict[bytes, bytes], log_fd: int) -> int:
    """Start the command with stdin from /dev/null and its output in the log; returns its pid.

    posix_spawn (vfork and exec) costs about 0.6 ms here against 0.9 ms for subprocess, which is
    most of the time a short command takes. It cannot change folder, so a `cwd` goes through
    subprocess.
    """
    program = find_program(argv[0], os.fsdecode(env.get(b"PATH", os.defpath)))
    if cwd is not None:
        proc = subprocess.Popen(
            argv,
            executable=program,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
        )
        proc.returncode = 0  # waited for with os.waitpid: keep Popen from reaping it on collection
        return proc.pid
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        return os.posix_spawn(
            program,
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


def find_program(name: str, search_path: str) -> str:
    """Where a shell would find `name`: itself if it has a slash, else the first executable file of
    that name in the folders of `search_path`, looked up afresh each time (a program installed a
    moment ago is found). Never the current folder: empty and relative entries of PATH are skipped.
    FileNotFoundError if there is none."""
    if "/" in name:
        return name
    for folder in search_path.split(os.pathsep):
        if not folder.startswith("/"):
            continue
        candidate = f"{folder}/{name}"
        # access() tells of a missing file without raising: a stat's exception costs more than the call.
        if not os.access(candidate, os.X_OK):
            continue
        try:
            found = os.stat(candidate)  # noqa: PTH116 - a str: no Path object per lookup
        except OSError:
            continue
        if stat.S_ISREG(found.st_mode):
            return candidate
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
