"""The worker pool: spawn, dispatch, progress, cancel (process-group signal, then kill all), respawn.

Each worker is a long-lived Python process in its own session, so that it and everything it starts
can be signalled as one process group. Everything it starts is also held where a task cannot take it
out (see msearchd.containment), and killed with the worker. The daemon makes itself a child
subreaper: whatever a task leaves orphaned is re-parented to it (or to its worker), and reaped, so a
cancel leaves no zombie behind.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from msearchd import protocol
from msearchd.containment import Containment, kill_left_behind
from msearchd.errors import InternalError, MsearchError, ProtocolError
from msearchd.handlers.command import clear_spares, spare_path
from msearchd.lease import LeaseWord, Phase
from msearchd.model import StopReason, Task, TaskStatus, format_task_id, parse_task_id
from msearchd.prctl import become_subreaper
from msearchd.spawn import WORKER_MARK, child_environ, child_folder, python_argv

log = logging.getLogger("msearchd.workers")

_KILL_TIMEOUT = 5.0


# How a worker's report names a status; looked up once per finished task.
_STATUSES = {str(s): s for s in TaskStatus}
# A worker that exited while something it forked keeps its channel open (a handler that forks without
# exec) is no longer heard from: its channel is closed from this side after this long.
_CHANNEL_GRACE = 1.0


@dataclass(frozen=True, slots=True)
class Outcome:
    status: TaskStatus
    error: str | None = None
    stop_reason: StopReason | None = None
    # When the task ran, as the worker saw it (a task of a lease may start a little after its lease).
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None  # what the handler returned, when it completed


# What a handler asks of the daemon, and waits for an answer to.
_REQUESTS = ("submit", "submit_many", "cancel")

# A task taken out of a lease before the worker started it.
NOT_STARTED = Outcome(TaskStatus.CANCELLED, stop_reason=StopReason.NOT_STARTED)


class PoolListener(Protocol):
    def worker_idle(self) -> None: ...

    def task_progress(self, task: Task, progress: float | None, operation: str | None) -> None: ...

    def task_finished(self, task: Task, outcome: Outcome) -> None: ...

    def task_started(self, task: Task) -> None:
        """A task of a lease claimed without a start (it waited its turn) runs long: it started."""

    def tasks_returned(self, tasks: list[Task]) -> None:
        """Tasks of a lease that did not start and will not: back to the queue."""

    def follow_up(self, parent_id: int, params: dict[str, Any]) -> str: ...

    def follow_up_many(self, parent_id: int, tasks: list[Any]) -> list[str]: ...

    def follow_up_cancel(self, parent_id: int, task_ids: list[Any]) -> list[str]: ...


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
    killed = kill_left_behind(state_dir, _KILL_TIMEOUT)
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


class _Orders(asyncio.Protocol):
    """The writing side of a worker's channel; what the worker sends is read on another descriptor."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()  # before the loop starts reading: this side never reads

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("worker channel: cannot send any more: %s", exc)


def send_order(worker: WorkerProcess, message: dict[str, Any]) -> None:
    """Send `message` to `worker`, unless it can no longer be heard: it exited, and its exit says
    what became of its lease."""
    if worker.writer is not None and not worker.writer.is_closing():
        worker.writer.write(protocol.encode(message))


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
    stopping: bool = False
    started: float = field(default=0.0)

    def current(self) -> Task | None:
        """The task it runs now, if any."""
        at, phase = self.word.read()
        if phase is Phase.RUNNING:
            return next((task for seq, task in self.lease.values() if seq == at), None)
        return None


