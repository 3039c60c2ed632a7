"""The asyncio Unix-socket server: decode a request, call the service, encode the answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from msearchd import protocol
from msearchd.errors import InternalError, InvalidArgument, MsearchError, ProtocolError, Unavailable
from msearchd.service import REQUESTER, TaskService

log = logging.getLogger("msearchd.rpc")

_PEERCRED = struct.Struct("3i")  # pid, uid, gid
# Answers queue up to this many bytes on a connection before its handler waits for the client to read.
WRITE_BUFFER = 256 * 1024


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end, as the kernel vouches for them."""
    pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return pid, uid


def prepare_socket_dir(path: Path) -> None:
    """Create the socket's folder private to this user; refuse a folder someone else owns.

    An existing folder is never chmod-ed (it may be shared, like /tmp); the socket itself is 0600 and
    every peer's uid is checked.
    """
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
        folder.chmod(0o700)  # mkdir's mode is filtered by the umask
    st = folder.lstat()
    if st.st_uid != os.getuid():
        raise InvalidArgument(f"socket folder {folder} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & 0o077:
        log.warning("socket folder %s is open to other users; the socket itself is 0600", folder)


class RpcServer:
    def __init__(self, service: TaskService, path: Path, on_shutdown: Callable[[], None]) -> None:
        self.service = service
        self.path = path
        self._on_shutdown = on_shutdown
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._stopping = False
        svc = service
        self._methods: dict[str, Callable[..., Awaitable[Any]]] = {
            "submit": svc.submit,
            "submit_many": svc.submit_many,
            "get": svc.get,
            "list": svc.list_tasks,
            "count": svc.count,
            "stats": svc.stats,
            "cancel": svc.cancel,
            "cancel_all": svc.cancel_all,
            "cancel_by_type": svc.cancel_by_type,
            "set_priority": svc.set_priority,
            "retry": svc.retry,
            "retry_failed": svc.retry_failed,
            "wait": svc.wait,
            "history": svc.history,
            "status": svc.status,
            "shutdown": self._shutdown,
        }

    async def _shutdown(self) -> dict[str, Any]:
        asyncio.get_running_loop().call_soon(self._on_shutdown)
        return {"stopping": True}

    async def start(self) -> None:
        prepare_socket_dir(self.path)
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=2**20)
        finally:
            os.umask(old_umask)
        self.path.chmod(0o600)

    def stop_accepting(self) -> None:
        """Take no new connections, and answer new requests on open ones with `unavailable`."""
        self._stopping = True
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        self.stop_accepting()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        for conn in list(self._connections):
            conn.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        current = asyncio.current_task()
        assert current is not None
        self._connections.add(current)
        try:
            pid, uid = peer_credentials(writer.get_extra_info("socket"))
            if uid != os.getuid():
                log.warning("refused a connection from uid %d (pid %d)", uid, pid)
                return
            REQUESTER.set((uid, pid))  # this connection's task and the calls it makes see it
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("connection handler failed")
        finally:
            self._connections.discard(current)
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        greeted = False
        while True:
            try:
                message = await protocol.read_frame(reader)
            except ProtocolError as exc:
                # The stream cannot be resynchronised after a bad frame: answer once, then close.
                writer.write(protocol.encode({"id": None, "error": exc.to_wire()}))
                await writer.drain()
                return
            if message is None:
                return
            req_id = message.get("id")
            method = message.get("method")
            try:
                if not isinstance(method, str):
                    raise ProtocolError("a request needs a method name")
                params = protocol.check_params(method, message.get("params"))
                if method == "hello":
                    result = self._hello(params)
                    greeted = True
                elif not greeted:
                    raise ProtocolError("the first request on a connection must be hello")
                elif self._stopping:
                    raise Unavailable("msearchd is stopping")
                elif method == "subscribe":
                    await self._stream(reader, writer, req_id, params)
                    return
                else:
                    result = await self._methods[method](**params)
                answer = {"id": req_id, "result": result}
            except MsearchError as exc:
                answer = {"id": req_id, "error": exc.to_wire()}
            except Exception as exc:
                log.exception("%s failed", method)
                answer = {
                    "id": req_id,
                    "error": InternalError(f"internal error in {method}: {exc}").to_wire(),
                }
            writer.write(protocol.encode(answer))
            if writer.transport.get_write_buffer_size() > WRITE_BUFFER:
                await writer.drain()  # a client that does not read its answers waits, alone

    @staticmethod
    def _hello(params: dict[str, Any]) -> dict[str, Any]:
        from msearchd import __version__

        if params["protocol"] != protocol.PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {params['protocol']} is not supported; this daemon speaks "
                f"{protocol.PROTOCOL_VERSION}"
            )
        return {"protocol": protocol.PROTOCOL_VERSION, "server": f"msearchd {__version__}"}

    async def _stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req_id: Any, params: dict[str, Any]
    ) -> None:
        """Turn the connection into a stream of events until the client closes it."""
        sub = self.service.subscribe(**params)
        closed = asyncio.ensure_future(reader.read(1))  # anything, or the end: the client is done
        try:
            writer.write(protocol.encode({"id": req_id, "result": {"subscribed": True}}))
            await writer.drain()
            while True:
                getter = asyncio.ensure_future(sub.next())
                done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return
                event = {k: v for k, v in getter.result().items() if k != "task_id_n"}
                writer.write(protocol.encode({"event": event}))
                await writer.drain()
                if event["event"] in ("overflow", "shutdown"):
                    return
        finally:
            closed.cancel()
            self.service.unsubscribe(sub)
