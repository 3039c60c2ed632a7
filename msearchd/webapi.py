"""REST paths the task manager page needs beyond the API document's: batches of one request for a
selection of tasks, a task's history with its dependents, a command's log, and signing in.

curl users get them as well: the page does nothing a client of the REST paths cannot do.
"""

# The answers are in Chinese, like the API document's, and use its full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, Any, cast

from fastapi import Query, Request
from pydantic import BaseModel

from msearchd import webpage
from msearchd.errors import MsearchError
from msearchd.http import (
    CANCEL_RUNNING,
    OFFSET_MAX,
    PRIORITY,
    TASK_ID_PATTERN,
    ApiError,
    ApiJSON,
    BodyParam,
    ErrorBody,
    TaskIdPath,
    answers,
    body_doc,
    daemon_error,
    json_task_ids,
    link,
    no_query,
    read_params,
    ref,
    route,
    task_number,
)
from msearchd.model import TaskStatus

SELECTION_MAX = 10_000

TASK_IDS = BodyParam(
    "task_ids",
    f"所选任务的ID（task_<n> 或 <n>），1到{SELECTION_MAX}个；重复的只算一次",
    {
        "type": "array",
        "minItems": 1,
        "maxItems": SELECTION_MAX,
        "items": {
            "anyOf": [
                {"type": "string", "pattern": TASK_ID_PATTERN},
                {"type": "integer", "minimum": 1, "maximum": 10**18 - 1},
            ]
        },
    },
    json_task_ids,
    required=True,
)


def json_token(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"参数{name}必须是字符串")
    return value


TOKEN = BodyParam(
    "token", "访问令牌（与 Authorization: Bearer 相同）", {"type": "string"}, json_token, required=True
)


# --- documentation models ------------------------------------------------------------------------------


class TaskResult(BaseModel):
    task_id: str
    success: bool
    new_task_id: str | None = None
    status: str | None = None
    priority: int | None = None
    retried_as: str | None = None
    error: str | None = None


class BatchAnswer(BaseModel):
    success: bool
    message: str
    results: list[TaskResult]
    succeeded: int
    failed: int


class HistoryAnswer(BaseModel):
    task_id: str
    history: list[dict[str, Any]]
    dependents: list[str]


class LogAnswer(BaseModel):
    task_id: str
    text: str
    offset: int
    size: int
    status: str


class SessionAnswer(BaseModel):
    success: bool
    message: str


# --- batches -------------------------------------------------------------------------------------------


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
        return cast(dict[str, Any], await link(request).call(method, **params))
    except MsearchError as exc:
        raise daemon_error(exc, "任务不存在") from None


@route(
    "POST",
    "/tasks/retry",
    responses=answers(BatchAnswer, body=True),
    openapi_extra=body_doc((TASK_IDS,)),
    summary="批量重试失败任务",
)
async def retry_tasks(request: Request) -> ApiJSON:
    """Retry the failed tasks of a selection in one request, answered task by task: a task that did not
    fail (or was retried already, or does not exist) is a result with the reason, never skipped."""
    params = await read_params(request, (TASK_IDS,))
    result = await _batch(request, "retry", task_ids=params["task_ids"])
    return _answer("retry", lambda n: f"已重试{n}个任务", result)


@route(
    "POST",
    "/tasks/cancel",
    responses=answers(BatchAnswer, body=True),
    openapi_extra=body_doc((TASK_IDS, CANCEL_RUNNING)),
    summary="批量取消任务",
)
async def cancel_tasks(request: Request) -> ApiJSON:
    """Cancel a selection in one request, answered task by task; running ones only with cancel_running."""
    params = await read_params(request, (TASK_IDS, CANCEL_RUNNING))
    running = params.get("cancel_running", False)
    result = await _batch(request, "cancel", task_ids=params["task_ids"], running=running)
    return _answer("cancel", lambda n: f"已取消{n}个任务", result, running)


@route(
    "POST",
    "/tasks/priority",
    responses=answers(BatchAnswer, body=True),
    openapi_extra=body_doc((TASK_IDS, PRIORITY)),
    summary="批量更新任务优先级",
)
async def set_priorities(request: Request) -> ApiJSON:
    """Give each waiting task of a selection a new priority, answered task by task."""
    params = await read_params(request, (TASK_IDS, PRIORITY))
    result = await _batch(request, "set_priority", task_ids=params["task_ids"], priority=params["priority"])
    priority = params["priority"]
    return _answer("priority", lambda n: f"已将{n}个任务的优先级设为{priority}", result)


# --- one task's past and log ----------------------------------------------------------------------------


def _number(task_id: str) -> int:
    n = task_number(task_id)
    if n is None:
        raise ApiError(404, f"任务不存在: {task_id}")
    return n


@route("GET", "/tasks/{task_id}/history", responses=answers(HistoryAnswer, 404), summary="任务历史与被依赖")
async def task_history(request: Request, task_id: TaskIdPath) -> ApiJSON:
    """What happened to a task and who asked (oldest first), and the tasks that depend on it."""
    no_query(request, ())
    n = _number(task_id)
    daemon = link(request)
    try:
        history = await daemon.call("history", task_id=n)
        dependents = await daemon.call("dependents", task_id=n)
    except MsearchError as exc:
        raise daemon_error(exc, f"任务不存在: {ref(n)}") from None
    return ApiJSON({"task_id": ref(n), "history": history, "dependents": dependents})


@route("GET", "/tasks/{task_id}/log", responses=answers(LogAnswer, 404), summary="任务日志（command 任务）")
async def task_log(
    request: Request,
    task_id: TaskIdPath,
    offset: Annotated[int, Query(ge=0, le=OFFSET_MAX, description="从日志的第几个字节读起")] = 0,
) -> ApiJSON:
    """A piece of a command task's log from `offset` (up to 256 KiB); ask again from the answer's
    `offset` to follow a running task's log as it grows."""
    no_query(request, ("offset",))
    n = _number(task_id)
    try:
        return ApiJSON(await link(request).call("read_log", task_id=n, offset=offset))
    except MsearchError as exc:
        raise daemon_error(exc, f"任务不存在: {ref(n)}") from None


# --- signing in ----------------------------------------------------------------------------------------


@route(
    "POST",
    "/session",
    responses={**answers(SessionAnswer, body=True), 401: {"model": ErrorBody, "description": "令牌无效"}},
    openapi_extra=body_doc((TOKEN,)),
    summary="用访问令牌登录任务管理器页面",
)
async def sign_in(request: Request) -> ApiJSON:
    """Exchange the token for an HttpOnly, SameSite=Strict cookie that stands for it on this service's
    own pages (changes must still come from its own origin). Without a token configured, nothing to do."""
    params = await read_params(request, (TOKEN,))
    token = cast(bytes | None, request.app.state.token)
    if token is None:
        return ApiJSON({"success": True, "message": "未设置令牌，无需登录"})
    if not hmac.compare_digest(params["token"].encode(), token):
        raise ApiError(401, "令牌无效")
    return ApiJSON(
        {"success": True, "message": "已登录"}, headers={"Set-Cookie": webpage.session_cookie(token)}
    )


@route("DELETE", "/session", responses=answers(SessionAnswer), summary="退出登录")
async def sign_out(request: Request) -> ApiJSON:
    """Forget the cookie in this browser."""
    no_query(request, ())
    return ApiJSON(
        {"success": True, "message": "已退出登录"}, headers={"Set-Cookie": webpage.signed_out_cookie()}
    )
