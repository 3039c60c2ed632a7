"""The wire: framing and message schema, shared by the daemon and every client so they cannot drift.

A frame is a 4-byte big-endian length followed by one msgpack map, of at most MAX_FRAME bytes.
Requests are ``{id, method, params}``; answers ``{id, result}`` or ``{id, error: {code, message}}``.
A connection starts with ``hello``; ``subscribe`` turns it into a stream of ``{event: {...}}`` frames,
and a request sent on it after the ``subscribe`` is answered with a ``protocol_error`` and the
connection is closed.

Request ids. An ``id`` is an integer from 0 to 2**63 - 1, chosen by the client; it must differ from
the id of every request of the connection not yet answered (it may be used again once answered). A
request with any other id (null, a string, a float, a negative or larger number, a duplicate) is not
run: it is answered with a ``protocol_error`` whose id is null, and the connection goes on. An
answer with a null id also reports a frame that could not be read (then the connection is closed).

Order. Match answers to requests by id: they may come out of order. Requests on one connection take
effect in the order they were sent, and those that arrive together are committed together, each
answered only once what it reports is durable. A ``wait`` changes nothing, so the requests behind
it are served while it waits: their answers come before its own. A call that must finish work
before it answers (``cancel`` of a running task, ``cancel_all``, ``cancel_by_type``,
``retry_failed``, the ``*_selected`` calls) holds back the requests behind it until it is done, so
that they see its effect.

Limits. A connection may have at most 1,000 calls waiting for their answer (more are read once some
are answered), and the daemon stops reading from a connection that has 256 KiB of requests it has
not answered yet, or that does not read its answers, until it catches up. Connections idle for the
daemon's ``idle_timeout`` are closed (one with a call under way or a subscription is not idle), and
beyond its connection limit the connection idle longest is closed to make room, or, if none is idle,
the new one gets a null-id ``unavailable`` error and is closed.

docs/protocol.md describes it for clients in other languages; a test holds it to `METHODS`.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

from msearchd.errors import InvalidArgument, ProtocolError, TooLarge

if TYPE_CHECKING:  # asyncio costs the blocking CLI client ~15 ms of start-up
    import asyncio

PROTOCOL_VERSION = 1
MAX_FRAME = 16 * 1024 * 1024
MAX_ID = 2**63 - 1
# Frames up to this size are copied out of the read buffer to be decoded, larger ones are viewed in it.
SMALL_FRAME = 4096
_HEADER = struct.Struct(">I")
# Its size and methods, looked up once: CPython 3.11 does not cache their lookup, and makes a bound
# method at each call of one; every frame is read and made with them.
_HEADER_SIZE = _HEADER.size
_pack_header, _unpack_header_from = _HEADER.pack, _HEADER.unpack_from


_packers = threading.local()


def pack(value: object) -> bytes:
    """msgpack bytes of `value`. msgpack.packb builds a Packer, and its buffer, at every call; this
    keeps one a thread (a Packer is not safe to share between threads)."""
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(value)


def encode(message: Mapping[str, Any]) -> bytes:
    try:
        try:  # `pack`, inline: every answer comes through here
            packer = _packers.packer
        except AttributeError:
            packer = _packers.packer = msgpack.Packer(use_bin_type=True)
        body = packer.pack(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"cannot send this value: {exc}") from None
    if len(body) > MAX_FRAME:
        raise TooLarge(f"a message of {len(body):,} bytes exceeds the {MAX_FRAME:,}-byte frame limit")
    return _pack_header(len(body)) + body


def decode(body: bytes | bytearray | memoryview) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(body)
    except Exception as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a frame must hold a msgpack map")
    return message


def frame_length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
    return length


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at a clean end of stream."""
    import asyncio

    try:
        header = await reader.readexactly(_HEADER_SIZE)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("connection closed inside a frame header") from None
        return None
    try:
        body = await reader.readexactly(frame_length(header))
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed inside a frame") from None
    return decode(body)


