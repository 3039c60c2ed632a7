"""The public Python API: `Client` (blocking) and `AsyncClient`, both thin layers over the RPC.

    from msearchd.client import Client
    with Client() as c:
        task = c.submit("command", {"argv": ["sleep", "5"]}, priority=2)
        c.wait([task["id"]])

Errors arrive as `msearchd.errors.MsearchError` subclasses carrying the daemon's stable code.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msearchd import protocol
from msearchd.errors import MsearchError, ProtocolError, Unavailable, from_wire
from msearchd.trust import folder_problem, peer_problem

if TYPE_CHECKING:  # asyncio is imported only by AsyncClient: it costs the CLI ~35 ms to start
    import asyncio


def _default_socket_path() -> Path:
    """Imported only when needed: the daemon's configuration module costs a CLI ~5 ms to start."""
    from msearchd.config import default_socket_path

    return default_socket_path()


def _no_daemon(path: Path, exc: OSError) -> Unavailable:
    reason = exc.strerror or str(exc)
    return Unavailable(f"cannot reach msearchd at {path} ({reason}); is the daemon running?")


def _check_folder(path: Path) -> None:
    """Refuse a socket whose folder another user could have put it in, before connecting."""
    try:
        problem = folder_problem(path.parent, "socket folder")
    except (FileNotFoundError, NotADirectoryError):
        return  # connecting fails and says so
    except OSError as exc:
        problem = f"cannot look at the socket folder {path.parent}: {exc.strerror or exc}"
    if problem is not None:
        raise Unavailable(f"refusing to talk to msearchd at {path}: {problem}")


def _check_peer(path: Path, sock: socket.socket) -> None:
    """Refuse a server of another user before it is sent anything (a request can carry secrets)."""
    problem = peer_problem(sock)
    if problem is not None:
        raise Unavailable(f"refusing to talk to msearchd at {path}: {problem}")


def _result(message: dict[str, Any] | None, req_id: int) -> Any:
    if message is None:
        raise Unavailable("msearchd closed the connection")
    _check_answer(message, {req_id})
    if "error" in message:
        raise from_wire(message["error"])
    return message.get("result")


def _check_answer(message: dict[str, Any], expected: set[int] | dict[int, Any]) -> None:
    """Refuse an answer to no request we are waiting for. An error with a null id is about the
    connection or a request the daemon could not identify: it is raised."""
    got = message.get("id")
    if got is None and "error" in message:
        raise from_wire(message["error"])
    if got not in expected:
        raise ProtocolError(f"answer for request {got!r}, which is not waiting for one")


