"""The server: accepting clients within the descriptor and connection limits, the method table, and
what a failed write is answered with."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import resource
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from msearchd import protocol
from msearchd.errors import InternalError, InvalidArgument, MsearchError, Unavailable
from msearchd.rpc.connection import Connection
from msearchd.rpc.listener import Listener
from msearchd.service import TaskService
from msearchd.store import disk_full
from msearchd.trust import peer_credentials

log = logging.getLogger("msearchd.rpc")

# Frames larger than READ_BUFFER are read whole when the daemon has room for them: this many bytes for
# all connections together. A connection whose frame does not fit is not read from until others are.
LARGE_FRAMES = 64 * 1024 * 1024
# Clients waiting to be accepted, and how many are accepted in one go.
LISTEN_BACKLOG = 64
# Descriptors kept for the daemon's own work (database, workers, logs, the HTTP shim): connections
# may use what the open-file limit leaves beyond these.
FD_RESERVE_BASE = 64
FD_RESERVE_PER_WORKER = 8
# A full disk is logged once in this many seconds, however many requests it refuses meanwhile.
FULL_DISK_REPORT_INTERVAL = 60.0


def selection_given(task_id: Any, task_ids: list[Any] | None) -> list[Any] | None:
    """The selection given to a method that takes one task (`task_id`) or a selection (`task_ids`);
    None when it was given one task. Refused when given both or neither."""
    if (task_id is None) == (task_ids is None):
        raise InvalidArgument("give task_id (one task) or task_ids (a list), not both and not neither")
    return task_ids


class RpcServer:
    def __init__(
        self,
        service: TaskService,
        path: Path,
        on_shutdown: Callable[[], None],
    ) -> None:
        self.service = service
        self.path = path
        self._on_shutdown = on_shutdown
        self._listener: Listener | None = None
        self._accept_paused = False
        self._accept_failure_reported = -FULL_DISK_REPORT_INTERVAL
        self._setups: set[asyncio.Task[Any]] = set()
        self._large_free = LARGE_FRAMES
        self._large_waiting: deque[Connection] = deque()  # for room for their next frame, in turn
        self._sweeper: asyncio.Task[None] | None = None
        self.connections: set[Connection] = set()
        self.closing: set[Connection] = set()  # closed, their descriptors not yet given back
        self.stopping = False
        settings = service.settings
        self.idle_timeout = settings.idle_timeout
        self.max_connections = settings.max_connections
        self.fd_reserve = FD_RESERVE_BASE + FD_RESERVE_PER_WORKER * settings.workers
        self._full_reported = -FULL_DISK_REPORT_INTERVAL  # monotonic time of the last report
        self._full_refused = 0  # requests refused for a full disk since that report
        self._limit_reported = -FULL_DISK_REPORT_INTERVAL
        svc = service
        # Each returns the result, or an awaitable of it when the answer has to wait for something.
        self.methods: dict[str, Callable[..., Any]] = {
            "submit": svc.submit,
            "submit_many": svc.submit_many,
            "get": svc.get,
            "list": svc.list_tasks,
            "count": svc.count,
            "stats": svc.stats,
            "cancel": self._cancel,
            "cancel_all": svc.cancel_all,
            "cancel_by_type": lambda type, running=False: svc.cancel_by_type(type, running),
            "set_priority": self._set_priority,
            "retry": self._retry,
            "retry_failed": lambda type=None: svc.retry_failed(type),
            "wait": svc.wait,
            "history": svc.history,
            "dependents": svc.dependents,
            "read_log": svc.read_log,
            "status": svc.status,
            "shutdown": self._shutdown,
            "cancel_selected": svc.cancel_selected,
            "set_priority_selected": svc.set_priority_selected,
            "retry_selected": svc.retry_selected,
            "pause": svc.pause,
            "resume": svc.resume,
            "drain": svc.drain,
            "queue": svc.queue_state,
        }

    # The methods that take one task or a selection (see `selection_given`) answer in kind. Each is spelled
    # out: every control write comes through here, and one wrapper for all three, passing `**params`
    # on, cost about 0.7% of a `set_priority`'s instructions.

    def _cancel(self, task_id: Any = None, task_ids: list[Any] | None = None, running: bool = False) -> Any:
        ids = selection_given(task_id, task_ids)
        if ids is None:
            return self.service.cancel(task_id, running)
        return self.service.cancel_each(ids, running)

    def _set_priority(self, task_id: Any = None, task_ids: list[Any] | None = None, priority: int = 0) -> Any:
        # `priority` is required (`protocol.check_params`): the default is never used
        ids = selection_given(task_id, task_ids)
        if ids is None:
            return self.service.set_priority(task_id, priority)
        return self.service.set_priority_each(ids, priority)

    def _retry(self, task_id: Any = None, task_ids: list[Any] | None = None) -> Any:
        ids = selection_given(task_id, task_ids)
        if ids is None:
            return self.service.retry(task_id)
        return self.service.retry_each(ids)

    def _shutdown(self) -> dict[str, Any]:
        asyncio.get_running_loop().call_soon(self._on_shutdown)
        return {"stopping": True}

    async def start(self, listener: Listener) -> None:
        listener.sock.listen(LISTEN_BACKLOG)
        listener.sock.setblocking(False)
        self._listener = listener
        loop = asyncio.get_running_loop()
        loop.add_reader(listener.sock.fileno(), self._accept)
        if self.idle_timeout > 0:
            self._sweeper = loop.create_task(self._close_idle())

    def stop_accepting(self) -> None:
        """Take no new connections, and answer new requests on open ones with `unavailable`."""
        self.stopping = True
        if self._listener is not None and self._listener.sock.fileno() != -1:
            asyncio.get_running_loop().remove_reader(self._listener.sock.fileno())
            self._listener.sock.close()  # released (its path removed, its lock let go) by close()

    async def close(self) -> None:
        self.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._listener is not None:
            self._listener.release()
        pending = [t for conn in list(self.connections) for t in conn.close()]
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    def _accept(self) -> None:
        """Take the clients waiting, one at a time. At the connection limit, the connection idle
        longest is closed to make room (and no other client accepted until its descriptor is given
        back); if none is idle, the client is refused. Clients never take the descriptors kept for
        the daemon's own work."""
        loop = asyncio.get_running_loop()
        for _ in range(LISTEN_BACKLOG):
            if self._listener is None or self.stopping:
                return
            if self.closing and len(self.connections) + len(self.closing) >= self.connection_limit():
                self._pause_accepting()  # until those descriptors are given back
                return
            try:
                sock, _ = self._listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors all the same (the limit was lowered, say)
                self._report_accept_failure(exc)
                self._pause_accepting()
                return
            try:
                pid, uid = peer_credentials(sock)
            except OSError:
                sock.close()
                continue
            if uid != os.getuid():
                log.warning("refused a connection from uid %d (pid %d)", uid, pid)
                sock.close()
                continue
            limit = self.connection_limit()
            full = len(self.connections) + len(self.closing) >= limit
            if full:
                idle = [c for c in self.connections if c.idle()]
                if not idle:
                    self._refuse(sock, limit)
                    continue
                self._report_limit(limit, "closing the longest idle ones to make room")
                min(idle, key=lambda c: c.last_active).close()
            conn = Connection(self, (uid, pid))
            self.connections.add(conn)
            # A default binds this connection: mypy cannot type such a lambda (python/mypy#15459).
            setup = loop.create_task(loop.connect_accepted_socket(lambda conn=conn: conn, sock))  # type: ignore[misc]
            self._setups.add(setup)
            setup.add_done_callback(functools.partial(self._set_up, conn=conn, sock=sock))
            if full:
                self._pause_accepting()
                return

    def _refuse(self, sock: socket.socket, limit: int) -> None:
        self._report_limit(limit, "refusing new ones: none is idle")
        refusal = Unavailable(
            f"msearchd already serves {limit} connections, its limit; close some, or raise "
            "max_connections or its open-file limit"
        )
        with contextlib.suppress(OSError):
            sock.send(protocol.encode({"id": None, "error": refusal.to_wire()}))
        sock.close()

    def _set_up(self, task: asyncio.Task[Any], conn: Connection, sock: socket.socket) -> None:
        self._setups.discard(task)
        if task.cancelled() or task.exception() is not None:
            self.connections.discard(conn)
            self.closing.discard(conn)
            sock.close()
            self.resume_accepting()

    def _report_accept_failure(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._accept_failure_reported >= FULL_DISK_REPORT_INTERVAL:
            self._accept_failure_reported = now
            log.warning("cannot accept a connection (%s); trying again when one closes", exc.strerror or exc)

    def _pause_accepting(self) -> None:
        """Accept nothing until a connection closes (or a second passes)."""
        if self._listener is not None and not self._accept_paused and not self.stopping:
            self._accept_paused = True
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._listener.sock.fileno())
            loop.call_later(1.0, self.resume_accepting)

    def resume_accepting(self) -> None:
        if self._accept_paused and self._listener is not None and not self.stopping:
            self._accept_paused = False
            asyncio.get_running_loop().add_reader(self._listener.sock.fileno(), self._accept)

    # --- limits -------------------------------------------------------------------------------------

    def connection_limit(self) -> int:
        """How many clients may be connected: the setting, or fewer if the open-file limit (read
        each time: it may be changed while the daemon runs) leaves less beside the reserve."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, soft - self.fd_reserve))

    def reserve_large(self, conn: Connection, size: int) -> bool:
        """Room for a frame of `size` bytes (over READ_BUFFER) of `conn`; False puts it in line."""
        first = bool(self._large_waiting) and self._large_waiting[0] is conn
        if (first or not self._large_waiting) and size <= self._large_free:
            if first:
                self._large_waiting.popleft()
            self._large_free -= size
            return True
        if not first and conn not in self._large_waiting:
            self._large_waiting.append(conn)
        return False

    def release_large(self, size: int) -> None:
        """Give back room a frame had; the connections in line take it in turn."""
        self._large_free += size
        while self._large_waiting:
            conn = self._large_waiting[0]
            if conn.closed:
                self._large_waiting.popleft()
                continue
            conn.update_reading()  # takes its room, and leaves the line, if there is enough
            if self._large_waiting and self._large_waiting[0] is conn:
                break

    def forget_large(self, conn: Connection) -> None:
        with contextlib.suppress(ValueError):
            self._large_waiting.remove(conn)

    def _report_limit(self, limit: int, action: str) -> None:
        now = time.monotonic()
        if now - self._limit_reported >= FULL_DISK_REPORT_INTERVAL:
            self._limit_reported = now
            log.warning("%d connections, the limit: %s", limit, action)

    async def _close_idle(self) -> None:
        """Close the connections that have had nothing under way for idle_timeout seconds."""
        interval = min(max(self.idle_timeout / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for conn in list(self.connections):
                if not conn.busy() and now - conn.last_active >= self.idle_timeout:
                    log.debug("closing a connection idle for %.0f s", now - conn.last_active)
                    conn.close()

    def write_failure(self, exc: Exception, what: str) -> MsearchError:
        """The answer for requests whose changes could not be saved; logged once a while, not per
        request, since a full disk refuses every write until there is room."""
        if not disk_full(exc):
            log.exception("%s failed", what)
            return InternalError(f"internal error in {what}: {exc}")
        folder = self.service.settings.state_dir
        self._full_refused += 1
        now = time.monotonic()
        if now - self._full_reported >= FULL_DISK_REPORT_INTERVAL:
            since = f" ({self._full_refused} since the last report)" if self._full_refused > 1 else ""
            log.error(
                "the disk holding %s is full (%s): requests that change something are refused until "
                "there is room%s",
                folder,
                exc,
                since,
            )
            self._full_reported, self._full_refused = now, 0
        return Unavailable(f"the disk holding {folder} is full: {exc}; nothing of this request was saved")
