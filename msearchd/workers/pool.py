"""The pool: workers spawned and respawned, leases handed out, and what a worker's exit means for
the tasks it held."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable

from msearchd.containment import Containment
from msearchd.handlers.command import clear_spares, spare_path
from msearchd.lease import LeaseWord, Phase
from msearchd.model import Task, TaskStatus, format_task_id
from msearchd.spawn import WORKER_MARK, child_environ, child_folder, python_argv
from msearchd.workers.channel import Channels, send_order
from msearchd.workers.core import WorkerProcess
from msearchd.workers.outcome import NOT_STARTED, Outcome
from msearchd.workers.processes import KILL_TIMEOUT, describe_exit, signal_group
from msearchd.workers.stopping import Stopping

log = logging.getLogger("msearchd.workers")


class WorkerPool(Channels, Stopping):
    """Workers that run the tasks handed to them, one lease at a time."""

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        clear_spares(self._log_dir)
        self._containment = Containment(self._state_dir, self._use_cgroups, self._reaper.watches)
        for _ in range(self.size):
            self._spawn()

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
        survivors = await self._containment.end_worker(pid, KILL_TIMEOUT)
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
        """Hand `tasks` (a lease: run in this order) to worker `pid`: an idle one, or one at work,
        which runs them after the rest of its lease. Those that have not started `reclaim_after`
        seconds later are taken back (see `_reclaim`)."""
        worker = next(w for w in self._workers if w.pid == pid)
        idle = worker in self._idle
        if idle:
            self._idle.remove(worker)
            worker.entered = (worker.sent + 1, time.time())
        else:
            worker.topped_up_at = worker.word.read()[0]
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
        # What waits behind another task is taken back if that one runs far longer than expected: a
        # lease's tasks after its first, and all of a worker's at work.
        if reclaim_after is not None and (len(tasks) > 1 or not idle):
            check = asyncio.get_running_loop().call_later(reclaim_after, self._overrun, worker, worker.sent)
            if len(tasks) == 1:
                # Claimed with its start on record: once the worker reaches it, nothing is left to
                # check, and the timer is cancelled (a wake-up of the daemon a task, for 25 ms tasks).
                worker.overrun_checks[worker.sent] = check
