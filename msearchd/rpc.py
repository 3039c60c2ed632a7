"""The asyncio Unix-socket server: decode a request, call the service, encode the answer.

Requests are handled as their bytes arrive, without a task per request: most answers are ready at
once. Requests that arrive together (a client that pipelines) are run in one group commit and
answered together after it; an answer is only ever sent once what it reports is durable.

Connections take turns: one serves its requests for at most TURN_SECONDS, commits and answers, then
lets the others have theirs, so that a client pipelining slow requests holds nobody else up. What a
connection may make the daemon hold for it is bounded (bytes read, calls under way, connections in
all, descriptors), and it is not read from while it is at a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import logging
import os
import resource
import socket
import stat
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from msearchd import protocol
from msearchd.config import socket_lock_path
from msearchd.errors import InternalError, InvalidArgument, MsearchError, ProtocolError, Unavailable
from msearchd.service import REQUESTER, Subscription, TaskService
from msearchd.store import disk_full
from msearchd.trust import folder_problem, peer_credentials

log = logging.getLogger("msearchd.rpc")

# Answers queue up to this many bytes on a connection before its handler waits for the client to read.
WRITE_BUFFER = 256 * 1024
# Bytes of requests a connection may have sent that are not answered yet: beyond, it is not read from
# until some are answered. A frame larger than this is still read whole (up to protocol.MAX_FRAME).
READ_BUFFER = 256 * 1024
# Frames larger than READ_BUFFER are read whole when the daemon has room for them: this many bytes for
# all connections together. A connection whose frame does not fit is not read from until others are.
LARGE_FRAMES = 64 * 1024 * 1024
# Calls of one connection that may be under way at once (waits, mostly); beyond, its next requests
# are read once some of these are answered.
MAX_PENDING = 1000
# How long one connection is served before the others get their turn.
TURN_SECONDS = 0.01
# Clients waiting to be accepted, and how many are accepted in one go.
LISTEN_BACKLOG = 64
# Descriptors kept for the daemon's own work (database, workers, logs, the HTTP shim): connections
# may use what the open-file limit leaves beyond these.
FD_RESERVE_BASE = 64
FD_RESERVE_PER_WORKER = 8
# A full disk is logged once in this many seconds, however many requests it refuses meanwhile.
FULL_DISK_REPORT_INTERVAL = 60.0


class SocketRefused(Exception):
    """A reason not to listen on the socket path, in one sentence."""


def prepare_socket_dir(path: Path) -> None:
    """Create the socket's folder private to this user; refuse one that another user owns or can write.

    Such a user could put a socket of theirs in its place and be sent every request. An existing folder
    is never chmod-ed: one that others may enter but not write (0755) is only logged.
    """
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)  # mkdir's mode is filtered by the umask
    problem = folder_problem(folder, "socket folder")
    if problem is not None:
        raise SocketRefused(problem)
    if folder.stat().st_mode & 0o077:
        log.warning("socket folder %s is open to other users; the socket itself is 0600", folder)


class Listener:
    """The socket path, claimed: a lock beside it, held for the daemon's life, and the socket bound.

    The lock makes "is a daemon there already?" and the bind one step, so that of two daemons started
    together only one listens. The socket's inode tells ours from one put in its place later, which
    stopping must leave alone.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        prepare_socket_dir(path)
        self._lock: int | None = _lock_beside(path)
        try:
            _clear_stale_socket(path)
            self.sock = _bind(path)
        except BaseException:
            os.close(self._lock)
            raise
        bound = path.lstat()
        self._identity: tuple[int, int] | None = (bound.st_dev, bound.st_ino)

    @classmethod
    def adopt(cls, sock: socket.socket) -> Listener:
        """A listening socket a service manager made and handed over (socket activation): the manager
        owns its path and keeps it for the next start, so it is neither locked nor removed here."""
        listener = cls.__new__(cls)
        listener.path = Path(sock.getsockname())
        listener.sock = sock
        listener._lock = listener._identity = None
        return listener

    def release(self) -> None:
        """Remove the socket if it is still ours, then unlock. The lock file stays: were it removed, two
        daemons could each lock a file of that name, the removed one and a new one."""
        if self._identity is not None:
            with contextlib.suppress(FileNotFoundError):
                now = self.path.lstat()
                if (now.st_dev, now.st_ino) == self._identity:
                    self.path.unlink()
        self.sock.close()
        if self._lock is not None:
            os.close(self._lock)


