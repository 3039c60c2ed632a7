"""The pool's state: its workers, which are idle, and the stops and take-backs under way."""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msearchd.containment import Containment
from msearchd.lease import LeaseWord, Phase
from msearchd.model import Task
from msearchd.workers.outcome import Outcome, PoolListener
from msearchd.workers.processes import Reaper


@dataclass(eq=False)
class WorkerProcess:
    pid: int
    proc: subprocess.Popen[bytes]
    exited: asyncio.Future[int]
    word: LeaseWord
    # Where orders to it go: a descriptor of the channel of its own (see WorkerPool._serve).
    writer: asyncio.Transport | None = None
    ready: bool = False
    # The tasks of its lease not yet reported, in order, each with its number (see msearchd.lease).
    lease: dict[int, tuple[int, Task]] = field(default_factory=dict)
    sent: int = 0  # lease entries numbered so far
    # The entry it was at when it was last handed more work while at work: it gets no more until it
    # has moved on (one that runs far longer than expected is not given lease after lease).
    topped_up_at: int = -1
    # The entry it is known to have reached, and when (time.time()): the first of a lease handed to
    # it idle, as it was sent; the one after an entry whose end it reported, at that end.
    entered: tuple[int, float] = (0, 0.0)
    # The overrun checks of the one-task leases it was handed at work, by entry: see `dispatch`.
    overrun_checks: dict[int, asyncio.TimerHandle] = field(default_factory=dict)
    stopping: bool = False
    started: float = field(default=0.0)

    def current(self) -> Task | None:
        """The task it runs now, if any."""
        at, phase = self.word.read()
        if phase is Phase.RUNNING:
            return next((task for seq, task in self.lease.values() if seq == at), None)
        return None


class PoolCore:
    """What the parts of `WorkerPool` share."""

    def __init__(
        self,
        size: int,
        state_dir: Path,
        log_dir: Path,
        handlers: dict[str, str],
        listener: PoolListener,
        reaper: Reaper,
        cgroups: bool = True,
    ) -> None:
        self.size = size
        self._use_cgroups = cgroups
        self._containment: Containment | None = None
        self._state_dir = state_dir
        self._log_dir = log_dir
        self._handlers = handlers
        self._listener = listener
        self._reaper = reaper
        self._workers: set[WorkerProcess] = set()
        self._idle: list[WorkerProcess] = []
        # Stops and take-backs under way, by task id. A take-back that finds its task started ends
        # with None: the task runs, and only a stop ends it.
        self._terminating: dict[int, asyncio.Future[Outcome | None]] = {}
        # Outcomes a cancel or a stop waits for, by task id: they go there, not to the listener.
        self._reports: dict[int, asyncio.Future[Outcome]] = {}
        # Tasks taken back from a lease before they started: the worker's `skipped` needs no more.
        self._taken_back: set[int] = set()
        # Tasks the worker passed without running them while a stop of theirs was under way: that
        # stop ends them, they do not go back to the queue.
        self._passed: set[int] = set()
        self._closing = False
        self._respawn_delay = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    # --- state --------------------------------------------------------------------------------------

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def busy_count(self) -> int:
        return sum(1 for w in self._workers if w.lease)

    def idle_pids(self) -> list[int]:
        return [w.pid for w in self._idle]

    def work_ahead(self) -> list[tuple[int, list[Task], float | None]]:
        """For each worker at work on its lease: its pid, the tasks of the lease it has not
        finished, from the one it is at on, and how long it has been at that one, where that is
        known. Not those of a worker with a stop or a take-back under way (its lease is changing),
        nor of one handed more since it reached the entry it is at."""
        ahead = []
        now = time.time()
        for worker in self._workers:
            lease = worker.lease
            if not lease or worker.stopping or not worker.ready:
                continue
            if any(task_id in self._terminating or task_id in self._taken_back for task_id in lease):
                continue
            at, _ = worker.word.read()
            if at != worker.topped_up_at:
                reached, since = worker.entered
                tasks = [task for seq, task in lease.values() if seq >= at]
                ahead.append((worker.pid, tasks, now - since if reached == at else None))
        return ahead

    def task_ids(self) -> list[int]:
        """The tasks of every lease out: those running, and those waiting their turn."""
        return [task_id for w in self._workers for task_id in w.lease]

    def _worker_for(self, task_id: int) -> WorkerProcess | None:
        return next((w for w in self._workers if task_id in w.lease), None)

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _make_idle(self, worker: WorkerProcess) -> None:
        if self._closing or worker.stopping or worker.lease or worker in self._idle:
            return
        self._idle.append(worker)
        self._listener.worker_idle()
