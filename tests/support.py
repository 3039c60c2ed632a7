"""Small helpers shared by the integration tests."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import subprocess
import time
from typing import Any

import psutil


def gone(pid: int) -> bool:
    """True when no process has this pid any more: exited and reaped, not a zombie."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_DEAD
    except psutil.NoSuchProcess:
        return True


def until(condition: Any, what: str, timeout: float = 30.0, pause_s: float = 0.0) -> None:
    """Wait for `condition()` to hold, failing after `timeout` seconds. `pause_s` spaces the looks
    where each is cheap and the change slow (a file the daemon rewrites); a look that is itself a
    request needs none."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        if pause_s:
            time.sleep(pause_s)


def gone_within(pid: int, timeout_s: float = 30.0) -> bool:
    """True once no process has this pid, waiting up to `timeout_s` for it to be reaped: a process the
    daemon kills and reaps in the background (not before it answers) may still be a zombie a moment."""
    with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
        psutil.Process(pid).wait(timeout_s)
    return gone(pid)


def dead(pid: int) -> bool:
    """True when the process no longer runs. A zombie counts as dead: once its daemon is killed, an orphan
    goes to init, which reaps it on a real system (and may never here, in a sandbox)."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_DEAD, psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def on_terminal(argv: list[str], env: dict[str, str], timeout: float = 30.0) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as stdin, stdout and stderr, as in an interactive shell;
    returns its exit status and all it wrote."""
    main, child = pty.openpty()
    env = {**env, "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "50"}
    proc = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env, close_fds=True)
    os.close(child)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([main], [], [], left)[0]:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: every holder of the terminal's other end has closed it
                break
            if not chunk:
                break
            out += chunk
        return proc.wait(timeout=max(deadline - time.monotonic(), 1.0)), out.decode(errors="replace")
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_started(client: Any, task_id: str, timeout: float = 20.0) -> None:
    """Wait until a worker runs the `command` task `task_id`. Its status says `running` as soon as
    it is handed to a worker, a moment before the worker starts it, and a plain cancel takes back a
    task in that moment; a command that runs names its pid as its current operation."""
    deadline = time.monotonic() + timeout
    with client.events(task_ids=[task_id]) as stream:
        if client.get(task_id)["current_operation"]:
            return
        while (left := deadline - time.monotonic()) > 0:
            if stream.ready(left):
                event = next(stream, None)
                if event is None:
                    break
                if event.get("current_operation"):
                    return
    raise AssertionError(f"{task_id} did not start within {timeout} s")