class WorkerPool:
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

    def task_ids(self) -> list[int]:
        """The tasks of every lease out: those running, and those waiting their turn."""
        return [task_id for w in self._workers for task_id in w.lease]

    def _worker_for(self, task_id: int) -> WorkerProcess | None:
        return next((w for w in self._workers if task_id in w.lease), None)

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        clear_spares(self._log_dir)
        self._containment = Containment(self._state_dir, self._use_cgroups, self._reaper.watches)
        for _ in range(self.size):
            self._spawn()

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            word = LeaseWord.create()
        except BaseException:
            parent.close()
            child.close()
            raise
        assert self._containment is not None
        config = json.dumps(
            {
                "handlers": self._handlers,
                "state_dir": str(self._state_dir),
                "subreaper": self._containment.cgroup is None,  # see msearchd.containment
            }
        )
        env = {**child_environ(), WORKER_MARK: str(self._state_dir)}
        argv = [str(child.fileno()), str(word.fd), str(os.getpid()), config]
        try:
            proc = subprocess.Popen(
                [*python_argv("msearchd.worker"), *argv],
                pass_fds=(child.fileno(), word.fd),
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=child_folder(),
            )
        except BaseException:
            word.close()
            parent.close()
            raise
        finally:
            child.close()
        worker = WorkerProcess(
            pid=proc.pid, proc=proc, exited=self._reaper.watch(proc.pid), word=word, started=loop.time()
        )
        try:
            self._containment.add_worker(proc.pid)
        except OSError as exc:  # it would run tasks out of reach: it goes, and the restart backs off
            log.error("cannot hold worker %d in its cgroup (%s); stopping it", proc.pid, exc.strerror)
            signal_group(proc.pid, signal.SIGKILL)
        self._workers.add(worker)
        self._background(self._serve(worker, parent))

    async def _serve(self, worker: WorkerProcess, channel: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        # Two descriptors of the channel: one to read, one to write. A write that fails because the
        # worker has exited (a skip sent as it stopped) closes only its own, so that every report the
        # worker sent before it exited is still read (one transport would stop reading at once).
        reader, reports = await asyncio.open_unix_connection(sock=channel)
        worker.writer, _ = await loop.create_unix_connection(_Orders, sock=channel.dup())
        worker.exited.add_done_callback(
            lambda _: loop.call_later(_CHANNEL_GRACE, self._hang_up, worker, reader, reports)
        )
        try:
            while (message := await protocol.read_frame(reader)) is not None:
                try:
                    await self._on_message(worker, message)
                except Exception:  # one bad message must not leave the worker unheard
                    log.exception("worker %d: cannot handle %r", worker.pid, message.get("op"))
        except (ProtocolError, ConnectionError) as exc:
            if (worker.stopping or self._closing) and isinstance(exc, ConnectionResetError):
                # Stopped as asked: it exited without reading what was sent to it meanwhile (the skip
                # of the entry it was stopped in), after all it sent had been read.
                log.debug("worker %d: channel reset as it stopped", worker.pid)
            else:
                log.warning("worker %d: broken channel: %s", worker.pid, exc)
            signal_group(worker.pid, signal.SIGKILL)
        worker.writer.close()
        reports.close()
        with contextlib.suppress(ConnectionError):
            await reports.wait_closed()  # the reset, if any, was dealt with above
        status = await worker.exited
        self._on_exit(worker, status)

    @staticmethod
    def _hang_up(worker: WorkerProcess, reader: asyncio.StreamReader, reports: asyncio.StreamWriter) -> None:
        """The worker exited a while ago and its channel is still open: something it forked holds it.
        Close it, so that its exit is dealt with (and its process group killed)."""
        if not reports.transport.is_closing() and not reader.at_eof():
            log.warning("worker %d exited, but a process it forked holds its channel open", worker.pid)
            reports.transport.abort()
            if worker.writer is not None:
                worker.writer.abort()

    async def _on_message(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "done":
            for result in message["results"]:
                self._on_done(worker, result)
            self._make_idle(worker)
            return
        entry = worker.lease.get(parse_task_id(message["id"])) if "id" in message else None
        task = entry[1] if entry is not None else None
        if op == "ready":
            worker.ready = True
            self._respawn_delay = 0.0
            self._make_idle(worker)
        elif op == "progress" and task is not None:
            self._listener.task_progress(task, message.get("progress"), message.get("current_operation"))
        elif op in _REQUESTS and task is not None:
            # Every request gets an answer, whatever goes wrong: the handler waits for it.
            try:
                if op == "submit":
                    reply: dict[str, Any] = {"task_id": self._listener.follow_up(task.id, message["params"])}
                elif op == "submit_many":
                    reply = {"task_ids": self._listener.follow_up_many(task.id, message["tasks"])}
                else:
                    reply = {"cancelled": self._listener.follow_up_cancel(task.id, message["task_ids"])}
            except MsearchError as exc:
                reply = {"error": exc.to_wire()}
            except Exception as exc:  # a bug, a full disk, a locked store
                log.exception("%s: follow-up submit failed", format_task_id(task.id))
                reply = {"error": InternalError(f"cannot submit the follow-up task: {exc}").to_wire()}
            send_order(worker, reply)
        elif op == "skipped":
            if entry is not None and entry[0] == message.get("seq"):
                self._on_skipped(worker, entry[1])
            # Otherwise the entry was reclaimed after an overrun: back in the queue already, and
            # perhaps leased again since, as a new entry this message is not about.
            self._make_idle(worker)
        elif op != "progress" and op not in _REQUESTS:
            log.warning("worker %d: unexpected message %r", worker.pid, op)

    def _on_skipped(self, worker: WorkerProcess, task: Task) -> None:
        """The worker passed `task` in its lease without running it."""
        del worker.lease[task.id]
        if task.id in self._taken_back:
            self._taken_back.discard(task.id)
        elif task.id in self._terminating:  # the stop under way ends it; it did not start
            self._passed.add(task.id)
            report = self._reports.get(task.id)
            if report is not None and not report.done():
                report.set_result(NOT_STARTED)
        else:
            self._listener.tasks_returned([task])  # an entry after a task that was stopped

    def _on_done(self, worker: WorkerProcess, result: dict[str, Any]) -> None:
        entry = worker.lease.pop(result["task"], None)
        if entry is None:
            return
        task = entry[1]
        stop_reason = result.get("stop_reason")
        outcome = Outcome(
            status=_STATUSES[result["status"]],
            error=result.get("error"),
            stop_reason=StopReason(stop_reason) if stop_reason else None,
            started_at=result.get("started"),
            finished_at=result.get("finished"),
            result=result.get("result"),
        )
        waiting = self._reports.pop(task.id, None)
        if waiting is not None:  # a cancel or a stop under way takes the outcome
            if not waiting.done():
                waiting.set_result(outcome)
        else:
            self._listener.task_finished(task, outcome)

    def _make_idle(self, worker: WorkerProcess) -> None:
        if self._closing or worker.stopping or worker.lease or worker in self._idle:
            return
        self._idle.append(worker)
        self._listener.worker_idle()

    def _on_exit(self, worker: WorkerProcess, status: int) -> None:
        worker.proc.returncode = os.waitstatus_to_exitcode(status)  # reaped already: keep Popen from waiting
        self._workers.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        if self._containment is not None:  # (a pool that was never started holds nothing)
            # Whatever the worker left, wherever it went: killed now, and waited for in the background.
            self._containment.kill(worker.pid)
            self._background(self._end_worker(worker.pid))
        how = describe_exit(status)
        at, phase = worker.word.read()
        for seq, task in worker.lease.values():  # what stops under way wait for
            report = self._reports.get(task.id)
            if report is None or report.done():
                continue
            if seq < at or (seq == at and phase is Phase.DONE):
                report.set_result(
                    Outcome(TaskStatus.FAILED, error=f"worker {how} before reporting how this task ended")
                )
            elif seq > at or phase is not Phase.RUNNING:
                report.set_result(NOT_STARTED)
            elif not worker.stopping:  # it died running it, on its own
                report.set_result(Outcome(TaskStatus.FAILED, error=f"worker {how}"))
            # Otherwise a stop ended the worker while it ran the task: that stop says how it ended.
        left = [(seq, task) for seq, task in worker.lease.values() if task.id not in self._reports]
        worker.lease.clear()
        worker.word.close()
        spare_path(self._log_dir, worker.pid).unlink(missing_ok=True)  # the command handler's
        returned: list[Task] = []
        for seq, task in left:
            if task.id in self._taken_back:
                self._taken_back.discard(task.id)
            elif seq < at or (seq == at and phase in (Phase.RUNNING, Phase.DONE)):
                # It ran: its outcome died with the worker (or it was what killed it).
                running = seq == at and phase is Phase.RUNNING
                log.warning(
                    "worker %d %s %s %s",
                    worker.pid,
                    how,
                    "while running" if running else "before reporting the end of",
                    format_task_id(task.id),
                )
                error = f"worker {how}" if running else f"worker {how} before reporting how this task ended"
                self._listener.task_finished(task, Outcome(TaskStatus.FAILED, error=error))
            else:
                returned.append(task)
        if not left and not worker.stopping and not self._closing:
            log.warning("worker %d %s", worker.pid, how)
        if returned:
            self._listener.tasks_returned(returned)
        if self._closing:
            return
        if not worker.ready:
            # It died before it could start: back off so a broken install does not spin.
            self._respawn_delay = min(max(self._respawn_delay * 2, 0.5), 30.0)
            log.error(
                "worker %d %s before it was ready; next start in %.1f s", worker.pid, how, self._respawn_delay
            )
        asyncio.get_running_loop().call_later(self._respawn_delay, self._respawn)

    async def _end_worker(self, pid: int) -> None:
        assert self._containment is not None
        survivors = await self._containment.end_worker(pid, _KILL_TIMEOUT)
        if survivors:
            log.error("processes %s of worker %d outlived SIGKILL", survivors, pid)

    def _respawn(self) -> None:
        if self._closing or len(self._workers) >= self.size:
            return
        try:
            self._spawn()
        except OSError as exc:  # out of memory or processes, for now: try again, later each time
            self._respawn_delay = min(max(self._respawn_delay * 2, 0.5), 30.0)
            log.error("cannot start a worker (%s); next try in %.1f s", exc, self._respawn_delay)
            asyncio.get_running_loop().call_later(self._respawn_delay, self._respawn)

    # --- work ---------------------------------------------------------------------------------------

    def dispatch(
        self, tasks: list[Task], pid: int, log_path: Callable[[int], str], reclaim_after: float | None = None
    ) -> None:
        """Hand `tasks` (a lease: run in this order) to the idle worker `pid`. Those that have not
        started `reclaim_after` seconds later are taken back (see `_reclaim`)."""
        worker = next(w for w in self._idle if w.pid == pid)
        self._idle.remove(worker)
        assert worker.writer is not None
        payloads = []
        for task in tasks:
            worker.sent += 1
            worker.lease[task.id] = (worker.sent, task)
            payloads.append(
                {
                    "id": format_task_id(task.id),
                    "n": task.id,
                    "seq": worker.sent,
                    "type": task.type,
                    "data": task.data,
                    "log_path": log_path(task.id),
                }
            )
        send_order(worker, {"op": "run", "tasks": payloads})
        if reclaim_after is not None and len(tasks) > 1:
            asyncio.get_running_loop().call_later(reclaim_after, self._overrun, worker, worker.sent)

    def _overrun(self, worker: WorkerProcess, last: int) -> None:
        """The lease ending with entry `last` is due: take back what has not started, if anything."""
        if self._closing or worker.stopping or worker not in self._workers:
            return
        at, phase = worker.word.read()
        if phase is Phase.RUNNING:
            self._note_start(worker, at)
        if any(at < seq <= last for seq, _ in worker.lease.values()):
            self._background(self._reclaim(worker, at, last))

    def _note_start(self, worker: WorkerProcess, seq: int) -> None:
        """Entry `seq` runs: make sure its start is on record. Those after the first of a lease were
        claimed without one, and report it with their end: only one that runs long gets here."""
        task = next((task for at, task in worker.lease.values() if at == seq), None)
        if task is not None and task.started_at is None:
            self._listener.task_started(task)

    async def _reclaim(self, worker: WorkerProcess, at: int, last: int) -> None:
        """Put the entries after `at`, up to `last`, back in the queue, where a free worker takes them
        instead of waiting behind the task that overran."""
        tail = [
            seq
            for seq, task in worker.lease.values()
            if at < seq <= last and task.id not in self._terminating
        ]
        where = await self._skip(worker, tail)
        if where is None:
            return  # it died meanwhile: _on_exit has dealt with its lease
        now_at, phase = where
        if phase is Phase.RUNNING:
            self._note_start(worker, now_at)
        returned: list[Task] = []
        for task_id, (seq, task) in list(worker.lease.items()):
            skipped = seq > now_at or (seq == now_at and phase is Phase.SKIPPED)
            mine = task_id not in self._terminating and task_id not in self._taken_back
            if seq in tail and skipped and mine:
                del worker.lease[task_id]
                returned.append(task)
        if returned:
            running = worker.current()
            log.info(
                "worker %d: %s overran its lease; %d task(s) after it go back to the queue",
                worker.pid,
                format_task_id(running.id) if running is not None else "a task",
                len(returned),
            )
            self._listener.tasks_returned(returned)
        self._make_idle(worker)  # what it ran meanwhile may have been the rest of its lease

    def waits_in_lease(self, task_id: int) -> bool:
        """Whether a worker holds this task in its lease and has not reached it yet."""
        worker = self._worker_for(task_id)
        if worker is None or task_id in self._terminating or task_id in self._taken_back:
            return False
        at, _ = worker.word.read()
        return at < worker.lease[task_id][0]

    async def take_back(self, task_id: int) -> bool:
        """Take back a task that waits its turn in a worker's lease: it will not run, and the rest
        of the lease runs on. False if the worker has reached it (it runs: only `terminate` stops
        it), if it went back to the queue meanwhile, or if another stop of it is under way."""
        worker = self._worker_for(task_id)
        if worker is None or not self.waits_in_lease(task_id):
            return False
        seq, task = worker.lease[task_id]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome | None] = loop.create_future()
        self._terminating[task_id] = future
        report: asyncio.Future[Outcome] = loop.create_future()
        self._reports[task_id] = report
        taken = False
        try:
            where = await self._skip(worker, [seq])
            if where is None:  # it died: what it did with the task is in the report
                taken = report.done() and report.result() is NOT_STARTED
            else:
                at, phase = where
                if at > seq and task_id not in self._passed:
                    await asyncio.shield(report)  # it passed the entry: its message says how
                taken = self._not_started(worker, task_id, seq, at, phase)
        finally:
            del self._terminating[task_id]
            self._reports.pop(task_id, None)
            self._passed.discard(task_id)
            if not taken and report.done() and report.result() is not NOT_STARTED:
                self._listener.task_finished(task, report.result())  # it ran: its outcome came here
            future.set_result(NOT_STARTED if taken else None)
        return taken

    def _not_started(
        self, worker: WorkerProcess, task_id: int, seq: int, at: int, phase: Phase | None
    ) -> bool:
        """After a skip of entry `seq`, with the word read at (at, phase): whether the worker passed
        the entry without starting it. If it did and has yet to say so, its `skipped` will find the
        task taken back."""
        passed = task_id in self._passed or at < seq or (at == seq and phase is Phase.SKIPPED)
        if passed and task_id in worker.lease:
            self._taken_back.add(task_id)
        return passed

    async def terminate(self, task_id: int, grace: float) -> Outcome | None:
        """Stop a task of a lease and everything it started; None if no worker has it.

        One that has not started is taken back: it will not run. One that runs gets SIGTERM to the
        worker's process group; after `grace` seconds SIGKILL to the group and to every descendant
        found, wherever it moved. Returns how the task ended: it may have finished on its own first.
        """
        while task_id in self._terminating:  # another stop, or a take-back, is under way
            outcome = await asyncio.shield(self._terminating[task_id])
            if outcome is not None:
                return outcome
        worker = self._worker_for(task_id)
        if worker is None:
            return None
        future: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        self._terminating[task_id] = future
        report = asyncio.get_running_loop().create_future()
        self._reports[task_id] = report
        try:
            outcome = await self._end_entry(worker, task_id, report, grace)
        finally:
            del self._terminating[task_id]
            self._reports.pop(task_id, None)
            self._passed.discard(task_id)
        future.set_result(outcome)
        return outcome

    async def _end_entry(
        self, worker: WorkerProcess, task_id: int, report: asyncio.Future[Outcome], grace: float
    ) -> Outcome:
        seq = worker.lease[task_id][0]
        # Take back this entry and those after it (which go back to the queue when it exits).
        where = await self._skip(worker, [later for later, _ in worker.lease.values() if later >= seq])
        if where is None:  # it died meanwhile, and this task with it unless it had reported
            return (
                report.result()
                if report.done()
                else Outcome(TaskStatus.CANCELLED, stop_reason=StopReason.KILLED)
            )
        at, phase = where
        if self._not_started(worker, task_id, seq, at, phase):
            return NOT_STARTED
        if at == seq and phase is not Phase.DONE and not report.done():
            self._note_start(worker, seq)  # it runs: a crash of the daemon meanwhile interrupted it
            return await self._stop_worker(worker, task_id, grace, report)
        # It ended, or the worker passed it: its outcome, its `skipped` or the worker's exit says how.
        return await asyncio.shield(report)

    async def _skip(self, worker: WorkerProcess, seqs: list[int]) -> tuple[int, Phase | None] | None:
        """Tell the worker to skip the entries `seqs`, then read where it is (None if it died): those
        it had not reached will not run. The order matters, see msearchd.lease."""
        assert worker.writer is not None
        for seq in seqs:
            send_order(worker, {"op": "skip", "seq": seq})
        while worker.writer.get_write_buffer_size() and worker in self._workers:
            await asyncio.sleep(0.001)  # the skips must be in the socket before the word is read
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while worker in self._workers:
            at, phase = worker.word.read()
            if at in seqs and phase is Phase.REACHED and loop.time() < deadline:
                await asyncio.sleep(0.0002)  # deciding between our skip and starting it: microseconds
                continue
            return at, phase
        return None

    async def _stop_worker(
        self, worker: WorkerProcess, task_id: int, grace: float, report: asyncio.Future[Outcome]
    ) -> Outcome:
        assert self._containment is not None
        worker.stopping = True
        log.debug("stopping worker %d running %s", worker.pid, format_task_id(task_id))
        signal_group(worker.pid, signal.SIGTERM)
        killed = False
        try:
            await asyncio.wait_for(asyncio.shield(worker.exited), grace)
        except TimeoutError:
            killed = True
            self._containment.kill(worker.pid)
            try:
                await asyncio.wait_for(asyncio.shield(worker.exited), _KILL_TIMEOUT)
            except TimeoutError:
                log.error("worker %d survived SIGKILL for %.0f s", worker.pid, _KILL_TIMEOUT)
        # Everything it started goes with it: what left its group, its session or its tree too (the
        # worker's exit logs what outlives this).
        await self._containment.end_worker(worker.pid, _KILL_TIMEOUT)
        if report.done():
            return report.result()
        return Outcome(TaskStatus.CANCELLED, stop_reason=StopReason.KILLED if killed else StopReason.SIGTERM)

    async def stop(self, grace: float) -> dict[int, Outcome]:
        """Stop every worker; returns how each task that was running ended. The tasks of leases
        that had not started are returned to the listener."""
        self._closing = True
        self._idle.clear()
        loop = asyncio.get_running_loop()
        stopping: list[tuple[int, Any]] = []
        for worker in list(self._workers):
            if not worker.lease:
                continue
            current = worker.current() or next(iter(worker.lease.values()))[1]
            report = self._reports.get(current.id)
            if report is None:  # a cancel of it under way waits for its report too: they share it
                report = self._reports[current.id] = loop.create_future()
            stopping.append((current.id, self._stop_worker(worker, current.id, grace, report)))
        ids = [task_id for task_id, _ in stopping]
        outcomes = await asyncio.gather(*(stop for _, stop in stopping))
        for task_id in ids:
            self._reports.pop(task_id, None)
        for worker in list(self._workers):
            if worker.writer is not None and not worker.writer.is_closing():
                worker.writer.write_eof()  # an idle worker exits at end of channel
        exits = [w.exited for w in self._workers]
        if exits:
            _, pending = await asyncio.wait(exits, timeout=max(grace, 1.0))
            for worker in self._workers:
                if worker.exited in pending:
                    signal_group(worker.pid, signal.SIGKILL)
            if pending:
                await asyncio.wait(pending, timeout=_KILL_TIMEOUT)
        if self._containment is not None:
            survivors = await self._containment.close(_KILL_TIMEOUT)
            if survivors:
                log.error("processes %s of the workers outlived SIGKILL", survivors)
        for task in list(self._tasks):
            task.cancel()
        return dict(zip(ids, outcomes, strict=True))
