"""GET /api/v1/events: the daemon's event stream as Server-Sent Events, a bounded number at once."""

# The answers are in Chinese, like the API document's, and use its full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Annotated, Any, cast

from fastapi import Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from msearchd.client import AsyncEventStream
from msearchd.errors import (
    MsearchError,
)
from msearchd.http.answers import ApiError, ErrorBody, answers, daemon_error, json_safe
from msearchd.http.link import DaemonAway, connect_daemon, daemon_link
from msearchd.http.params import bad, no_query, task_number
from msearchd.http.routes import route

log = logging.getLogger("msearchd.http")

SSE_KEEPALIVE = 15.0
# Each stream holds a connection to the client and one to the daemon, for as long as the client likes.
MAX_EVENT_STREAMS = 32


class StreamSlots:
    """How many event streams are open, so that clients cannot pile up connections to the daemon."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> None:
        if self.open >= self.limit:
            raise ApiError(503, f"同时打开的事件流已达上限（{self.limit}个），请先关闭不用的事件流再试")
        self.open += 1
        log.debug("event stream opened (%d open)", self.open)

    def give_back(self) -> None:
        self.open -= 1
        log.debug("event stream closed (%d open)", self.open)


class EventStreamResponse(StreamingResponse):
    """Server-Sent Events that close the daemon's stream and give the slot back when the response ends,
    however it ends: the client vanished (even before the first frame), the daemon stopped, or an error."""

    def __init__(
        self, frames: AsyncGenerator[bytes, None], stream: AsyncEventStream, slots: StreamSlots
    ) -> None:
        super().__init__(frames, media_type="text/event-stream", headers={"Cache-Control": "no-store"})
        self._frames = frames
        self._stream = stream
        self._slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._frames.aclose()  # cancels a pending read; no-op once it has ended
                await self._stream.close()
            finally:
                self._slots.give_back()


async def _subscribe(
    socket_path: Path, timeout: float, ids: list[str | int] | None, types: list[str] | None
) -> AsyncEventStream:
    """A subscription on a connection of its own, refused with the same sentences as other requests."""
    try:
        connection = await connect_daemon(socket_path, timeout)
    except MsearchError as exc:
        raise daemon_error(exc, "任务不存在") from None
    try:
        await asyncio.wait_for(connection.call("subscribe", task_ids=ids, types=types), timeout)
    except TimeoutError:
        await connection.close()
        raise daemon_error(
            DaemonAway(f"守护进程未在{timeout:g}秒内回答subscribe请求"), "任务不存在"
        ) from None
    except MsearchError as exc:
        await connection.close()
        raise daemon_error(exc, "任务不存在") from None
    except BaseException:
        await connection.close()
        raise
    return AsyncEventStream(connection)


@route(
    "GET",
    "/events",
    responses={
        200: {
            "description": "事件流（text/event-stream）：每个事件一条 `event: <类型>` 与 `data: <JSON>`",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **{code: v for code, v in answers(ErrorBody).items() if code != 200},
        503: {"model": ErrorBody, "description": "msearchd 守护进程不可用，或同时打开的事件流已达上限"},
    },
    response_class=StreamingResponse,
    summary="实时任务事件（Server-Sent Events）",
)
async def events(
    request: Request,
    task_id: Annotated[
        str | None, Query(pattern=r"^[\w,]+$", description="只要这些任务的事件，多个用逗号分隔")
    ] = None,
    task_type: Annotated[
        str | None, Query(pattern=r"^[\w.:,-]+$", description="只要这些类型的任务的事件，多个用逗号分隔")
    ] = None,
) -> StreamingResponse:
    """Live task events (submitted, started, progress, priority_changed, cancelled, failed, completed,
    retried, ...), the daemon's event stream as Server-Sent Events. Progress a slow client has not read yet
    is coalesced to the latest value; one that falls far behind gets an `overflow` event and is dropped.
    The number of streams open at once is capped (503 beyond)."""
    no_query(request, ("task_id", "task_type"))
    ids: list[str | int] | None = None
    if task_id:
        numbers = [task_number(t) for t in task_id.split(",") if t]
        if None in numbers:
            raise bad(f"参数task_id的值无效: {task_id!r}（task_<n> 或 <n>，多个用逗号分隔）")
        ids = [n for n in numbers if n is not None]
    types = [t for t in task_type.split(",") if t] if task_type else None
    slots = cast(StreamSlots, request.app.state.event_streams)
    slots.take()
    try:
        daemon = daemon_link(request)
        stream = await _subscribe(daemon.socket_path, daemon.timeout, ids, types)
    except BaseException:
        slots.give_back()
        raise

    async def frames() -> AsyncGenerator[bytes, None]:
        yield b": subscribed\n\n"  # the subscription is live from here
        number = 0
        pending: asyncio.Task[dict[str, Any]] | None = None
        try:
            while True:
                pending = pending or asyncio.ensure_future(anext(stream))
                done, _ = await asyncio.wait({pending}, timeout=SSE_KEEPALIVE)
                if not done:
                    yield b": keepalive\n\n"  # lets a vanished client be noticed
                    continue
                try:
                    event = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                number += 1
                data = json.dumps(json_safe(event), ensure_ascii=False)
                yield f"id: {number}\nevent: {event['event']}\ndata: {data}\n\n".encode()
        finally:
            if pending is not None:
                pending.cancel()

    return EventStreamResponse(frames(), stream, slots)