class _Methods:
    """The operations, written once: each returns whatever `call` returns (a value, or an awaitable)."""

    def call(self, method: str, **params: Any) -> Any:
        raise NotImplementedError

    def submit(
        self,
        task_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        priority: int | None = None,
        depends_on: list[str | int] | None = None,
        key: str | None = None,
        on_conflict: str = "keep",
        running: bool = False,
    ) -> Any:
        keyed = {"key": key, "on_conflict": on_conflict, "running": running} if key is not None else {}
        return self.call(
            "submit",
            type=task_type,
            data=dict(data or {}),
            priority=priority,
            depends_on=list(depends_on or []),
            **keyed,
        )

    def submit_many(self, tasks: list[dict[str, Any]]) -> Any:
        return self.call("submit_many", tasks=tasks)

    def get(self, task_id: str | int) -> Any:
        return self.call("get", task_id=task_id)

    def list(
        self,
        status: str | list[str] | None = None,
        task_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "oldest",
    ) -> Any:
        return self.call("list", status=status, type=task_type, limit=limit, offset=offset, order=order)

    def count(self, status: str | list[str] | None = None, task_type: str | None = None) -> Any:
        return self.call("count", status=status, type=task_type)

    def stats(self) -> Any:
        return self.call("stats")

    def cancel(self, task_id: str | int, running: bool = False) -> Any:
        return self.call("cancel", task_id=task_id, running=running)

    def cancel_all(self, running: bool = False) -> Any:
        return self.call("cancel_all", running=running)

    def cancel_by_type(self, task_type: str, running: bool = False) -> Any:
        return self.call("cancel_by_type", type=task_type, running=running)

    def set_priority(self, task_id: str | int, priority: int) -> Any:
        return self.call("set_priority", task_id=task_id, priority=priority)

    def retry(self, task_id: str | int) -> Any:
        return self.call("retry", task_id=task_id)

    def retry_many(self, task_ids: list[str | int]) -> Any:
        """Retry a selection in one request: {results: [{task_id, success, ...}], succeeded, failed}."""
        return self.call("retry", task_ids=list(task_ids))

    def cancel_many(self, task_ids: list[str | int], running: bool = False) -> Any:
        return self.call("cancel", task_ids=list(task_ids), running=running)

    def set_priority_many(self, task_ids: list[str | int], priority: int) -> Any:
        return self.call("set_priority", task_ids=list(task_ids), priority=priority)

    def dependents(self, task_id: str | int) -> Any:
        return self.call("dependents", task_id=task_id)

    def read_log(self, task_id: str | int, offset: int = 0) -> Any:
        return self.call("read_log", task_id=task_id, offset=offset)

    def retry_failed(self, task_type: str | None = None) -> Any:
        return self.call("retry_failed", type=task_type)

    def cancel_selected(self, select: dict[str, Any], running: bool = False, **run: Any) -> Any:
        """`run`: dry_run, and for a run after a dry run, its up_to and count as expect."""
        return self.call("cancel_selected", select=select, running=running, **run)

    def set_priority_selected(self, select: dict[str, Any], priority: int, **run: Any) -> Any:
        return self.call("set_priority_selected", select=select, priority=priority, **run)

    def retry_selected(self, select: dict[str, Any], **run: Any) -> Any:
        return self.call("retry_selected", select=select, **run)

    def pause(self, types: list[str] | None = None) -> Any:
        return self.call("pause", types=types)

    def resume(self, types: list[str] | None = None) -> Any:
        return self.call("resume", types=types)

    def drain(self, types: list[str] | None = None, timeout: float | None = None) -> Any:
        return self.call("drain", types=types, timeout=timeout)

    def queue(self) -> Any:
        return self.call("queue")

    def wait(
        self, task_ids: list[str | int], statuses: list[str] | None = None, timeout: float | None = None
    ) -> Any:
        return self.call("wait", task_ids=list(task_ids), statuses=statuses, timeout=timeout)

    def history(self, task_id: str | int) -> Any:
        return self.call("history", task_id=task_id)

    def status(self) -> Any:
        return self.call("status")

    def shutdown(self) -> Any:
        return self.call("shutdown")


