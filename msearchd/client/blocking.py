"""The blocking client: `Client`, its `Pipeline` of requests sent without waiting, and `EventStream`."""

from __future__ import annotations

import builtins
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from msearchd import protocol
from msearchd.client.checks import (
    answer_result,
    check_answer,
    check_folder,
    check_peer,
    default_socket_path,
    no_daemon,
)
from msearchd.client.methods import Methods, joined_waits, smaller_part, subscription, wait_parts
from msearchd.errors import ProtocolError, TooLarge, Unavailable, from_wire


class Client(Methods):
    """A blocking connection to msearchd; one request at a time."""

    def __init__(self, socket_path: Path | str | None = None, connect_timeout: float = 5.0) -> None:
        self.path = Path(socket_path) if socket_path else default_socket_path()
        self._connect_timeout = connect_timeout
        self._next_id = 0
        self._pipeline: Pipeline | None = None
        check_folder(self.path)
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
            raise no_daemon(self.path, exc) from None
        try:
            check_peer(self.path, self._sock)
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
                    check_answer(refusal, {req_id})
                raise
            self.server = answer_result(self._read(), req_id)
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
        self._next_id = req_id = self._next_id + 1  # `_new_id`, inline: every call comes through here
        frame = protocol.encode(protocol.request(req_id, method, params))
        if not self._send_unless_closed(frame):
            self._reconnect()
            self._send(frame)
        return answer_result(self._read(), req_id)

    def wait(
        self,
        task_ids: Sequence[str | int],
        statuses: builtins.list[str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """A wait on more tasks than one answer may carry is asked part after part: first where each
        part stands now (a task that does not exist is refused at once), then a wait on each part
        not there yet, within what is left of the timeout. The answer is that of one wait."""
        parts = wait_parts(list(task_ids))
        if len(parts) <= 1:
            return self._wait_part(list(task_ids), statuses, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        now = [self._wait_part(part, statuses, 0) for part in parts]
        answers = []
        for part, seen in zip(parts, now, strict=True):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            answers.append(self._wait_part(part, statuses, left) if seen["timed_out"] else seen)
        return joined_waits(answers)

    def _wait_part(
        self, task_ids: Sequence[str | int], statuses: builtins.list[str] | None, timeout: float | None
    ) -> Any:
        """One wait; if its answer would not fit in a frame (tasks with large data), waits on parts
        as large as the daemon says fit (half as large where it cannot say), one after another."""
        deadline = None if timeout is None else time.monotonic() + timeout
        answers: list[Any] = []
        done, size = 0, len(task_ids)
        while done < len(task_ids) or not answers:
            part = task_ids[done : done + size]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                answer = super().wait(part, statuses, left)
            except TooLarge as refusal:
                size = smaller_part(refusal, len(part))
                continue
            answers.append(answer)
            done += len(part)
        return answers[0] if len(answers) == 1 else joined_waits(answers)

    def list(
        self,
        status: str | builtins.list[str] | None = None,
        task_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "oldest",
    ) -> Any:
        """A list whose answer would not fit in a frame (tasks with large data) is asked in pages as
        large as the daemon says fit (half as large where it cannot say), one after another."""
        tasks: list[Any] = []
        size = limit
        while len(tasks) < limit:
            want = min(size, limit - len(tasks))
            try:
                page = super().list(status, task_type, want, offset + len(tasks), order)
            except TooLarge as refusal:
                size = smaller_part(refusal, want)
                continue
            if size == limit:
                return page  # the whole answer at once, as asked
            tasks += page
            if len(page) < want:
                break
        return tasks

    def _send_unless_closed(self, frame: bytes) -> bool:
        """Send a request; False, having sent nothing, when the daemon had closed this connection
        between calls (it closes idle ones). Only then is the request safe to send again: a send
        that fails queues nothing, while one that went out may have reached the daemon. Finding out
        this way costs nothing per call, where a look at the socket before each would."""
        try:
            sent = self._sock.send(frame, socket.MSG_NOSIGNAL)
        except (BrokenPipeError, ConnectionResetError):
            return False
        except OSError as exc:
            raise Unavailable(f"lost the connection to msearchd: {exc.strerror or exc}") from None
        if sent < len(frame):
            self._send(memoryview(frame)[sent:])
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

    def _send(self, data: bytes | memoryview) -> None:
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

    def events(
        self, task_ids: Sequence[str | int] | None = None, types: builtins.list[str] | None = None
    ) -> EventStream:
        """Subscribe on a connection of its own. The subscription is live when this returns: iterate the
        stream for events until the daemon ends it, and close it to stop early."""
        stream = Client(self.path)
        try:
            stream.call("subscribe", **subscription(task_ids, types))
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


class Pipeline(Methods):
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
                check_answer(message, self._answers)
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
