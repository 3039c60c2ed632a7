"""What runs inside a worker process: receive a task, run its handler, report back.

The daemon starts each worker in its own session (process group) and talks to it over a socket pair
with the RPC's framing. Cancellation arrives as SIGTERM to the whole group: a handler that checks
`ctx.cancelled` is left to finish by itself; any other is interrupted with `TaskCancelled`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import sys
import time
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from msearchd import heap, protocol
from msearchd.handlers import Handler, HandlerNotFound, TaskCancelled, TaskFailed, registered, resolve
from msearchd.lease import REPORT_DELAY, LeaseWord, Phase
from msearchd.prctl import become_subreaper, die_with_parent
from msearchd.spawn import TASK_ENV

# The most a task's result may take, as JSON: it is stored with the task and sent with every read of it.
RESULT_MAX_BYTES = 8192


class Context:
    """The `ctx` a handler receives; see `msearchd.handlers.TaskContext`."""

    def __init__(self, worker: Worker, task_id: str, log_path: str) -> None:
        self._worker = worker
        self.task_id = task_id
        self.log_path = log_path
        self.cancel_requested = False
        self.checks_cancel = False
        # While a frame is being written, an interrupt would leave half a frame on the channel.
        self.sending = False
        self.interrupt_deferred = False

    def _send(self, message: dict[str, Any], *, reply: bool = False) -> dict[str, Any] | None:
        self.sending = True
        try:
            self._worker.send({**message, "id": self.task_id})
            answer = self._worker.read_reply() if reply else None
        finally:
            self.sending = False
        self.raise_deferred()
        return answer

    def raise_deferred(self) -> None:
        if self.interrupt_deferred:
            self.interrupt_deferred = False
            raise TaskCancelled("sigterm")  # the interrupt held back while a frame was written

    @property
    def cancelled(self) -> bool:
        self.checks_cancel = True
        return self.cancel_requested

    def progress(self, fraction: float, current_operation: str | None = None) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        message: dict[str, Any] = {"op": "progress", "progress": fraction}
        if current_operation is not None:
            message["current_operation"] = str(current_operation)[:500]
        self._send(message)

    def set_operation(self, current_operation: str) -> None:
        self._send({"op": "progress", "current_operation": str(current_operation)[:500]})

    def submit(
        self,
        task_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        priority: int | None = None,
        depends_on: Sequence[str] | None = None,
    ) -> str:
        params = {
            "type": task_type,
            "data": dict(data or {}),
            "priority": priority,
            "depends_on": list(depends_on or []),
        }
        reply = self._send({"op": "submit", "params": params}, reply=True)
        if reply is None:
            raise TaskFailed("daemon went away while submitting a follow-up task")
        if "error" in reply:
            raise TaskFailed(f"follow-up {task_type} task refused: {reply['error']['message']}")
        return str(reply["task_id"])

    def submit_many(self, tasks: Sequence[Mapping[str, Any]]) -> list[str]:
        reply = self._send({"op": "submit_many", "tasks": [dict(t) for t in tasks]}, reply=True)
        if reply is None:
            raise TaskFailed("daemon went away while submitting follow-up tasks")
        if "error" in reply:
            raise TaskFailed(f"follow-up tasks refused: {reply['error']['message']}")
        return [str(t) for t in reply["task_ids"]]

    def cancel_waiting(self, task_ids: Sequence[str]) -> list[str]:
        reply = self._send({"op": "cancel", "task_ids": [str(t) for t in task_ids]}, reply=True)
        if reply is None:
            raise TaskFailed("daemon went away while cancelling tasks")
        if "error" in reply:
            raise TaskFailed(f"cannot cancel tasks: {reply['error']['message']}")
        return [str(t) for t in reply["cancelled"]]

    def handles(self, task_type: str) -> bool:
        return registered(task_type, self._worker.handlers)


def task_result(value: Any) -> Any:
    """What a handler returned, as the task's result: a JSON value, small enough to travel with the task.

    Anything else fails the task rather than being stored in a form no client could read back.
    """
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TaskFailed(f"the handler returned a result with no JSON form: {exc}") from None
    if len(text.encode()) > RESULT_MAX_BYTES:
        raise TaskFailed(
            f"the handler returned a result of {len(text.encode())} bytes as JSON; "
            f"at most {RESULT_MAX_BYTES} are kept"
        )
    return json.loads(text)  # tuples become lists, keys strings: what a client will read back


class Worker:
    """Runs the tasks of its lease in order, reporting each as it ends; see `msearchd.lease`."""

    def __init__(
        self, channel: socket.socket, word: LeaseWord, handlers: Mapping[str, str], state_dir: str
    ) -> None:
        self.channel = channel
        self.reader = protocol.FrameReader(channel)
        self.word = word
        self.handlers = handlers
        self.state_dir = state_dir
        self.ctx: Context | None = None
        self._handlers: dict[str, Handler] = {}
        self._lease: deque[dict[str, Any]] = deque()
        self._skips: set[int] = set()
        self._held: list[dict[str, Any]] = []  # messages read while waiting for a reply
        # Outcomes not yet reported: those of a lease go in one message, when the lease is done or
        # REPORT_DELAY after the first of them at the latest.
        self._outbox: list[dict[str, Any]] = []
        self.sending = False  # a frame is being written: a signal handler must not write another
        self._flush_due = False
        self._exit_due = False
        self.adopts_orphans = False  # a child subreaper: see reap_adopted

    def handler_for(self, task_type: str) -> Handler:
        """Resolve a type's handler once per worker: looking up entry points costs about a millisecond."""
        handler = self._handlers.get(task_type)
        if handler is None:
            handler = self._handlers[task_type] = resolve(task_type, self.handlers)
        return handler

    def on_sigterm(self, _signum: int, _frame: FrameType | None) -> None:
        if self.sending:
            self._flush_due = True
        else:
            self.flush()  # what ended is reported, even if SIGKILL follows
        ctx = self.ctx
        if ctx is None:
            if self.sending:
                self._exit_due = True
                return
            sys.exit(0)  # between tasks: nothing to finish; the daemon hands the rest out again
        if ctx.cancel_requested:
            return
        ctx.cancel_requested = True
        if ctx.checks_cancel:
            return
        if ctx.sending or self.sending:
            ctx.interrupt_deferred = True
            return
        raise TaskCancelled("sigterm")

    def on_sigalrm(self, _signum: int, _frame: FrameType | None) -> None:
        """REPORT_DELAY passed since an outcome waits: report it, whatever the task does now."""
        if self.sending:
            self._flush_due = True
        else:
            self.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.flush()  # outcomes first, in the order things happened
        self._write(protocol.encode(message))

    def flush(self) -> None:
        # The list is only ever changed in place: SIGALRM may run this while the main flow is about
        # to append to it, holding the list already. A report sent twice is ignored; one appended to
        # a list no longer in use would be lost. Once the reports are taken out of the list, `sending`
        # keeps a SIGTERM from ending the worker before they are written.
        if self._outbox:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.sending = True
            results = self._outbox.copy()
            self._outbox.clear()
            if results:  # a signal handler may have sent them just before `sending` was set
                self._write(protocol.encode({"op": "done", "results": results}))
            else:
                self.sending = False

    def _write(self, data: bytes) -> None:
        self.sending = True
        try:
            self.channel.sendall(data)
        finally:
            self.sending = False
        if self._flush_due:
            self._flush_due = False
            self.flush()
        if self._exit_due:
            sys.exit(0)
        if self.ctx is not None and not self.ctx.sending:
            self.ctx.raise_deferred()

    def read_reply(self) -> dict[str, Any] | None:
        """The daemon's answer to a request of a handler; orders met on the way are kept for later."""
        while (message := self.reader.read()) is not None and "op" in message:
            self._held.append(message)
        return message

    def _take_orders(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            op = message.get("op")
            if op == "run":
                self._lease.extend(message["tasks"])
            elif op == "skip":
                self._skips.add(message["seq"])

    def run_task(self, task: dict[str, Any]) -> bool:
        """Run one task and report how it ended; False when the worker must exit afterwards."""
        task_id = task["id"]
        log_path = task["log_path"]
        os.environ[TASK_ENV] = task_id
        self.ctx = ctx = Context(self, task_id, log_path)
        started = time.time()
        outcome: dict[str, Any]
        try:
            try:
                handler = self.handler_for(task["type"])
                returned = handler(ctx, task["data"])
            finally:
                # From here on a SIGTERM must not interrupt the reporting.
                ctx.checks_cancel = True
            if ctx.cancel_requested:
                raise TaskCancelled("cooperative")
            outcome = {"status": "completed"}
            if returned is not None:
                outcome["result"] = task_result(returned)
        except TaskCancelled as exc:
            outcome = {"status": "cancelled", "stop_reason": exc.stop_reason}
        except (TaskFailed, HandlerNotFound) as exc:
            outcome = {"status": "failed", "error": str(exc)}
        except Exception as exc:
            self._log_traceback(log_path)
            outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        # Whether it left a log is looked at here, once: the daemon's answers about the task then
        # need no look at the disk.
        outcome["logged"] = os.path.exists(log_path)  # noqa: PTH110 - a str, as the handlers have it
        # Reported before the word says DONE, and before a SIGTERM can find no task and end the
        # worker: its flush sends this outcome.
        self._outbox.append({"task": task["n"], "started": started, "finished": time.time(), **outcome})
        self.word.write(task["seq"], Phase.DONE)
        self.ctx = None
        if not self._lease or ctx.cancel_requested:
            self.flush()
        elif len(self._outbox) == 1:
            signal.setitimer(signal.ITIMER_REAL, REPORT_DELAY)  # on_sigalrm reports it by then
        return not ctx.cancel_requested

    @staticmethod
    def _log_traceback(log_path: str) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            with open(os.open(log_path, flags, 0o600), "a") as log:  # never through a planted link
                if stat.S_ISREG(os.fstat(log.fileno()).st_mode):
                    traceback.print_exc(file=log)
        except OSError:
            pass

    def serve(self) -> None:
        self.send({"op": "ready", "pid": os.getpid()})
        while True:
            if self._held:
                held, self._held = self._held, []
                self._take_orders(held)
            if not self._lease:
                message = self.reader.read()
                if message is None:
                    return  # the daemon closed the channel: stop
                self._take_orders([message])
                continue
            task = self._lease.popleft()
            seq = task["seq"]
            self.word.write(seq, Phase.REACHED)
            self._take_orders(self.reader.read_ready())  # after REACHED: see msearchd.lease
            if seq in self._skips:
                self._skips.discard(seq)
                self.word.write(seq, Phase.SKIPPED)
                self.send({"op": "skipped", "id": task["id"], "seq": seq})
                continue
            self.word.write(seq, Phase.RUNNING)
            if not self.run_task(task):
                return
            if self.adopts_orphans:
                reap_adopted()


def reap_adopted() -> None:
    """Reap what the tasks' processes orphaned and this worker adopted, once it exited. Only between
    tasks (after each, and on SIGCHLD while idle): while one runs, its handler may be waiting for a
    child of its own."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    fd, word_fd, parent_pid = int(argv[0]), int(argv[1]), int(argv[2])
    config = json.loads(argv[3])
    if not die_with_parent(parent_pid):  # so that no worker outlives a kill -9 of the daemon
        return
    os.set_inheritable(fd, False)  # what tasks start must not get the daemon's channel
    heap.keep_heap_top()
    channel = socket.socket(fileno=fd)
    os.environ["MSEARCH_STATE_DIR"] = config["state_dir"]
    worker = Worker(channel, LeaseWord.attach(word_fd), config["handlers"], config["state_dir"])
    # Without a cgroup, what a task orphans stays in this worker's tree, where the daemon finds it.
    worker.adopts_orphans = config["subreaper"] and become_subreaper()
    if worker.adopts_orphans:

        def reap_while_idle(_signum: int, _frame: FrameType | None) -> None:
            if worker.ctx is None:
                reap_adopted()

        signal.signal(signal.SIGCHLD, reap_while_idle)
    signal.signal(signal.SIGTERM, worker.on_sigterm)
    signal.signal(signal.SIGALRM, worker.on_sigalrm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the daemon went away: stop
        worker.serve()


if __name__ == "__main__":
    main()