class FrameBuffer:
    """Bytes as they arrive, cut into messages: for readers that are handed data (asyncio protocols)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0  # where the first unread frame begins
        self.taken = 0  # frames returned so far: the number of the next one

    def feed(self, data: bytes) -> None:
        if self._start == len(self._buffer):
            self._buffer = bytearray(data)  # a fresh one: a large frame's memory is given back
            self._start = 0
            return
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def pending(self) -> bool:
        """True when bytes of a message not yet returned are buffered."""
        return len(self._buffer) > self._start

    def buffered(self) -> int:
        """Bytes received and not yet returned as messages."""
        return len(self._buffer) - self._start

    def has_message(self) -> bool:
        """True when a whole frame is buffered."""
        size = self.head_size()
        return 0 < size <= len(self._buffer) - self._start

    def head_size(self) -> int:
        """The size, header included, of the next frame as far as its header is known (0 before)."""
        if len(self._buffer) - self._start < _HEADER_SIZE:
            return 0
        return _HEADER_SIZE + _unpack_header_from(self._buffer, self._start)[0]

    def take_whole(self, data: bytes) -> dict[str, Any] | None:
        """The message of `data` if it is one whole small frame and nothing is buffered before it, counted
        as taken; else None, and `data` is for `feed`. A request that arrives alone, the common case,
        is then decoded where it lies, without going through the buffer."""
        size = len(data) - _HEADER_SIZE
        if (
            self._start != len(self._buffer)
            or not 0 < size <= SMALL_FRAME
            or _unpack_header_from(data)[0] != size
        ):
            return None
        try:  # `decode`, inline: every request that arrives alone comes through here
            message = msgpack.unpackb(data[_HEADER_SIZE:])
        except Exception:
            return None  # `next` reports it, in its turn
        if type(message) is not dict:
            return None  # likewise
        self.taken += 1
        return message

    def next(self) -> dict[str, Any] | None:
        """The next whole message, or None until more bytes arrive; ProtocolError for a bad frame."""
        start, buffer = self._start, self._buffer
        if len(buffer) - start < _HEADER_SIZE:
            return None
        (length,) = _unpack_header_from(buffer, start)
        if length > MAX_FRAME:
            raise ProtocolError(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
        end = start + _HEADER_SIZE + length
        if len(buffer) < end:
            return None
        self._start = end
        self.taken += 1
        if length <= SMALL_FRAME:  # copied: quicker than taking a view, and releasing it, for most
            return decode(buffer[start + _HEADER_SIZE : end])
        with memoryview(buffer) as view:  # released before the buffer is resized: no copy of the frame
            return decode(view[start + _HEADER_SIZE : end])


class FrameReader:
    """Blocking reads of whole messages from a socket, buffered: one recv usually brings a whole answer."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._frames = FrameBuffer()
        self.closed = False  # the peer closed its end

    def pending(self) -> bool:
        """True when bytes already received wait to be read."""
        return self._frames.pending()

    def read_ready(self) -> list[dict[str, Any]]:
        """Every whole message that can be had without blocking."""
        while True:
            try:
                chunk = self._sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break  # the end: the next blocking read reports it
            self._frames.feed(chunk)
        messages = []
        while (message := self._frames.next()) is not None:
            messages.append(message)
        return messages

    def read(self) -> dict[str, Any] | None:
        """The next message; None when the peer closed the connection between messages."""
        while (message := self._frames.next()) is None:
            chunk = self._sock.recv(65536)
            if not chunk:
                self.closed = True
                if self._frames.pending():
                    raise ProtocolError("connection closed inside a frame")
                return None
            message = self._frames.take_whole(chunk)  # an answer that came alone, as most do
            if message is not None:
                return message
            self._frames.feed(chunk)
        return message


def recv_frame(sock: socket.socket) -> dict[str, Any] | None:
    """Blocking read of one message, unbuffered (never reads past it); None when the peer closed."""
    header = _recv_exactly(sock, _HEADER_SIZE)
    if header is None:
        return None
    body = _recv_exactly(sock, frame_length(header))
    if body is None:
        raise ProtocolError("connection closed inside a frame")
    return decode(body)


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if buf:
                raise ProtocolError("connection closed inside a frame")
            return None
        buf += chunk
    return bytes(buf)


# --- message schema -----------------------------------------------------------------------------------

TaskRef = (str, int)  # "task_<n>" or <n>


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    kinds: tuple[type, ...]
    required: bool = False


def _p(name: str, *kinds: type, required: bool = False) -> Param:
    return Param(name, kinds, required)