def _lock_beside(path: Path) -> int:
    fd = os.open(socket_lock_path(path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise SocketRefused(f"another msearchd (pid {holder}) is starting or listening on {path}") from None
    except BaseException:
        os.close(fd)
        raise
    os.fchmod(fd, 0o600)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket that a daemon which did not stop cleanly left; refuse anything else."""
    try:
        found = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise SocketRefused(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(5.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # nobody listens: left by a daemon that was killed
        return
    except TimeoutError:
        pass  # its backlog is full: someone listens
    finally:
        probe.close()
    raise SocketRefused(f"another msearchd is already listening on {path}")


def _bind(path: Path) -> socket.socket:
    """Bind without replacing anything at `path` (asyncio's own bind would remove a socket there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    return sock


def one_or_many(single: Callable[..., Any], many: Callable[..., Any]) -> Callable[..., Any]:
    """A method that takes one task (`task_id`) or a selection (`task_ids`) and answers in kind."""

    def call(task_id: Any = None, task_ids: list[Any] | None = None, **params: Any) -> Any:
        if (task_id is None) == (task_ids is None):
            raise InvalidArgument("give task_id (one task) or task_ids (a list), not both and not neither")
        return single(task_id, **params) if task_ids is None else many(task_ids, **params)

    return call


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
            "cancel": one_or_many(svc.cancel, svc.cancel_each),
            "cancel_all": svc.cancel_all,
            "cancel_by_type": lambda type, running=False: svc.cancel_by_type(type, running),
            "set_priority": one_or_many(svc.set_priority, svc.set_priority_each),
            "retry": one_or_many(svc.retry, svc.retry_each),
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
            setup = loop.create_task(loop.connect_accepted_socket(lambda conn=conn: conn, sock))
            self._setups.add(setup)
            setup.add_done_callback(lambda task, conn=conn, sock=sock: self._set_up(task, conn, sock))
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


# Submits pipelined one after another are written together, this many at most.
SUBMIT_RUN = 1000

# Methods whose pending answer is only a wait: the requests behind it do not wait for it, and it is
# dropped when the client goes away. Any other holds back the requests behind it and runs to its end
# (a cancel under way finishes its work), its answer unsent if the client went away.
_ABANDONABLE = frozenset({"wait", "drain"})  # a drain has paused the queue before it waits

# An answer: the request's id (None if it had none usable), whether it reports a success (whose
# effect a failed commit undoes), and its frame.
_Answer = tuple[Any, bool, bytes]
# A call whose answer comes later: its id, method, and the awaitable of its result.
_Later = tuple[int, str, Any]


class Connection(asyncio.Protocol):
    """One client. Its requests take effect in order; see the protocol module for the answers'."""

    def __init__(self, server: RpcServer, requester: tuple[int, int]) -> None:
        self._server = server
        self._frames = protocol.FrameBuffer()
        self._transport: asyncio.Transport | None = None
        self._requester = requester  # (uid, pid)
        self._greeted = False
        self._closed = False
        self._pending: dict[int, asyncio.Task[None] | None] = {}  # answered later, by id; None: not started
        self._holding: int | None = None  # id of the call whose effect the requests behind it wait for
        self._subscription: Subscription | None = None  # set once the connection carries events
        self._stream: asyncio.Task[None] | None = None
        self._next: dict[str, Any] | None = None  # a request read ahead, not yet answered
        self._bad_frame: ProtocolError | None = None  # met while reading ahead
        self._turn: asyncio.Handle | None = None  # this connection's next turn, when one is due
        self._large: tuple[int, int] | None = None  # (frame number, size) of a large frame given room
        self._writable = asyncio.Event()
        self._writable.set()
        self.last_active = time.monotonic()

    # --- transport callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER)
        if self._closed:  # closed before it was set up (the daemon is stopping, or made room)
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)
        self._server.closing.discard(self)
        self._server.forget_large(self)
        self._release_large()
        self._server.resume_accepting()
        self._writable.set()
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        if self._stream is not None:
            self._stream.cancel()
        for req_id, task in list(self._pending.items()):
            if task is not None and req_id != self._holding:
                task.cancel()  # a wait: nobody is left to answer

    def pause_writing(self) -> None:
        # A client that does not read its answers is not served, nor read from, until it catches up.
        self._writable.clear()
        self.update_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        self._schedule()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        self._frames.feed(data)
        if self._subscription is not None:
            self._refuse_after_subscribe()
        elif self._turn is None:
            self._serve()  # else its turn comes: the others have theirs first
        else:
            self.update_reading()

    def busy(self) -> bool:
        """True while a call is under way for this client, or it is subscribed."""
        return bool(self._pending) or self._subscription is not None

    def idle(self) -> bool:
        """True when nothing is under way for this client, nor half sent: closing it loses nothing."""
        return not self._closed and not self.busy() and not self._frames.pending()

    def close(self) -> list[asyncio.Task[None]]:
        """Stop serving this client; returns what is still running for it."""
        running = [t for t in (*self._pending.values(), self._stream) if t is not None and not t.done()]
        for task in running:
            task.cancel()
        self._shut()
        return running

    # --- requests -----------------------------------------------------------------------------------

    def _shut(self) -> None:
        if not self._closed and self in self._server.connections:
            self._server.connections.discard(self)
            self._server.closing.add(self)  # until connection_lost: its descriptor is still open
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    def _can_serve(self) -> bool:
        return (
            not self._closed
            and self._subscription is None
            and self._holding is None
            and self._writable.is_set()
            and len(self._pending) < MAX_PENDING
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def update_reading(self) -> None:
        """Read from the client while what it sent and is not answered is within bounds."""
        transport = self._transport
        if transport is None or self._closed:
            return
        if self._large is not None and self._large[0] != self._frames.taken:
            self._release_large()  # that frame is read
        limit = READ_BUFFER
        head = self._frames.head_size()
        if head > READ_BUFFER:  # the next frame is read whole, once the daemon has room for it
            if self._large is None and self._server.reserve_large(self, head):
                self._large = (self._frames.taken, head)
            if self._large is not None:
                limit = head
        if self._writable.is_set() and self._frames.buffered() < limit:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def _release_large(self) -> None:
        if self._large is not None:
            size, self._large = self._large[1], None
            self._server.release_large(size)

    def _schedule(self) -> None:
        """Give this connection a turn after the others', if it has requests to serve."""
        ready = self._next is not None or self._bad_frame is not None or self._frames.has_message()
        if ready and self._turn is None and self._can_serve():
            self._turn = asyncio.get_running_loop().call_soon(self._serve)
        self.update_reading()

    def _serve(self) -> None:
        """One turn: answer the whole requests received, in order, for TURN_SECONDS at most, with
        one commit and one write."""
        self._turn = None
        answers: list[_Answer] = []
        later: list[_Later] = []  # calls answered later, started once committed
        subscription: Subscription | None = None
        ids: set[int] = set()  # of this turn's requests
        bad_frame = False
        deadline = time.monotonic() + TURN_SECONDS
        token = REQUESTER.set(self._requester)  # the calls made here, and the tasks they start, see it
        try:
            try:
                with self._server.service.batch():
                    while self._can_serve():
                        try:
                            message = self._take()
                        except ProtocolError as exc:
                            # The stream cannot be resynchronised after a bad frame: answer, then close.
                            answers.append(
                                (None, False, protocol.encode({"id": None, "error": exc.to_wire()}))
                            )
                            bad_frame = True
                            break
                        if message is None:
                            break
                        if self._plain_submit(message):
                            answers += self._answer_submits(self._submit_run(message), ids)
                        else:
                            answer = self._answer(message, ids, later)
                            if answer is not None:
                                answers.append(answer)
                        subscription = self._subscription
                        if time.monotonic() >= deadline:
                            break
            except Exception as exc:  # the commit failed: none of these requests took effect
                answers = self._unsaved(answers, later, exc)
                later = []
                if subscription is not None:
                    self._server.service.unsubscribe(subscription)
                    self._subscription = None
            for req_id, method, pending in later:
                self._pending[req_id] = asyncio.ensure_future(self._answer_later(req_id, method, pending))
        finally:
            REQUESTER.reset(token)
        if self._subscription is not None and self._stream is None:
            self._stream = asyncio.ensure_future(self._send_events(self._subscription))
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if answers:
            transport.write(b"".join(frame for _, _, frame in answers))
            self.last_active = time.monotonic()
        if bad_frame:
            self._shut()
        elif self._subscription is not None:
            self._refuse_after_subscribe()
        else:
            self._schedule()

    def _unsaved(self, answers: list[_Answer], later: list[_Later], exc: Exception) -> list[_Answer]:
        """The answers of a turn whose commit failed: each request that would have succeeded is told,
        under its own id, that it did not; refusals stand."""
        error = self._server.write_failure(exc, "the commit").to_wire()
        out = [
            (req_id, False, protocol.encode({"id": req_id, "error": error})) if ok else (req_id, ok, frame)
            for req_id, ok, frame in answers
        ]
        for req_id, _, pending in later:
            if inspect.iscoroutine(pending):
                pending.close()
            self._pending.pop(req_id, None)
            out.append((req_id, False, protocol.encode({"id": req_id, "error": error})))
        self._holding = None
        return out

    def _refuse_after_subscribe(self) -> None:
        """A subscribed connection carries events only: a request sent on it is answered with an
        error, and the connection closed."""
        try:
            message = self._take()
        except ProtocolError:
            self._shut()
            return
        if message is None:
            if self._frames.buffered() >= READ_BUFFER:
                self._shut()
            return
        req_id = message.get("id")
        error = ProtocolError(
            "this connection carries the events of its subscription: send requests on another one"
        )
        if self._transport is not None and not self._transport.is_closing():
            answer_id = req_id if type(req_id) is int else None
            self._transport.write(protocol.encode({"id": answer_id, "error": error.to_wire()}))
        self._shut()

    def _take(self) -> dict[str, Any] | None:
        """The next whole request received, if any."""
        if self._next is not None:
            message, self._next = self._next, None
            return message
        if self._bad_frame is not None:
            raise self._bad_frame
        return self._frames.next()

    def _plain_submit(self, message: dict[str, Any]) -> bool:
        params = message.get("params")
        return (
            message.get("method") == "submit"
            and self._greeted
            and not self._server.stopping
            and isinstance(params, dict)
            and not params.get("depends_on")
            and params.get("key") is None
        )

    def _submit_run(self, first: dict[str, Any]) -> list[dict[str, Any]]:
        """`first` and the submits right after it: a client that pipelines them gets them written
        with one statement."""
        run = [first]
        while len(run) < SUBMIT_RUN:
            try:
                message = self._frames.next()
            except ProtocolError as exc:
                self._bad_frame = exc  # answered after the run
                break
            if message is None:
                break
            if not self._plain_submit(message):
                self._next = message
                break
            run.append(message)
        return run

    def _check_id(self, message: dict[str, Any], ids: set[int]) -> int:
        """The request's id, if it may be used now; else ProtocolError."""
        req_id = protocol.check_id(message.get("id"))
        if req_id in ids or req_id in self._pending:
            raise ProtocolError(f"request id {req_id} is already used by a request not yet answered")
        ids.add(req_id)
        return req_id

    def _answer_submits(self, run: list[dict[str, Any]], ids: set[int]) -> list[_Answer]:
        answers: list[_Answer | None] = []
        checked: list[dict[str, Any]] = []
        run_ids: list[Any] = []
        for message in run:
            try:
                req_id = self._check_id(message, ids)
            except ProtocolError as exc:
                answers.append((None, False, protocol.encode({"id": None, "error": exc.to_wire()})))
                run_ids.append(None)
                continue
            run_ids.append(req_id)
            try:
                checked.append(protocol.check_params("submit", message["params"]))
                answers.append(None)
            except MsearchError as exc:
                answers.append((req_id, False, protocol.encode({"id": req_id, "error": exc.to_wire()})))
        results = iter(self._server.service.submit_each(checked))
        out: list[_Answer] = []
        for req_id, answer in zip(run_ids, answers, strict=True):
            if answer is None:
                result = next(results)
                if isinstance(result, MsearchError):
                    answer = (req_id, False, protocol.encode({"id": req_id, "error": result.to_wire()}))
                else:
                    answer = (req_id, True, protocol.encode({"id": req_id, "result": result}))
            out.append(answer)
        return out

    def _answer(self, message: dict[str, Any], ids: set[int], later: list[_Later]) -> _Answer | None:
        """The answer to one request; None when it will come later (the call is added to `later`)."""
        try:
            req_id = self._check_id(message, ids)
        except ProtocolError as exc:
            return (None, False, protocol.encode({"id": None, "error": exc.to_wire()}))
        method = message.get("method")
        try:
            if not isinstance(method, str):
                raise ProtocolError("a request needs a method name")
            params = protocol.check_params(method, message.get("params"))
            if method == "hello":
                result = self._hello(params)
                self._greeted = True
            elif not self._greeted:
                raise ProtocolError("the first request on a connection must be hello")
            elif self._server.stopping:
                raise Unavailable("msearchd is stopping")
            elif method == "subscribe":
                self._subscription = self._server.service.subscribe(**params)
                result = {"subscribed": True}
            else:
                result = self._server.methods[method](**params)
                if not isinstance(result, dict | list) and inspect.isawaitable(result):
                    later.append((req_id, method, result))
                    self._pending[req_id] = None
                    if method not in _ABANDONABLE:
                        self._holding = req_id
                    return None
            return (req_id, True, protocol.encode({"id": req_id, "result": result}))
        except MsearchError as exc:
            return (req_id, False, protocol.encode({"id": req_id, "error": exc.to_wire()}))
        except Exception as exc:
            error = self._server.write_failure(exc, str(method)).to_wire()
            return (req_id, False, protocol.encode({"id": req_id, "error": error}))

    async def _answer_later(self, req_id: int, method: str, pending: Awaitable[Any]) -> None:
        try:
            try:
                answer = protocol.encode({"id": req_id, "result": await pending})
            except MsearchError as exc:
                answer = protocol.encode({"id": req_id, "error": exc.to_wire()})
            except Exception as exc:
                error = self._server.write_failure(exc, method).to_wire()
                answer = protocol.encode({"id": req_id, "error": error})
        finally:
            self._pending.pop(req_id, None)
            if self._holding == req_id:
                self._holding = None
        if self._closed or self._transport is None:
            return
        self._transport.write(answer)
        self.last_active = time.monotonic()
        self._schedule()  # what arrived meanwhile

    @staticmethod
    def _hello(params: dict[str, Any]) -> dict[str, Any]:
        from msearchd import __version__

        if params["protocol"] != protocol.PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {params['protocol']} is not supported; this daemon speaks "
                f"{protocol.PROTOCOL_VERSION}"
            )
        return {"protocol": protocol.PROTOCOL_VERSION, "server": f"msearchd {__version__}"}

    async def _send_events(self, sub: Subscription) -> None:
        """Carry a subscription's events until the client closes the connection."""
        service = self._server.service
        try:
            while not self._closed:
                event = await sub.next()
                if self._closed or self._transport is None:
                    return
                payload = {k: v for k, v in event.items() if k != "task_id_n"}
                self._transport.write(protocol.encode({"event": payload}))
                if payload["event"] in ("overflow", "shutdown"):
                    self._shut()
                    return
                await self._writable.wait()
        finally:
            service.unsubscribe(sub)
