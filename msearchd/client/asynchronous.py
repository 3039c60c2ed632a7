"""The asyncio client: `AsyncClient`, on which calls may run side by side, and `AsyncEventStream`."""

from __future__ import annotations

import builtins
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msearchd import protocol
from msearchd.client.checks import check_answer, check_folder, check_peer, default_socket_path, no_daemon
from msearchd.client.methods import Methods, joined_waits, smaller_part, subscription, wait_parts
from msearchd.errors import MsearchError, ProtocolError, TooLarge, Unavailable, from_wire

if TYPE_CHECKING:  # asyncio is imported only by AsyncClient: it costs the CLI ~35 ms to start
    import asyncio


class AsyncClient(Methods):
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
        self._abandoned = False  # a call was given up before its answer came: the connection is closed

    @classmethod
    async def connect(cls, socket_path: Path | str | None = None) -> AsyncClient:
        import asyncio

        path = Path(socket_path) if socket_path else default_socket_path()
        check_folder(path)
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=protocol.MAX_FRAME + 4)
        except OSError as exc:
            raise no_daemon(path, exc) from None
        try:
            check_peer(path, writer.get_extra_info("socket"))
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
        """True once the connection ended: the daemon stopped or restarted (make a new client), or a
        call was given up before its answer came (the next call connects again)."""
        return self._reader.at_eof() or self._writer.is_closing()

    async def call(self, method: str, **params: Any) -> Any:
        import asyncio

        if self._abandoned:
            await self._reconnect()
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
                            await self._read_one()
            except OSError as exc:
                raise Unavailable(f"lost the connection to msearchd: {exc.strerror or exc}") from None
            except asyncio.CancelledError:  # e.g. asyncio.wait_for's timeout
                if not answer.done():
                    self._abandon(req_id)
                raise
        finally:
            del self._answers[req_id]
        message = answer.result()
        if "error" in message:
            raise from_wire(message["error"])
        return message.get("result")

    async def wait(
        self,
        task_ids: Sequence[str | int],
        statuses: builtins.list[str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """As `Client.wait`: a wait on more tasks than one answer may carry is asked in parts."""
        parts = wait_parts(list(task_ids))
        if len(parts) <= 1:
            return await self._wait_part(list(task_ids), statuses, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        now = [await self._wait_part(part, statuses, 0) for part in parts]
        answers = []
        for part, seen in zip(parts, now, strict=True):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            answers.append(await self._wait_part(part, statuses, left) if seen["timed_out"] else seen)
        return joined_waits(answers)

    async def _wait_part(
        self, task_ids: Sequence[str | int], statuses: builtins.list[str] | None, timeout: float | None
    ) -> Any:
        """As `Client._wait_part`: one wait, or waits on parts of it as large as fit in a frame."""
        deadline = None if timeout is None else time.monotonic() + timeout
        answers: list[Any] = []
        done, size = 0, len(task_ids)
        while done < len(task_ids) or not answers:
            part = task_ids[done : done + size]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                answer = await super().wait(part, statuses, left)
            except TooLarge as refusal:
                size = smaller_part(refusal, len(part))
                continue
            answers.append(answer)
            done += len(part)
        return answers[0] if len(answers) == 1 else joined_waits(answers)

    async def list(
        self,
        status: str | builtins.list[str] | None = None,
        task_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "oldest",
    ) -> Any:
        """As `Client.list`: asked in pages as large as fit in a frame."""
        tasks: list[Any] = []
        size = limit
        while len(tasks) < limit:
            want = min(size, limit - len(tasks))
            try:
                page = await super().list(status, task_type, want, offset + len(tasks), order)
            except TooLarge as refusal:
                size = smaller_part(refusal, want)
                continue
            if size == limit:
                return page  # the whole answer at once, as asked
            tasks += page
            if len(page) < want:
                break
        return tasks

    async def _read_one(self) -> None:
        try:
            message = await protocol.read_frame(self._reader)
        except ProtocolError as exc:  # a frame that cannot be read: no later one can be found
            self._fail_waiting(exc)
        else:
            self._deliver(message)

    def _deliver(self, message: dict[str, Any] | None) -> None:
        """Hand an answer to the call waiting for it; the end of the connection, or an error about
        it, to all of them."""
        if message is None:
            self._fail_waiting(Unavailable("msearchd closed the connection"))
            return
        try:
            check_answer(message, self._answers)
        except MsearchError as exc:
            self._fail_waiting(exc)
            return
        answer = self._answers[message["id"]]
        if not answer.done():
            answer.set_result(message)

    def _fail_waiting(self, error: MsearchError, but: int | None = None) -> None:
        for req_id, answer in self._answers.items():
            if req_id != but and not answer.done():
                answer.set_exception(error)

    def _abandon(self, req_id: int) -> None:
        """Close the connection of a call given up before its answer came. That answer, perhaps half
        read already, would be what the next call reads: a wrong answer, or a frame cut in two. The
        calls still waiting on the connection fail; the next call connects again."""
        self._abandoned = True
        self._writer.close()
        error = Unavailable(
            "the connection to msearchd was closed: a call on it was given up before its answer"
        )
        self._fail_waiting(error, but=req_id)

    async def _reconnect(self) -> None:
        """A new connection in place of one closed by `_abandon`, once the call reading the old one, if
        any, has seen it end (it holds the read lock till then)."""
        async with self._reading:
            if not self._abandoned:
                return  # another call connected again meanwhile
            fresh = await AsyncClient.connect(self.path)
            self._reader, self._writer, self._abandoned = fresh._reader, fresh._writer, False

    async def events(
        self, task_ids: Sequence[str | int] | None = None, types: builtins.list[str] | None = None
    ) -> AsyncEventStream:
        """Subscribe on a connection of its own; live when this returns. `async for` the events, and
        close the stream to stop early."""
        stream = await AsyncClient.connect(self.path)
        try:
            await stream.call("subscribe", **subscription(task_ids, types))
        except BaseException:
            await stream.close()
            raise
        return AsyncEventStream(stream)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class AsyncEventStream:
    """Events from a subscription, in order, for `async for`. A wait for the next event may be given
    up (`asyncio.wait_for`, a cancelled task) and taken up again: the frame being read is kept."""

    def __init__(self, connection: AsyncClient) -> None:
        self._connection = connection
        # The read of the next frame, which goes on if a wait for it is given up: cancelled between
        # a frame's header and its body, a plain read would leave the stream cut in two.
        self._next: asyncio.Task[dict[str, Any] | None] | None = None

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        import asyncio

        if self._next is None:
            self._next = asyncio.ensure_future(protocol.read_frame(self._connection._reader))
        try:
            message = await asyncio.shield(self._next)
        except (OSError, ProtocolError):
            message = None
        if self._next.done():
            self._next = None
        if message is None:
            await self.close()
            raise StopAsyncIteration
        if "event" not in message:  # the daemon refused something sent on this connection
            await self.close()
            raise from_wire(message.get("error"))
        return message["event"]

    async def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
            self._next = None
        await self._connection.close()
