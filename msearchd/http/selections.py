"""Cancel, priority and retry over a selection of tasks, with a dry run: paths beyond the API document."""

# The answers are in Chinese, like the API document's.
# ruff: noqa: RUF001

from __future__ import annotations

from typing import Any

from fastapi import Request

from msearchd.http.answers import ApiJSON, OperationAnswer, answers
from msearchd.http.bodies import (
    FilterBody,
    FilterCancelBody,
    FilterPriorityBody,
    openapi_body,
    read_body,
)
from msearchd.http.routes import ask, route


async def _run(request: Request, method: str, body: FilterBody, **more: Any) -> dict[str, Any]:
    run: dict[str, Any] = {"dry_run": body.dry_run, "up_to": body.up_to, "expect": body.expect}
    return dict(await ask(request, method, select=body.select, **run, **more))


def _preview_or(result: dict[str, Any], done: str) -> ApiJSON:
    message = f"预览：将涉及{result['count']}个任务" if result.get("dry_run") else done
    if result.get("changed_meanwhile"):
        message += f"（预览时为{result['previewed']}个，其间有任务状态变化）"
    return ApiJSON({"success": True, "message": message, "result": result})


@route(
    "POST",
    "/selection/cancel",
    responses=answers(OperationAnswer, body=True),
    openapi_extra=openapi_body(FilterCancelBody),
    summary="按条件取消任务（可预览）",
)
async def cancel_selected(request: Request) -> ApiJSON:
    """Cancel the selected waiting tasks (running ones with cancel_running) and their dependents."""
    body = await read_body(request, FilterCancelBody)
    result = await _run(request, "cancel_selected", body, running=body.cancel_running)
    return _preview_or(result, f"已取消{result.get('cancelled', 0)}个任务")


@route(
    "POST",
    "/selection/priority",
    responses=answers(OperationAnswer, body=True),
    openapi_extra=openapi_body(FilterPriorityBody),
    summary="按条件调整优先级（可预览）",
)
async def set_priority_selected(request: Request) -> ApiJSON:
    """Give the selected pending and blocked tasks one priority."""
    body = await read_body(request, FilterPriorityBody)
    result = await _run(request, "set_priority_selected", body, priority=body.priority)
    return _preview_or(result, f"已调整{result.get('changed', 0)}个任务的优先级")


@route(
    "POST",
    "/selection/retry",
    responses=answers(OperationAnswer, body=True),
    openapi_extra=openapi_body(FilterBody),
    summary="按条件重试失败任务（可预览）",
)
async def retry_selected(request: Request) -> ApiJSON:
    """Retry the selected failed tasks not yet retried, oldest first."""
    body = await read_body(request, FilterBody)
    result = await _run(request, "retry_selected", body)
    return _preview_or(result, f"已重试{result.get('retried', 0)}个任务")
