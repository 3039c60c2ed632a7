"""The queue's state, pause, resume and drain: paths beyond the API document."""

# The answers are in Chinese, like the API document's.
# ruff: noqa: RUF001

from __future__ import annotations

from fastapi import Request

from msearchd.http.answers import ApiJSON, OperationAnswer, answers
from msearchd.http.bodies import DRAIN_TIMEOUT_MAX, DrainBody, QueueBody, openapi_body, read_body
from msearchd.http.params import no_query
from msearchd.http.routes import ask, route


@route("GET", "/queue", responses=answers(OperationAnswer), summary="队列状态（暂停情况）")
async def queue_state(request: Request) -> ApiJSON:
    """What is paused (type * is the whole queue), since when, by whom; the latest pauses and resumes."""
    no_query(request, ())
    result = await ask(request, "queue")
    return ApiJSON({"success": True, "message": "队列状态", "result": result})


@route(
    "POST",
    "/queue/pause",
    responses=answers(OperationAnswer, body=True),
    openapi_extra=openapi_body(QueueBody),
    summary="暂停队列（或某些类型）",
)
async def pause(request: Request) -> ApiJSON:
    """No new task (of these types) starts; running ones go on. Holds across daemon restarts."""
    body = await read_body(request, QueueBody)
    result = await ask(request, "pause", types=body.types)
    return ApiJSON({"success": True, "message": "已暂停", "result": result})


@route(
    "POST",
    "/queue/resume",
    responses=answers(OperationAnswer, body=True),
    openapi_extra=openapi_body(QueueBody),
    summary="恢复队列（或某些类型）",
)
async def resume(request: Request) -> ApiJSON:
    """Let tasks of these types (of every paused one) start again."""
    body = await read_body(request, QueueBody)
    result = await ask(request, "resume", types=body.types)
    return ApiJSON({"success": True, "message": "已恢复", "result": result})


@route(
    "POST",
    "/queue/drain",
    responses=answers(OperationAnswer, body=True),
    openapi_extra=openapi_body(DrainBody),
    summary="排空队列：暂停并等待运行中的任务结束",
)
async def drain(request: Request) -> ApiJSON:
    """Pause, then wait until nothing (of these types) runs; drained says whether it got there."""
    body = await read_body(request, DrainBody)
    timeout = DRAIN_TIMEOUT_MAX if body.timeout is None else body.timeout
    result = await ask(request, "drain", types=body.types, timeout=timeout)
    message = "已排空" if result["drained"] else f"超时，仍在运行: {', '.join(result['running'])}"
    return ApiJSON({"success": True, "message": message, "result": result})
