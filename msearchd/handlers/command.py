"""The built-in `command` type: run an argv, keep its output in the task's log file."""

from __future__ import annotations

import functools
import os
import select
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping
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
    with open(ctx.log_path, "ab") as log:
        try:
            pid = _start(argv, data.get("cwd"), env, log.fileno())
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
