"""The asyncio Unix-socket server: decode a request, call the service, encode the answer.

Requests are handled as their bytes arrive, without a task per request: most answers are ready at
once. Requests that arrive together (a client that pipelines) are run in one group commit and
answered together after it; an answer is only ever sent once what it reports is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from msearchd import protocol
from msearchd.config import socket_lock_path
from msearchd.errors import InternalError, InvalidArgument, MsearchError, ProtocolError, Unavailable
from msearchd.service import REQUESTER, Subscription, TaskService
from msearchd.trust import folder_problem, peer_credentials

log = logging.getLogger("msearchd.rpc")

# Answers queue up to this many bytes on a connection before its handler waits for the client to read.
WRITE_BUFFER = 256 * 1024


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
        self._server: asyncio.AbstractServer | None = None
        self._listener: Listener | None = None
        self.connections: set[Connection] = set()
        self.stopping = False
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
        }

    def _shutdown(self) -> dict[str, Any]:
        asyncio.get_running_loop().call_soon(self._on_shutdown)
        return {"stopping": True}

    async def start(self, listener: Listener) -> None:
        self._listener = listener
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: Connection(self), sock=listener.sock)

    def stop_accepting(self) -> None:
        """Take no new connections, and answer new requests on open ones with `unavailable`."""
        self.stopping = True
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        self.stop_accepting()
        if self._listener is not None:
            self._listener.release()
        pending = [t for conn in list(self.connections) for t in conn.close()]
        if pending:
            await asyncio.wait(pending, timeout=1.0)


# Submits pipelined one after another are written together, this many at most.
SUBMIT_RUN = 1000

# Methods whose pending answer is only a wait: dropped when the client goes away. Any other runs to
# its end (a cancel under way finishes its work), its answer unsent.
_ABANDONABLE = frozenset({"wait"})


class Connection(asyncio.Protocol):
    """One client. Its requests are answered in order; one that must wait holds back those after it."""

    def __init__(self, server: RpcServer) -> None:
        self._server = server
        self._frames = protocol.FrameBuffer()
        self._transport: asyncio.Transport | None = None
        self._requester: tuple[int | None, int | None] = (None, None)
        self._greeted = False
        self._closed = False
        self._waiting: asyncio.Task[None] | None = None  # the answer that holds the others back
        self._waiting_method = ""
        self._stream: asyncio.Task[None] | None = None  # set once the connection carries events
        self._next: dict[str, Any] | None = None  # a request read ahead, not yet answered
        self._bad_frame: ProtocolError | None = None  # met while reading ahead
        self._writable = asyncio.Event()
        self._writable.set()

    # --- transport callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        pid, uid = peer_credentials(transport.get_extra_info("socket"))
        if uid != os.getuid():
            log.warning("refused a connection from uid %d (pid %d)", uid, pid)
            self._closed = True
            transport.close()
            return
        self._requester = (uid, pid)
        transport.set_write_buffer_limits(high=WRITE_BUFFER)
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)
        self._writable.set()
        if self._stream is not None:
            self._stream.cancel()
        if self._waiting is not None and self._waiting_method in _ABANDONABLE:
            self._waiting.cancel()

    def pause_writing(self) -> None:
        # A client that does not read its answers is not read from either, until it catches up.
        self._writable.clear()
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._stream is not None:
            self._shut()  # a subscriber sends nothing but its goodbye
            return
        self._frames.feed(data)
        if self._waiting is None:
            self._answer_buffered()

    def close(self) -> list[asyncio.Task[None]]:
        """Stop serving this client; returns what is still running for it."""
        running = [t for t in (self._waiting, self._stream) if t is not None and not t.done()]
        for task in running:
            task.cancel()
        self._shut()
        return running

    # --- requests -----------------------------------------------------------------------------------

    def _shut(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    def _answer_buffered(self) -> None:
        """Answer every whole request received, in order, with one commit and one write."""
        answers: list[bytes] = []
        bad_frame = False
        token = REQUESTER.set(self._requester)  # the calls made here, and the tasks they start, see it
        try:
            with self._server.service.batch():
                while self._waiting is None and self._stream is None and not self._closed:
                    try:
                        message = self._take()
                    except ProtocolError as exc:
                        # The stream cannot be resynchronised after a bad frame: answer once, then close.
                        answers.append(protocol.encode({"id": None, "error": exc.to_wire()}))
                        bad_frame = True
                        break
                    if message is None:
                        break
                    if self._plain_submit(message):
                        answers += self._answer_submits(self._submit_run(message))
                        continue
                    answer = self._answer(message)
                    if answer is not None:
                        answers.append(answer)
        except Exception as exc:  # the commit failed: none of these requests took effect
            log.exception("commit failed")
            error = InternalError(f"internal error: the changes could not be saved: {exc}").to_wire()
            answers = [protocol.encode({"id": None, "error": error})]
            bad_frame = True
        finally:
            REQUESTER.reset(token)
        if self._transport is not None and not self._transport.is_closing():
            if answers:
                self._transport.write(b"".join(answers))
            if bad_frame:
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

    def _answer_submits(self, run: list[dict[str, Any]]) -> list[bytes]:
        answers: list[bytes | None] = []
        checked: list[dict[str, Any]] = []
        for message in run:
            try:
                checked.append(protocol.check_params("submit", message["params"]))
                answers.append(None)
            except MsearchError as exc:
                answers.append(protocol.encode({"id": message.get("id"), "error": exc.to_wire()}))
        results = iter(self._server.service.submit_each(checked))
        out: list[bytes] = []
        for message, answer in zip(run, answers, strict=True):
            if answer is None:
                result = next(results)
                if isinstance(result, MsearchError):
                    answer = protocol.encode({"id": message.get("id"), "error": result.to_wire()})
                else:
                    answer = protocol.encode({"id": message.get("id"), "result": result})
            out.append(answer)
        return out

    def _answer(self, message: dict[str, Any]) -> bytes | None:
        """The encoded answer to one request; None when it will come later."""
        req_id = message.get("id")
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
                sub = self._server.service.subscribe(**params)
                self._stream = asyncio.ensure_future(self._send_events(sub))
                result = {"subscribed": True}
            else:
                result = self._server.methods[method](**params)
                if not isinstance(result, dict | list) and inspect.isawaitable(result):
                    self._waiting_method = method
                    self._waiting = asyncio.ensure_future(self._answer_later(req_id, method, result))
                    return None
            return protocol.encode({"id": req_id, "result": result})
        except MsearchError as exc:
            return protocol.encode({"id": req_id, "error": exc.to_wire()})
        except Exception as exc:
            log.exception("%s failed", method)
            error = InternalError(f"internal error in {method}: {exc}").to_wire()
            return protocol.encode({"id": req_id, "error": error})

    async def _answer_later(self, req_id: Any, method: str, pending: Awaitable[Any]) -> None:
        try:
            answer = protocol.encode({"id": req_id, "result": await pending})
        except MsearchError as exc:
            answer = protocol.encode({"id": req_id, "error": exc.to_wire()})
        except Exception as exc:
            log.exception("%s failed", method)
            error = InternalError(f"internal error in {method}: {exc}").to_wire()
            answer = protocol.encode({"id": req_id, "error": error})
        self._waiting = None
        if self._closed or self._transport is None:
            return
        self._transport.write(answer)
        self._answer_buffered()  # what arrived meanwhile

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
