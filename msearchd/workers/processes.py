"""The daemon's children as processes: reaped on SIGCHLD, signalled by group, and what an earlier
daemon on the same state folder left behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

import psutil

from msearchd.containment import kill_left_behind
from msearchd.prctl import become_subreaper
from msearchd.spawn import WORKER_MARK

log = logging.getLogger("msearchd.workers")

KILL_TIMEOUT = 5.0


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:  # a real-time signal has no name
            return f"killed by signal {number}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


class Reaper:
    """Reaps every child of the daemon on SIGCHLD and hands each watched pid its wait status."""

    def __init__(self) -> None:
        self._watched: dict[int, asyncio.Future[int]] = {}

    def start(self) -> None:
        if not become_subreaper():
            log.warning("cannot become a child subreaper; orphans of cancelled tasks go to init")
        asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, self.reap)

    def stop(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)

    def watches(self, pid: int) -> bool:
        """Whether `pid` is a child of the daemon's own (a worker, the shim), not a task's leftover."""
        return pid in self._watched

    def watch(self, pid: int) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._watched[pid] = future
        return future

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            future = self._watched.pop(pid, None)
            if future is not None and not future.done():
                future.set_result(status)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_leftovers(state_dir: Path) -> int:
    """Kill processes that workers of an earlier daemon on this state folder left behind: by its
    ledger (its cgroup, or its workers' sessions), and any that still carries its mark."""
    mark = str(state_dir)
    me = os.getpid()
    killed = kill_left_behind(state_dir, KILL_TIMEOUT)
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.pid == me or proc.info["uids"].real != os.getuid():
                continue
            if proc.environ().get(WORKER_MARK) == mark:
                proc.kill()
                killed += 1
        except psutil.Error:
            continue
    return killed
