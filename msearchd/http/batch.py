"""The batch paths: one request for a selection of tasks (retry, cancel, priority), answered task by
task, for the task manager page's batch actions and for curl users alike."""

# The answers are in Chinese, like the API document's, and use its full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from fastapi import Request

from msearchd.errors import MsearchError
from msearchd.http.answers import ApiJSON, BatchAnswer, answers, daemon_error
from msearchd.http.bodies import (
    CancelSelectionBody,
    PrioritySelectionBody,
    SelectionBody,
    openapi_body,
    read_body,
)
from msearchd.http.link import daemon_link
from msearchd.http.routes import route
from msearchd.model import TaskStatus


def _why(operation: str, result: dict[str, Any], cancel_running: bool = False) -> str:
    """A refused task's reason in the API document's words, from its error code and status."""
    status = result.get("status")
    if result.get("code") == "not_found" or status is None:
        return "任务不存在"
    if operation == "retry":
        if status == TaskStatus.FAILED and result.get("retried_as"):
            return f"任务已经重试过: {result['task_id']} -> {result['retried_as']}"
        return f"任务状态不是失败，无法重试: {status}"
    if operation == "cancel":
        if status == TaskStatus.RUNNING and not cancel_running:
            return "任务正在运行，需设置cancel_running=true才能取消"
        return f"任务已结束（{status}），无法取消"
    return f"任务状态不是等待中，无法修改优先级: {status}"


def _answer(
    operation: str, done: Callable[[int], str], result: dict[str, Any], cancel_running: bool = False
) -> ApiJSON:
    results = []
    for r in result["results"]:
        if r["success"]:
            results.append(r)
        else:
            out = {k: r[k] for k in ("task_id", "success", "status", "retried_as") if k in r}
            results.append({**out, "error": _why(operation, r, cancel_running)})
    succeeded, failed = result["succeeded"], result["failed"]
    message = done(succeeded) + (f"，{failed}个失败" if failed else "")
    return ApiJSON(
        {
            "success": failed == 0,
            "message": message,
            "results": results,
            "succeeded": succeeded,
            "failed": failed,
        }
    )


async def _batch(request: Request, method: str, **params: Any) -> dict[str, Any]:
    try:
        return cast(dict[str, Any], await daemon_link(request).call(method, **params))
    except MsearchError as exc:
        raise daemon_error(exc, "任务不存在") from None


@route(
    "POST",
    "/tasks/retry",
    responses=answers(BatchAnswer, body=True),
    openapi_extra=openapi_body(SelectionBody),
    summary="批量重试失败任务",
)
async def retry_tasks(request: Request) -> ApiJSON:
    """Retry the failed tasks of a selection in one request, answered task by task: a task that did not
    fail (or was retried already, or does not exist) is a result with the reason, never skipped."""
    body = await read_body(request, SelectionBody)
    result = await _batch(request, "retry", task_ids=body.task_ids)
    return _answer("retry", lambda n: f"已重试{n}个任务", result)


@route(
    "POST",
    "/tasks/cancel",
    responses=answers(BatchAnswer, body=True),
    openapi_extra=openapi_body(CancelSelectionBody),
    summary="批量取消任务",
)
async def cancel_tasks(request: Request) -> ApiJSON:
    """Cancel a selection in one request, answered task by task; running ones only with cancel_running."""
    body = await read_body(request, CancelSelectionBody)
    running = body.cancel_running
    result = await _batch(request, "cancel", task_ids=body.task_ids, running=running)
    return _answer("cancel", lambda n: f"已取消{n}个任务", result, running)


@route(
    "POST",
    "/tasks/priority",
    responses=answers(BatchAnswer, body=True),
    openapi_extra=openapi_body(PrioritySelectionBody),
    summary="批量更新任务优先级",
)
async def set_priorities(request: Request) -> ApiJSON:
    """Give each waiting task of a selection a new priority, answered task by task."""
    body = await read_body(request, PrioritySelectionBody)
    priority = body.priority
    result = await _batch(request, "set_priority", task_ids=body.task_ids, priority=priority)
    return _answer("priority", lambda n: f"已将{n}个任务的优先级设为{priority}", result)
