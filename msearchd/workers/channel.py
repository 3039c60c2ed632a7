"""Each worker's channel: orders to it, and what it reports (outcomes, progress, follow-ups)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from msearchd import protocol
from msearchd.errors import InternalError, MsearchError, ProtocolError
from msearchd.model import StopReason, Task, TaskStatus, format_task_id, parse_task_id
from msearchd.workers.core import PoolCore, WorkerProcess
from msearchd.workers.outcome import NOT_STARTED, Outcome
from msearchd.workers.processes import signal_group

log = logging.getLogger("msearchd.workers")

# How a worker's report names a status; looked up once per finished task.
_STATUSES = {str(s): s for s in TaskStatus}
# A worker that exited while something it forked keeps its channel open (a handler that forks without
# exec) is no longer heard from: its channel is closed from this side after this long.
_CHANNEL_GRACE = 1.0


# What a handler asks of the daemon, and waits for an answer to.
_REQUESTS = ("submit", "submit_many", "cancel")


class _Orders(asyncio.Protocol):
    """The writing side of a worker's channel; what the worker sends is read on another descriptor."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()  # before the loop starts reading: this side never reads

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("worker channel: cannot send any more: %s", exc)


class _Reports(asyncio.Protocol):
    """The reading side of a worker's channel: each report is handled as soon as it is read, in the
    loop's turn that read it (an outcome is recorded, and its waiter answered, a turn sooner)."""

    def __init__(self, handle: Callable[[dict[str, Any]], None]) -> None:
        self._handle = handle
        self._frames = protocol.FrameBuffer()
        self.transport: asyncio.Transport | None = None
        # The end of the channel: None when the worker closed it cleanly, else what broke it.
        self.ended: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._frames.feed(data)
        while not self.ended.done():
            try:
                message = self._frames.next()
            except ProtocolError as exc:
                self._end(exc)
                return
            if message is None:
                return
            self._handle(message)

    def eof_received(self) -> bool | None:
        if self._frames.pending():
            self._end(ProtocolError("connection closed inside a frame"))
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc)

    def _end(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(exc)
        if exc is not None and self.transport is not None:
            self.transport.abort()

    def at_eof(self) -> bool:
        return self.ended.done()


def send_order(worker: WorkerProcess, message: dict[str, Any]) -> None:
    """Send `message` to `worker`, unless it can no longer be heard: it exited, and its exit says
    what became of its lease."""
    if worker.writer is not None and not worker.writer.is_closing():
        worker.writer.write(protocol.encode(message))


class Channels(PoolCore):
    """The channel side of `WorkerPool`."""

    if TYPE_CHECKING:

        def _on_exit(self, worker: WorkerProcess, status: int) -> None: ...

    async def _serve(self, worker: WorkerProcess, channel: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        # Two descriptors of the channel: one to read, one to write. A write that fails because the
        # worker has exited (a skip sent as it stopped) closes only its own, so that every report the
        # worker sent before it exited is still read (one transport would stop reading at once).
        # The writing side first: a report read is handled at once, and may send an order.
        worker.writer, _ = await loop.create_unix_connection(_Orders, sock=channel.dup())
        reports = _Reports(lambda message: self._on_report(worker, message))
        await loop.create_unix_connection(lambda: reports, sock=channel)
        worker.exited.add_done_callback(
            lambda _: loop.call_later(_CHANNEL_GRACE, self._hang_up, worker, reports)
        )
        exc = await reports.ended
        if exc is not None:
            if (worker.stopping or self._closing) and isinstance(exc, ConnectionResetError):
                # Stopped as asked: it exited without reading what was sent to it meanwhile (the skip
                # of the entry it was stopped in), after all it sent had been read.
                log.debug("worker %d: channel reset as it stopped", worker.pid)
            else:
                log.warning("worker %d: broken channel: %s", worker.pid, exc)
            signal_group(worker.pid, signal.SIGKILL)
        worker.writer.close()
        assert reports.transport is not None
        reports.transport.close()
        status = await worker.exited
        self._on_exit(worker, status)

    @staticmethod
    def _hang_up(worker: WorkerProcess, reports: _Reports) -> None:
        """The worker exited a while ago and its channel is still open: something it forked holds it.
        Close it, so that its exit is dealt with (and its process group killed)."""
        if reports.transport is not None and not reports.transport.is_closing() and not reports.at_eof():
            log.warning("worker %d exited, but a process it forked holds its channel open", worker.pid)
            reports.transport.abort()
            if worker.writer is not None:
                worker.writer.abort()

    def _on_report(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        try:
            self._on_message(worker, message)
        except Exception:  # one bad message must not leave the worker unheard
            log.exception("worker %d: cannot handle %r", worker.pid, message.get("op"))

    def _on_message(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
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
        seq, task = entry
        if result.get("finished") is not None:
            worker.entered = (seq + 1, result["finished"])  # it went on to the next entry, if any
        check = worker.overrun_checks.pop(seq + 1, None)
        if check is not None:  # that entry was reached: it waits behind nothing any more
            check.cancel()
        stop_reason = result.get("stop_reason")
        outcome = Outcome(
            status=_STATUSES[result["status"]],
            error=result.get("error"),
            stop_reason=StopReason(stop_reason) if stop_reason else None,
            started_at=result.get("started"),
            finished_at=result.get("finished"),
            result=result.get("result"),
            logged=result.get("logged"),
        )
        waiting = self._reports.pop(task.id, None)
        if waiting is not None:  # a cancel or a stop under way takes the outcome
            if not waiting.done():
                waiting.set_result(outcome)
        else:
            self._listener.task_finished(task, outcome)
