"""The shim's connections to the daemon: a pool of RPC clients, and the sentences for a daemon away."""

# The answers are in Chinese, like the API document's, and use its full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from fastapi import Request

from msearchd.client import AsyncClient
from msearchd.errors import (
    InvalidArgument,
    MsearchError,
    ProtocolError,
    Unavailable,
)

log = logging.getLogger("msearchd.http")

RPC_TIMEOUT = 60.0
MAX_CONNECTIONS = 64


class DaemonAway(Unavailable):
    """The daemon could not be asked, said in the API document's language."""


_SOCKET_ERRORS = {
    errno.ENOENT: "套接字不存在",
    errno.ECONNREFUSED: "没有进程在此套接字上监听",
    errno.EACCES: "没有权限连接此套接字",
}


async def connect_daemon(socket_path: Path, timeout: float) -> AsyncClient:
    """A new RPC connection; DaemonAway with the socket's path and why, if there is none."""
    try:
        return await asyncio.wait_for(AsyncClient.connect(socket_path), timeout)
    except TimeoutError:
        raise DaemonAway(f"{socket_path} 在{timeout:g}秒内没有回应连接") from None
    except Unavailable as exc:
        # The client raises it from the OSError of the connect, when there is one.
        cause = exc.__context__
        why = _SOCKET_ERRORS.get(cause.errno or 0) if isinstance(cause, OSError) else exc.message
        where = f"{socket_path}（{why}）" if why else str(socket_path)
        raise DaemonAway(f"无法连接 {where}，守护进程是否在运行？") from None


class DaemonLink:
    """A pool of RPC connections: requests run side by side, and a slow one (a cancel waiting out a
    grace period) holds only its own connection."""

    def __init__(
        self, socket_path: Path, timeout: float = RPC_TIMEOUT, max_connections: int = MAX_CONNECTIONS
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._idle: list[AsyncClient] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def _take(self) -> AsyncClient:
        while self._idle:
            client = self._idle.pop()
            if not client.closed:  # the daemon closed it (it restarted): never reuse that one
                return client
            await self._discard(client)
        return await connect_daemon(self.socket_path, self.timeout)

    @staticmethod
    async def _discard(client: AsyncClient) -> None:
        with contextlib.suppress(Exception):
            await client.close()

    async def call(self, method: str, **params: Any) -> Any:
        return await self._ask(method, lambda client: client.call(method, **params))

    async def list_tasks(
        self, status: str | None, task_type: str | None, limit: int, offset: int, order: str
    ) -> Any:
        """`list` as the client asks it: in halves, if its answer would not fit in a frame."""
        return await self._ask("list", lambda client: client.list(status, task_type, limit, offset, order))

    async def _ask(self, method: str, ask: Callable[[AsyncClient], Awaitable[Any]]) -> Any:
        async with self._slots:
            client = await self._take()
            try:
                result = await asyncio.wait_for(ask(client), self.timeout)
            except MsearchError as exc:
                if isinstance(exc, Unavailable | ProtocolError):
                    await self._discard(client)
                else:
                    self._idle.append(client)
                raise
            except TimeoutError:
                await self._discard(client)
                raise DaemonAway(f"守护进程未在{self.timeout:g}秒内回答{method}请求") from None
            except (OverflowError, ValueError, TypeError) as exc:  # msgpack cannot encode the request
                await self._discard(client)
                raise InvalidArgument(f"cannot send this request to msearchd: {exc}") from None
            except BaseException:
                await self._discard(client)
                raise
            self._idle.append(client)
            return result

    async def close(self) -> None:
        while self._idle:
            await self._discard(self._idle.pop())


def daemon_link(request: Request) -> DaemonLink:
    return cast(DaemonLink, request.app.state.link)