class Client(_Methods):
    """A blocking connection to msearchd; one request at a time."""

    def __init__(self, socket_path: Path | str | None = None, connect_timeout: float = 5.0) -> None:
        self.path = Path(socket_path) if socket_path else _default_socket_path()
        self._connect_timeout = connect_timeout
        self._next_id = 0
        self._pipeline: Pipeline | None = None
        _check_folder(self.path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A blocking connect waits, for SO_SNDTIMEO at most, while the daemon's backlog is full, where
        # a non-blocking one would fail at once.
        seconds = int(connect_timeout)
        micros = int((connect_timeout - seconds) * 1e6)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, micros))
        try:
            self._sock.connect(str(self.path))
        except BlockingIOError:
            self._sock.close()
            raise Unavailable(
                f"msearchd at {self.path} did not accept the connection within {connect_timeout:g} s; "
                "is it stopped or overloaded?"
            ) from None
        except OSError as exc:
            self._sock.close()
            raise _no_daemon(self.path, exc) from None
        try:
            _check_peer(self.path, self._sock)
        except Unavailable:
            self._sock.close()
            raise
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 0))
        self._sock.settimeout(connect_timeout)
        # The timeout covers the hello too: a daemon that is stopped (SIGSTOP) or stuck still has its
        # connections accepted by the kernel, and would otherwise leave us waiting for ever.
        self._reader = protocol.FrameReader(self._sock)
        try:
            req_id = self._new_id()
            hello = protocol.request(req_id, "hello", {"protocol": protocol.PROTOCOL_VERSION})
            hello["params"]["client"] = "msearchd.client"
            try:
                self._send(protocol.encode(hello))
            except Unavailable:
                for refusal in self._reader.read_ready():  # it may have said why it hung up
                    _check_answer(refusal, {req_id})
                raise
            self.server = _result(self._read(), req_id)
        except TimeoutError:
            self._sock.close()
            raise Unavailable(
                f"msearchd at {self.path} accepted the connection but did not answer within "
                f"{connect_timeout:g} s; is it stopped or overloaded?"
            ) from None
        except BaseException:
            self._sock.close()
            raise
        self._sock.settimeout(None)

    def call(self, method: str, **params: Any) -> Any:
        if self._pipeline is not None:
            raise ProtocolError("this client has a pipeline open: call through it, or after it ends")
        if self._closed_by_daemon():
            self._reconnect()
        req_id = self._new_id()
        self._send(protocol.encode(protocol.request(req_id, method, params)))
        return _result(self._read(), req_id)

    def _closed_by_daemon(self) -> bool:
        """True when the daemon has closed this connection between calls (it closes idle ones)."""
        if self._reader.pending():
            return False
        try:
            return self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def _reconnect(self) -> None:
        """A new connection in place of one the daemon closed while nothing was asked on it."""
        fresh = Client(self.path, self._connect_timeout)
        self._sock.close()
        self._sock, self._reader, self.server = fresh._sock, fresh._reader, fresh.server
        self._next_id = max(self._next_id, fresh._next_id)

    def pipeline(self) -> Pipeline:
        """Send many requests without waiting for each answer; see `Pipeline`."""
        if self._pipeline is not None:
            raise ProtocolError("this client has a pipeline open already")
        self._pipeline = Pipeline(self)
        return self._pipeline

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise Unavailable(f"lost the connection to msearchd: {exc.strerror or exc}") from None

    def _read(self) -> dict[str, Any] | None:
        try:
            return self._reader.read()
        except TimeoutError:
            raise  # only while connecting: the caller says what it means
        except OSError as exc:
            raise Unavailable(f"lost the connection to msearchd: {exc.strerror or exc}") from None
        except ProtocolError:
            if self._reader.closed:
                raise Unavailable("msearchd closed the connection in the middle of an answer") from None
            raise

    def events(self, task_ids: list[str | int] | None = None, types: list[str] | None = None) -> EventStream:
        """Subscribe on a connection of its own. The subscription is live when this returns: iterate the
        stream for events until the daemon ends it, and close it to stop early."""
        stream = Client(self.path)
        try:
            stream.call("subscribe", task_ids=task_ids, types=types)
        except BaseException:
            stream.close()
            raise
        return EventStream(stream)

    def wait_closed(self) -> None:
        """Block until the daemon closes this connection, as it does once it has stopped."""
        try:
            while self._sock.recv(65536):
                pass
        except OSError:
            return

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Pipeline(_Methods):
    """Requests sent one after another without waiting for each answer, on the client's connection.

        with client.pipeline() as p:
            for path in paths:
                p.submit("file_scan", {"path": path})
        ids = [task["id"] for task in p.results]

    Each request is still a request of its own, answered on its own once it is durable; the daemon
    runs those that arrive together in one commit, which is what makes this fast. Methods return
    nothing; `results` (filled when the block ends, or by `finish()`) holds each answer in the order
    of the requests, whatever order the answers came in (a `wait` is answered after the requests
    behind it), or the `MsearchError` of a request that failed: a failure does not stop the others.
    """

    # Requests sent before the answers to earlier ones are read: bounded, so that neither side ever
    # blocks writing to the other.
    WINDOW = 256
    WINDOW_BYTES = 64 * 1024

    def __init__(self, client: Client) -> None:
        self._client = client
        self._frames: list[bytes] = []
        self._size = 0
        self._ids: list[int] = []
        self._in_flight: deque[list[int]] = deque()
        self._answers: dict[int, dict[str, Any] | None] = {}  # by id: None until it arrives
        self.results: list[Any] = []

    def call(self, method: str, **params: Any) -> None:
        if self._client._pipeline is not self:
            raise ProtocolError("this pipeline has ended")
        req_id = self._client._new_id()
        frame = protocol.encode(protocol.request(req_id, method, params))
        self._frames.append(frame)
        self._ids.append(req_id)
        self._size += len(frame)
        if len(self._ids) >= self.WINDOW or self._size >= self.WINDOW_BYTES:
            self._send_window()

    def _send_window(self) -> None:
        if self._ids:
            self._client._send(b"".join(self._frames))
            self._in_flight.append(self._ids)
            self._answers.update(dict.fromkeys(self._ids))
            self._frames, self._ids, self._size = [], [], 0
        while len(self._in_flight) > 1:
            self._collect(self._in_flight.popleft())

    def _collect(self, ids: list[int]) -> None:
        """Read until every request of `ids` is answered; answers come in any order, so those of
        later requests are kept for their turn."""
        for req_id in ids:
            while (message := self._answers[req_id]) is None:
                message = self._client._read()
                if message is None:
                    raise Unavailable("msearchd closed the connection")
                _check_answer(message, self._answers)
                self._answers[message["id"]] = message
            del self._answers[req_id]
            self.results.append(from_wire(message["error"]) if "error" in message else message.get("result"))

    def finish(self) -> list[Any]:
        """Send what is left, read every answer; returns `results`. The client is free again."""
        try:
            self._send_window()
            while self._in_flight:
                self._collect(self._in_flight.popleft())
        finally:
            self._client._pipeline = None
        return self.results

    def abandon(self) -> None:
        """Send nothing more; read the answers to what was sent (the requests took effect), so that
        the connection can go on."""
        self._frames, self._ids, self._size = [], [], 0
        try:
            while self._in_flight:
                self._collect(self._in_flight.popleft())
        finally:
            self._client._pipeline = None

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abandon()


