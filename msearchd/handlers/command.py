"""The built-in `command` type: run an argv, keep its output in the task's log file."""

from __future__ import annotations

import os
import shlex
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
            proc = subprocess.Popen(
                argv,
                cwd=data.get("cwd"),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        except FileNotFoundError:
            raise TaskFailed(f"command not found: {argv[0]}") from None
        except PermissionError:
            raise TaskFailed(f"command not executable: {argv[0]}") from None
        except OSError as exc:
            raise TaskFailed(f"cannot start {argv[0]}: {exc.strerror}") from None
        if ctx.cancelled:
            # The group's SIGTERM came before the command existed: pass it on.
            proc.terminate()
        ctx.set_operation(f"running {shlex.join(argv)} (pid {proc.pid})")
        code = proc.wait()
    if ctx.cancelled:
        raise TaskCancelled("sigterm" if code == -signal.SIGTERM else "cooperative")
    if code < 0:
        raise TaskFailed(f"command killed by {signal.Signals(-code).name}")
    if code > 0:
        raise TaskFailed(f"command exited with code {code}")
