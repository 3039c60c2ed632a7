"""The worker pool: spawn, dispatch, progress, cancel (process-group kill), respawn.

Each worker is a long-lived Python process in its own session, so that it and everything it starts
can be signalled as one process group. The daemon makes itself a child subreaper: whatever a task
leaves orphaned is re-parented to the daemon, which reaps it, so a cancel leaves no zombie behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from msearchd import protocol
from msearchd.errors import MsearchError, ProtocolError
from msearchd.model import StopReason, Task, TaskStatus, format_task_id
from msearchd.prctl import become_subreaper

log = logging.getLogger("msearchd.workers")

# Marks every process a worker starts, so that leftovers of a crashed daemon can be found again.
WORKER_MARK = "MSEARCH_WORKER_OF"
_KILL_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Outcome:
    status: TaskStatus
    error: str | None = None
    stop_reason: StopReason | None = None


class PoolListener(Protocol):
    def worker_idle(self) -> None: ...

    def task_progress(self, task: Task, progress: float | None, operation: str | None) -> None: ...

    def task_finished(self, task: Task, outcome: Outcome) -> None: ...

    def follow_up(self, parent_id: int, params: dict[str, Any]) -> str: ...


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
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


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_all(procs: Iterable[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()  # psutil checks the pid still names the same process


async def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until none of `procs` exists any more (reaped, not a zombie); returns the survivors."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    alive = list(procs)
    while True:
        alive = [p for p in alive if p.is_running()]
        if not alive or loop.time() >= deadline:
            return alive
        await asyncio.sleep(0.005)


def kill_leftovers(state_dir: Path) -> int:
    """Kill processes that workers of an earlier daemon on this state folder left behind."""
    mark = str(state_dir)
    me = os.getpid()
    killed = 0
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


@dataclass(eq=False)
class WorkerProcess:
    pid: int
    proc: subprocess.Popen[bytes]
    exited: asyncio.Future[int]
    writer: asyncio.StreamWriter | None = None
    ready: bool = False
    task: Task | None = None
    stopping: bool = False
    report: asyncio.Future[Outcome] | None = None
    started: float = field(default=0.0)


class WorkerPool:
    def __init__(
        self, size: int, state_dir: Path, handlers: dict[str, str], listener: PoolListener, reaper: Reaper
    ) -> None:
        self.size = size
        self._state_dir = state_dir
        self._handlers = handlers
        self._listener = listener
        self._reaper = reaper
        self._workers: set[WorkerProcess] = set()
        self._idle: list[WorkerProcess] = []
        self._terminating: dict[int, asyncio.Future[Outcome]] = {}
        self._closing = False
        self._respawn_delay = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    # --- state --------------------------------------------------------------------------------------

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def busy_count(self) -> int:
        return sum(1 for w in self._workers if w.task is not None)

    def idle_pids(self) -> list[int]:
        return [w.pid for w in self._idle]

    def _worker_for(self, task_id: int) -> WorkerProcess | None:
        return next((w for w in self._workers if w.task is not None and w.task.id == task_id), None)

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        for _ in range(self.size):
            self._spawn()

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        config = json.dumps({"handlers": self._handlers, "state_dir": str(self._state_dir)})
        env = {**os.environ, WORKER_MARK: str(self._state_dir)}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "msearchd.worker", str(child.fileno()), str(os.getpid()), config],
                pass_fds=(child.fileno(),),
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            child.close()
        worker = WorkerProcess(
            pid=proc.pid, proc=proc, exited=self._reaper.watch(proc.pid), started=loop.time()
        )
        self._workers.add(worker)
        self._background(self._serve(worker, parent))

    async def _serve(self, worker: WorkerProcess, channel: socket.socket) -> None:
        reader, worker.writer = await asyncio.open_unix_connection(sock=channel)
        try:
            while (message := await protocol.read_frame(reader)) is not None:
                await self._on_message(worker, message)
        except (ProtocolError, ConnectionError) as exc:
            log.warning("worker %d: broken channel: %s", worker.pid, exc)
            signal_group(worker.pid, signal.SIGKILL)
        worker.writer.close()
        status = await worker.exited
        self._on_exit(worker, status)

    async def _on_message(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        op = message.get("op")
        task = worker.task
        if op == "ready":
            worker.ready = True
            self._respawn_delay = 0.0
            self._make_idle(worker)
        elif op == "progress" and task is not None:
            self._listener.task_progress(task, message.get("progress"), message.get("current_operation"))
        elif op == "submit" and task is not None and worker.writer is not None:
            try:
                reply: dict[str, Any] = {"task_id": self._listener.follow_up(task.id, message["params"])}
            except MsearchError as exc:
                reply = {"error": exc.to_wire()}
            worker.writer.write(protocol.encode(reply))
        elif op == "done" and task is not None:
            outcome = Outcome(
                status=TaskStatus(message["status"]),
                error=message.get("error"),
                stop_reason=StopReason(message["stop_reason"]) if message.get("stop_reason") else None,
            )
            if worker.report is not None:  # a cancel or shutdown is under way: it takes the outcome
                if not worker.report.done():
                    worker.report.set_result(outcome)
                return
            worker.task = None
            self._listener.task_finished(task, outcome)
            self._make_idle(worker)
        else:
            log.warning("worker %d: unexpected message %r", worker.pid, op)

    def _make_idle(self, worker: WorkerProcess) -> None:
        if self._closing or worker.stopping:
            return
        self._idle.append(worker)
        self._listener.worker_idle()

    def _on_exit(self, worker: WorkerProcess, status: int) -> None:
        worker.proc.returncode = os.waitstatus_to_exitcode(status)  # reaped already: keep Popen from waiting
        self._workers.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        signal_group(worker.pid, signal.SIGKILL)  # whatever the worker left in its group
        how = describe_exit(status)
        task = worker.task
        if task is not None and not worker.stopping:
            log.warning("worker %d %s while running %s", worker.pid, how, format_task_id(task.id))
            worker.task = None
            self._listener.task_finished(task, Outcome(TaskStatus.FAILED, error=f"worker {how}"))
        elif not worker.stopping and not self._closing:
            log.warning("worker %d %s", worker.pid, how)
        if self._closing:
            return
        if not worker.ready:
            # It died before it could start: back off so a broken install does not spin.
            self._respawn_delay = min(max(self._respawn_delay * 2, 0.5), 30.0)
            log.error(
                "worker %d %s before it was ready; next start in %.1f s", worker.pid, how, self._respawn_delay
            )
        asyncio.get_running_loop().call_later(self._respawn_delay, self._respawn)

    def _respawn(self) -> None:
        if not self._closing and len(self._workers) < self.size:
            self._spawn()

    # --- work ---------------------------------------------------------------------------------------

    def dispatch(self, task: Task, pid: int, log_path: Path) -> None:
        """Hand `task` to the idle worker `pid`."""
        worker = next(w for w in self._idle if w.pid == pid)
        self._idle.remove(worker)
        assert worker.writer is not None
        worker.task = task
        payload = {
            "id": format_task_id(task.id),
            "type": task.type,
            "data": task.data,
            "log_path": str(log_path),
        }
        worker.writer.write(protocol.encode({"op": "run", "task": payload}))

    async def terminate(self, task_id: int, grace: float) -> Outcome | None:
        """Stop a running task and everything it started; None if no worker runs it.

        SIGTERM to the worker's process group; after `grace` seconds SIGKILL to the group and to every
        descendant found, wherever it moved. Returns how the task ended: it may have finished on its
        own just before the signal arrived.
        """
        if task_id in self._terminating:
            return await asyncio.shield(self._terminating[task_id])
        worker = self._worker_for(task_id)
        if worker is None:
            return None
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._terminating[task_id] = future
        try:
            outcome = await self._stop_worker(worker, grace)
        finally:
            del self._terminating[task_id]
        future.set_result(outcome)
        return outcome

    async def _stop_worker(self, worker: WorkerProcess, grace: float) -> Outcome:
        worker.stopping = True
        worker.report = asyncio.get_running_loop().create_future()
        procs = descendants(worker.pid)
        signal_group(worker.pid, signal.SIGTERM)
        killed = False
        try:
            await asyncio.wait_for(asyncio.shield(worker.exited), grace)
        except TimeoutError:
            procs += descendants(worker.pid)
            killed = True
            signal_group(worker.pid, signal.SIGKILL)
            kill_all(procs)
            try:
                await asyncio.wait_for(asyncio.shield(worker.exited), _KILL_TIMEOUT)
            except TimeoutError:
                log.error("worker %d survived SIGKILL for %.0f s", worker.pid, _KILL_TIMEOUT)
        signal_group(worker.pid, signal.SIGKILL)
        kill_all(procs)
        survivors = await wait_gone(procs, _KILL_TIMEOUT)
        if survivors:
            log.error("processes %s of worker %d outlived SIGKILL", [p.pid for p in survivors], worker.pid)
        worker.task = None
        if worker.report.done():
            return worker.report.result()
        return Outcome(TaskStatus.CANCELLED, stop_reason=StopReason.KILLED if killed else StopReason.SIGTERM)

    async def stop(self, grace: float) -> dict[int, Outcome]:
        """Stop every worker; returns how each task that was running ended."""
        self._closing = True
        self._idle.clear()
        busy = [w for w in self._workers if w.task is not None]
        ids = [w.task.id for w in busy if w.task is not None]
        outcomes = await asyncio.gather(*(self.terminate(i, grace) for i in ids))
        for worker in list(self._workers):
            if worker.writer is not None:
                worker.writer.close()  # an idle worker exits at end of channel
        exits = [w.exited for w in self._workers]
        if exits:
            _, pending = await asyncio.wait(exits, timeout=max(grace, 1.0))
            for worker in self._workers:
                if worker.exited in pending:
                    signal_group(worker.pid, signal.SIGKILL)
            if pending:
                await asyncio.wait(pending, timeout=_KILL_TIMEOUT)
        for task in list(self._tasks):
            task.cancel()
        return {i: o for i, o in zip(ids, outcomes, strict=True) if o is not None}