class EventStream:
    """Events from a subscription, in order; `ready` lets a caller wait with a deadline."""

    def __init__(self, connection: Client) -> None:
        self._connection = connection

    def ready(self, timeout: float | None) -> bool:
        """True once an event (or the end of the stream) can be read without blocking."""
        if self._connection._reader.pending():
            return True
        readable, _, _ = select.select([self._connection._sock], [], [], timeout)
        return bool(readable)

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            message = self._connection._reader.read()
        except OSError:
            message = None
        if message is None:
            self.close()
            raise StopIteration
        if "event" not in message:  # the daemon refused something sent on this connection
            self.close()
            raise from_wire(message.get("error"))
        return message["event"]

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncClient(_Methods):
    """An asyncio connection to msearchd. Create with `await AsyncClient.connect()`. Calls may run side
    by side on it: each answer is matched to its call by id, so a `wait` does not hold up the others."""

    def __init__(self, path: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import asyncio

        self.path = path
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}  # calls waiting, by id
        self._reading = asyncio.Lock()  # one call at a time reads, for all of them

    @classmethod
    async def connect(cls, socket_path: Path | str | None = None) -> AsyncClient:
        import asyncio

        path = Path(socket_path) if socket_path else _default_socket_path()
        _check_folder(path)
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=protocol.MAX_FRAME + 4)
        except OSError as exc:
            raise _no_daemon(path, exc) from None
        try:
            _check_peer(path, writer.get_extra_info("socket"))
        except Unavailable:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            raise
        client = cls(path, reader, writer)
        await client.call("hello", protocol=protocol.PROTOCOL_VERSION, client="msearchd.AsyncClient")
        return client

    @property
    def closed(self) -> bool:
        """True once the connection ended (the daemon stopped or restarted): make a new client."""
        return self._reader.at_eof() or self._writer.is_closing()

    async def call(self, method: str, **params: Any) -> Any:
        import asyncio

        self._next_id += 1
        req_id = self._next_id
        answer = self._answers[req_id] = asyncio.get_running_loop().create_future()
        try:
            try:
                self._writer.write(protocol.encode(protocol.request(req_id, method, params)))
                await self._writer.drain()
                while not answer.done():
                    async with self._reading:
                        if not answer.done():
                            self._deliver(await protocol.read_frame(self._reader))
            except OSError as exc:
                raise Unavailable(f"lost the connection to msearchd: {exc.strerror or exc}") from None
        finally:
            del self._answers[req_id]
        message = answer.result()
        if "error" in message:
            raise from_wire(message["error"])
        return message.get("result")

    def _deliver(self, message: dict[str, Any] | None) -> None:
        """Hand an answer to the call waiting for it; the end of the connection, or an error about
        it, to all of them."""
        if message is None:
            error: MsearchError = Unavailable("msearchd closed the connection")
        else:
            try:
                _check_answer(message, self._answers)
                answer = self._answers[message["id"]]
                if not answer.done():  # else its caller gave up waiting
                    answer.set_result(message)
                return
            except MsearchError as exc:
                error = exc
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(error)

    async def events(
        self, task_ids: list[str | int] | None = None, types: list[str] | None = None
    ) -> AsyncEventStream:
        """Subscribe on a connection of its own; live when this returns. `async for` the events, and
        close the stream to stop early."""
        stream = await AsyncClient.connect(self.path)
        try:
            await stream.call("subscribe", task_ids=task_ids, types=types)
        except BaseException:
            await stream.close()
            raise
        return AsyncEventStream(stream)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class AsyncEventStream:
    """Events from a subscription, in order, for `async for`."""

    def __init__(self, connection: AsyncClient) -> None:
        self._connection = connection

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            message = await protocol.read_frame(self._connection._reader)
        except (OSError, ProtocolError):
            message = None
        if message is None:
            await self.close()
            raise StopAsyncIteration
        if "event" not in message:  # the daemon refused something sent on this connection
            await self.close()
            raise from_wire(message.get("error"))
        return message["event"]

    async def close(self) -> None:
        await self._connection.close()
