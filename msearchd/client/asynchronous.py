"""The asyncio client: `AsyncClient`, on which calls may run side by side, and `AsyncEventStream`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msearchd import protocol
from msearchd.client.checks import check_answer, check_folder, check_peer, default_socket_path, no_daemon
from msearchd.client.methods import Methods
from msearchd.errors import MsearchError, ProtocolError, Unavailable, from_wire

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
                check_answer(message, self._answers)
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
