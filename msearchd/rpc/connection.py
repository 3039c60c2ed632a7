"""One client's connection: framing, turns among connections, group commits, answers in order.

Requests are handled as their bytes arrive, without a task per request: most answers are ready at
once. Requests that arrive together (a client that pipelines) are run in one group commit and
answered together after it; an answer is only ever sent once what it reports is durable.

Connections take turns: one serves its requests for at most TURN_SECONDS, commits and answers, then
lets the others have theirs, so that a client pipelining slow requests holds nobody else up. What a
connection may make the daemon hold for it is bounded (bytes read, calls under way), and it is not
read from while it is at a bound.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from msearchd import protocol
from msearchd.errors import MsearchError, ProtocolError, Unavailable
from msearchd.service import REQUESTER, Subscription

if TYPE_CHECKING:
    from msearchd.rpc.server import RpcServer

# Answers queue up to this many bytes on a connection before its handler waits for the client to read.
WRITE_BUFFER = 256 * 1024
# Bytes of requests a connection may have sent that are not answered yet: beyond, it is not read from
# until some are answered. A frame larger than this is still read whole (up to protocol.MAX_FRAME).
READ_BUFFER = 256 * 1024
# Calls of one connection that may be under way at once (waits, mostly); beyond, its next requests
# are read once some of these are answered.
MAX_PENDING = 1000
# How long one connection is served before the others get their turn.
TURN_SECONDS = 0.01
# Submits pipelined one after another are written together, this many at most.
SUBMIT_RUN = 1000

# Requests that make one commit at most and cannot make a task ready to start. Alone in their turn,
# each commits on its own: what the turn's group adds, claiming for idle workers in the same commit
# the tasks its requests made pending, is nothing to them, and the group is a tenth of such a
# request's Python. So is a plain submit while no worker is idle.
_COMMITS_ALONE = frozenset(
    {"get", "list", "count", "stats", "history", "dependents", "read_log", "status", "queue", "wait"}
    | {"set_priority", "cancel"}
)

# Methods whose pending answer is only a wait: the requests behind it do not wait for it, and it is
# dropped when the client goes away. Any other holds back the requests behind it and runs to its end
# (a cancel under way finishes its work), its answer unsent if the client went away.
_ABANDONABLE = frozenset({"wait", "drain"})  # a drain has paused the queue before it waits


def _only_waits(method: str, params: dict[str, Any]) -> bool:
    """Whether what is left of a call whose answer comes later is only a wait (see `_ABANDONABLE`):
    a submit with `wait` is, its task queued, unless it has a key (it may be stopping the key's
    running holder first)."""
    return method in _ABANDONABLE or (method == "submit" and params.get("key") is None)


# `REQUESTER.set` and `.reset`, bound once: CPython 3.11 makes a bound method at each call of either.
_set_requester, _reset_requester = REQUESTER.set, REQUESTER.reset

# What a method's result is when it is the answer itself, not an awaitable of it.
_ANSWERED_NOW = frozenset({dict, list})

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
        self._writing = True  # False while the transport's buffer is over WRITE_BUFFER
        self._writable = asyncio.Event()  # set while `_writing`: what the event stream waits on
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
        self._writing = True
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
        self._writing = False
        self._writable.clear()
        self.update_reading()

    def resume_writing(self) -> None:
        self._writing = True
        self._writable.set()
        self._schedule()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self._turn is None and self._quiet():
            message = self._frames.take_whole(data)
            if message is not None:
                if message.get("method") in _COMMITS_ALONE or (
                    self._plain_submit(message) and not self._server.service.has_idle_worker()
                ):
                    self._serve_alone(message)
                else:
                    self._serve(message)
                return
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

    def _quiet(self) -> bool:
        """Nothing under way for this client, nothing read ahead, nothing held back: a request that
        arrives alone now is a turn of its own. (`_can_serve`, spelled out: no call is held when none
        is under way.)"""
        return (
            not self._pending
            and self._next is None
            and self._bad_frame is None
            and self._large is None
            and not self._closed
            and self._subscription is None
            and self._writing
        )

    def _can_serve(self) -> bool:
        return (
            not self._closed
            and self._subscription is None
            and self._holding is None
            and self._writing
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
        if self._writing and self._frames.buffered() < limit:
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

    def _serve(self, alone: dict[str, Any] | None = None) -> None:
        """One turn: answer the whole requests received, in order, for TURN_SECONDS at most, with
        one commit and one write. `alone`: a request that arrived by itself on a quiet connection
        (see `_quiet`), the whole turn; nothing is left to look at after it."""
        self._turn = None
        answers: list[_Answer] = []
        later: list[_Later] = []  # calls answered later, started once committed
        ids: set[int] = set()  # of this turn's requests
        bad_frame = False
        token = _set_requester(self._requester)  # the calls made here, and the tasks they start, see it
        try:
            try:
                with self._server.service.batch():
                    if alone is None:
                        bad_frame = self._serve_received(answers, later, ids)
                    else:
                        answer = self._answer(alone, None, later)
                        if answer is not None:
                            answers.append(answer)
            except Exception as exc:  # the commit failed: none of these requests took effect
                answers = self._unsaved(answers, later, exc)
                later = []
                if self._subscription is not None:  # made in this turn: a subscribed one has none
                    self._server.service.unsubscribe(self._subscription)
                    self._subscription = None
            self._start_later(later)
        finally:
            _reset_requester(token)
        if self._subscription is not None and self._stream is None:
            self._stream = asyncio.ensure_future(self._send_events(self._subscription))
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if answers:
            transport.write(answers[0][2] if len(answers) == 1 else b"".join(a[2] for a in answers))
            self.last_active = time.monotonic()
        if bad_frame:
            self._shut()
        elif self._subscription is not None:
            self._refuse_after_subscribe()
        elif alone is None:
            self._schedule()

    def _serve_alone(self, message: dict[str, Any]) -> None:
        """`_serve` of a request that arrived alone (see `_quiet`) and has nothing to gain from the
        turn's group (see `_COMMITS_ALONE`): it commits on its own, and is answered."""
        later: list[_Later] = []
        token = _set_requester(self._requester)
        try:
            answer = self._answer(message, None, later)
            if later:
                self._start_later(later)  # a cancel that has to stop its task answers once it has
        finally:
            _reset_requester(token)
        transport = self._transport
        if answer is not None and transport is not None and not transport.is_closing():
            transport.write(answer[2])  # `last_active` is when it arrived, a moment ago

    def _start_later(self, later: list[_Later]) -> None:
        for req_id, method, pending in later:
            self._pending[req_id] = asyncio.ensure_future(self._answer_later(req_id, method, pending))

    def _serve_received(self, answers: list[_Answer], later: list[_Later], ids: set[int]) -> bool:
        """Answer the requests received, for TURN_SECONDS at most, into `answers` and `later`; True
        if a bad frame ended them (the connection is closed once it is answered)."""
        deadline = time.monotonic() + TURN_SECONDS
        while self._can_serve():
            try:
                message = self._take()
            except ProtocolError as exc:
                # The stream cannot be resynchronised after a bad frame: answer, then close.
                answers.append((None, False, protocol.encode({"id": None, "error": exc.to_wire()})))
                return True
            if message is None:
                break
            # Submits pipelined behind this one are written together; alone, it is answered as any
            # other request.
            piped = self._frames.pending() and self._plain_submit(message)
            run = self._submit_run(message) if piped else None
            if run is not None and len(run) > 1:
                answers += self._answer_submits(run, ids)
            else:  # a lone submit is answered as any other request
                answer = self._answer(message, ids, later)
                if answer is not None:
                    answers.append(answer)
            if self._next is None and self._bad_frame is None and not self._frames.pending():
                break  # nothing more has arrived: no need to look again
            if time.monotonic() >= deadline:
                break
        return False

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
            and not params.get("wait")
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

    def _answer(self, message: dict[str, Any], ids: set[int] | None, later: list[_Later]) -> _Answer | None:
        """The answer to one request; None when it will come later (the call is added to `later`).
        `ids`: of the turn's requests so far (see `_check_id`); None for a request that arrived alone
        on a quiet connection (see `_quiet`), whose id no other request can be using."""
        try:
            req_id = protocol.check_id(message.get("id")) if ids is None else self._check_id(message, ids)
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
                if type(result) not in _ANSWERED_NOW and inspect.isawaitable(result):
                    later.append((req_id, method, result))
                    self._pending[req_id] = None
                    if not _only_waits(method, params):
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