METHODS: dict[str, tuple[Param, ...]] = {
    "hello": (_p("protocol", int, required=True), _p("client", str)),
    "submit": (
        _p("type", str, required=True),
        _p("data", dict),
        _p("priority", int, type(None)),
        _p("depends_on", list),
        _p("key", str, type(None)),
        _p("on_conflict", str),
        _p("running", bool),
        _p("wait", bool),
        _p("timeout", int, float, type(None)),
    ),
    "submit_many": (_p("tasks", list, required=True),),
    "get": (_p("task_id", *TaskRef, required=True),),
    "list": (
        _p("status", str, list, type(None)),
        _p("type", str, type(None)),
        _p("limit", int),
        _p("offset", int),
        _p("order", str),
    ),
    "count": (_p("status", str, list, type(None)), _p("type", str, type(None))),
    "stats": (),
    # These three take one task (task_id) or a selection (task_ids), not both.
    "cancel": (_p("task_id", *TaskRef), _p("task_ids", list), _p("running", bool)),
    "cancel_all": (_p("running", bool),),
    "cancel_by_type": (_p("type", str, required=True), _p("running", bool)),
    "set_priority": (_p("task_id", *TaskRef), _p("task_ids", list), _p("priority", int, required=True)),
    "retry": (_p("task_id", *TaskRef), _p("task_ids", list)),
    "retry_failed": (_p("type", str, type(None)),),
    "wait": (
        _p("task_ids", list, required=True),
        _p("statuses", list, type(None)),
        _p("timeout", int, float, type(None)),
    ),
    "history": (_p("task_id", *TaskRef, required=True),),
    "dependents": (_p("task_id", *TaskRef, required=True),),
    "read_log": (_p("task_id", *TaskRef, required=True), _p("offset", int)),
    "status": (),
    "shutdown": (),
    "subscribe": (_p("task_ids", list, type(None)), _p("types", list, type(None))),
    "cancel_selected": (
        _p("select", dict, type(None)),
        _p("running", bool),
        _p("dry_run", bool),
        _p("up_to", int, type(None)),
        _p("expect", int, type(None)),
    ),
    "set_priority_selected": (
        _p("priority", int, required=True),
        _p("select", dict, type(None)),
        _p("dry_run", bool),
        _p("up_to", int, type(None)),
        _p("expect", int, type(None)),
    ),
    "retry_selected": (
        _p("select", dict, type(None)),
        _p("dry_run", bool),
        _p("up_to", int, type(None)),
        _p("expect", int, type(None)),
    ),
    "pause": (_p("types", list, type(None)),),
    "resume": (_p("types", list, type(None)),),
    "drain": (_p("types", list, type(None)), _p("timeout", int, float, type(None))),
    "queue": (),
}


# One vocabulary: `type` names one task type, `types` several. Older names still work: method ->
# {old name: the name it stands for}.
ALIASES: dict[str, dict[str, str]] = {
    "cancel_by_type": {"task_type": "type"},
    "retry_failed": {"task_type": "type"},
}

_NAMES = {method: frozenset(p.name for p in spec) for method, spec in METHODS.items()}
# Per method: the exact types each parameter takes. What msgpack decodes is always one of them; a
# value of a subclass (bool is an int's, and accepted only where bool is asked for) is left to
# `_refuse`, which knows.
_TYPES = {method: {p.name: frozenset(p.kinds) for p in spec} for method, spec in METHODS.items()}
_NOTHING: frozenset[type] = frozenset()
_REQUIRED = {method: tuple(p.name for p in spec if p.required) for method, spec in METHODS.items()}


def check_params(method: str, params: object) -> dict[str, Any]:
    """Validate a request's params against the schema; the error names the offending parameter.

    Every request passes through here: params that fit are checked with one pass over what was sent
    (most requests send a few of their method's parameters); `_refuse` finds what does not fit.
    """
    types = _TYPES.get(method)
    if types is None:
        raise ProtocolError(f"unknown method {method!r}")
    if params is None:
        params = {}
    elif type(params) is not dict or method in ALIASES:
        return _check_slowly(method, params)
    for name, value in params.items():
        if type(value) not in types.get(name, _NOTHING):
            _refuse(method, params)
    for name in _REQUIRED[method]:
        if name not in params:
            _refuse(method, params)
    return params


def _check_slowly(method: str, params: object) -> dict[str, Any]:
    """`check_params` for params that are not a plain map, or of a method that has old names."""
    if not isinstance(params, dict):
        raise InvalidArgument(f"params of {method} must be a map")
    for old, name in ALIASES.get(method, {}).items():
        if old in params:
            if name in params:
                raise InvalidArgument(f"{method} takes {name!r} or its old name {old!r}, not both")
            params = {(name if n == old else n): v for n, v in params.items()}
    _refuse(method, params)
    return params


def _refuse(method: str, params: dict[str, Any]) -> None:
    """Raise InvalidArgument for the first thing in `params` that does not fit `method`'s schema: an
    unknown name first, then the parameters in the schema's order; return if all fit."""
    known = _NAMES[method]
    if not known.issuperset(params):
        name = next(n for n in params if n not in known)
        raise InvalidArgument(f"{method} takes no parameter {name!r}")
    for p in METHODS[method]:
        if p.name not in params:
            if p.required:
                raise InvalidArgument(f"{method} needs the parameter {p.name!r}")
            continue
        value = params[p.name]
        ok = isinstance(value, p.kinds) and not (isinstance(value, bool) and bool not in p.kinds)
        if not ok:
            kinds = " or ".join("null" if k is type(None) else k.__name__ for k in p.kinds)
            raise InvalidArgument(f"parameter {p.name!r} of {method} must be {kinds}, got {value!r}")


def check_id(value: object) -> int:
    """A request's id, if it is one a request may have (see the module's documentation)."""
    if type(value) is not int or not 0 <= value <= MAX_ID:
        raise ProtocolError(f"a request id must be an integer from 0 to 2**63 - 1, got {value!r}")
    return value


def request(req_id: int, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"id": req_id, "method": method, "params": params if type(params) is dict else dict(params or {})}
