"""The batch paths: one request for a selection of tasks (retry, cancel, priority), answered task by
task, for the task manager page's batch actions and for curl users alike."""

# The answers are in Chinese, like the API document's, and use its full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request

from msearchd.http.answers import ApiJSON, BatchAnswer, answers
from msearchd.http.bodies import (
    CancelSelectionBody,
    PrioritySelectionBody,
    SelectionBody,
    openapi_body,
    read_body,
)
from msearchd.http.routes import Operation, ask, refusal, route


def _why(operation: Operation, result: dict[str, Any], running: bool) -> str:
    """A refused task's reason in the API document's words, from its error code and status."""
    if result.get("code") == "not_found" or result.get("status") is None:
        return "任务不存在"
    return refusal(operation, result["task_id"], result, result["error"], running)


def _answer(
    operation: Operation,
    done: Callable[[int], str],
    result: dict[str, Any],
    cancel_running: bool = False,
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
    result = await ask(request, "retry", task_ids=body.task_ids)
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
    result = await ask(request, "cancel", task_ids=body.task_ids, running=running)
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
    result = await ask(request, "set_priority", task_ids=body.task_ids, priority=priority)
    return _answer("priority", lambda n: f"已将{n}个任务的优先级设为{priority}", result)
