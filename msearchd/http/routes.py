"""The task routes of the API document, under /api/v1."""

# The answers are in Chinese, like the API document's, and use its full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, cast

from fastapi import Query, Request
from starlette.exceptions import HTTPException

from msearchd.errors import (
    InvalidState,
    MsearchError,
)
from msearchd.http.answers import (
    ApiError,
    ApiJSON,
    CancelAllAnswer,
    CancelAnswer,
    CancelByTypeAnswer,
    HistoryAnswer,
    LogAnswer,
    PriorityAnswer,
    RetryAnswer,
    Stats,
    SubmitAnswer,
    Task,
    TaskList,
    answers,
    daemon_error,
)
from msearchd.http.bodies import (
    CancelBody,
    NoBody,
    PriorityBody,
    SubmitBody,
    TypeCancelBody,
    openapi_body,
    read_body,
)
from msearchd.http.link import daemon_link
from msearchd.http.params import (
    LIST_LIMIT_MAX,
    OFFSET_MAX,
    STATUS_PATTERN,
    TYPE_PATTERN,
    TaskIdPath,
    no_query,
    task_number,
)
from msearchd.model import TaskStatus

log = logging.getLogger("msearchd.http")

PREFIX = "/api/v1"
Operation = Literal["cancel", "priority", "retry"]  # on one task, or on each of a batch
ROUTES: list[tuple[str, str, Callable[..., Any], dict[str, Any]]] = []


def route(method: str, path: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Record a route; `create_app` adds them in this order, fixed paths before /tasks/{task_id}."""

    def record(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        ROUTES.append((method, PREFIX + path, endpoint, options))
        return endpoint

    return record


def is_fixed_path(path: str) -> bool:
    """Whether a path is one of the routes without parameters, such as /tasks/cancel-all."""
    return any(path == fixed for _, fixed, _, _ in ROUTES if "{" not in fixed)


def ref(n: int) -> str:
    return f"task_{n}"


async def ask(request: Request, method: str, missing: str = "任务不存在", **params: Any) -> Any:
    """Call the daemon; what it refuses becomes the API's error (`missing`: what a 404 says)."""
    try:
        return await daemon_link(request).call(method, **params)
    except MsearchError as exc:
        raise daemon_error(exc, missing) from None


@route("GET", "/tasks/stats", responses=answers(Stats), summary="获取任务统计信息")
async def get_stats(request: Request) -> ApiJSON:
    """Counts by status and by type, and how many workers are busy."""
    no_query(request, ())
    return ApiJSON(await ask(request, "stats"))


@route("GET", "/tasks", responses=answers(TaskList), summary="获取任务列表")
async def list_tasks(
    request: Request,
    status: Annotated[
        str | None,
        Query(
            pattern=STATUS_PATTERN, description="只列出这些状态的任务，多个用逗号分隔，例如 pending,running"
        ),
    ] = None,
    task_type: Annotated[str | None, Query(pattern=TYPE_PATTERN, description="只列出这一类型的任务")] = None,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX, description="最多返回多少个")] = 100,
    offset: Annotated[int, Query(ge=0, le=OFFSET_MAX, description="跳过前面多少个")] = 0,
    order: Annotated[
        Literal["oldest", "newest"], Query(description="oldest：先提交的在前（默认）；newest：新的在前")
    ] = "oldest",
) -> ApiJSON:
    """Tasks in submission order (or newest first), with the total that match the filters (for paging)."""
    no_query(request, ("status", "task_type", "limit", "offset", "order"))
    daemon = daemon_link(request)
    try:
        tasks, total = await asyncio.gather(
            daemon.list_tasks(status, task_type, limit, offset, order),
            daemon.call("count", status=status, type=task_type),
        )
    except MsearchError as exc:
        raise daemon_error(exc, "任务不存在") from None
    return ApiJSON({"tasks": tasks, "total": total, "limit": limit, "offset": offset})


@route(
    "POST",
    "/tasks",
    status_code=201,
    responses=answers(SubmitAnswer, 404, 409, body=True, ok_status=201),
    openapi_extra=openapi_body(SubmitBody),
    summary="提交任务",
)
async def submit_task(request: Request) -> ApiJSON:
    """Queue one task (JSON body). 404/409: a dependency is unknown or was cancelled."""
    body = await read_body(request, SubmitBody)
    try:
        task = await daemon_link(request).call(
            "submit",
            type=body.type,
            data=body.data,
            priority=body.priority,
            depends_on=body.depends_on,
            **({"key": body.key, "on_conflict": body.on_conflict} if body.key is not None else {}),
            **({"running": body.replace_running} if body.replace_running else {}),
        )
    except MsearchError as exc:
        raise daemon_error(
            exc, f"依赖的任务不存在（{exc.message}）", f"依赖的任务已取消（{exc.message}）"
        ) from None
    kept = task.get("key_outcome") == "kept"  # nothing new: the task that holds the key
    return ApiJSON(
        {
            "success": True,
            "message": f"已有相同键的任务: {task['id']}" if kept else f"任务已提交: {task['id']}",
            "data": {"task_id": task["id"], "task": task},
        },
        200 if kept else 201,
    )


def _number(task_id: str, missing: str | None = None) -> int:
    """The task number of a path's id; 404 with `missing` (the route's own words) for one that is none."""
    n = task_number(task_id)
    if n is None:
        raise ApiError(404, missing or f"任务不存在: {task_id}")
    return n


@route("GET", "/tasks/{task_id}", responses=answers(Task, 404), summary="获取单个任务详情")
async def get_task(request: Request, task_id: TaskIdPath) -> ApiJSON:
    """Everything about one task."""
    if is_fixed_path(request.scope["path"]):
        raise HTTPException(405)  # /tasks/cancel-all is no task: it is a path of its own, for POST
    no_query(request, ())
    n = _number(task_id)
    return ApiJSON(await ask(request, "get", f"任务不存在: {ref(n)}", task_id=n))


def refusal(
    operation: Operation,
    task_id: str,
    now: Mapping[str, Any] | None,
    message: str,
    cancel_running: bool = False,
) -> str:
    """Why the daemon refused an operation on a task, in the API document's words, from the task as it
    is now (`status`, `retried_as`; None when that is unknown) and the daemon's own sentence, for what
    the status does not explain."""
    status = now.get("status") if now is not None else None
    if operation == "retry":
        if status == TaskStatus.FAILED and now is not None and now.get("retried_as"):
            return f"任务已经重试过: {task_id} -> {now['retried_as']}"
        if status is not None and status != TaskStatus.FAILED:
            return f"任务状态不是失败，无法重试: {status}"
        return f"任务无法重试: {task_id}（{message}）"
    if operation == "cancel":
        if status == TaskStatus.RUNNING and not cancel_running:
            return "任务正在运行，需设置cancel_running=true才能取消"
        if status is not None:
            return f"任务已结束（{status}），无法取消"
        return f"任务无法取消: {task_id}（{message}）"
    return f"任务状态不是等待中，无法修改优先级: {status if status is not None else message}"


_METHODS: dict[str, str] = {"cancel": "cancel", "priority": "set_priority", "retry": "retry"}


async def _act(request: Request, n: int, operation: Operation, missing: str, **params: Any) -> Any:
    """Call the daemon's operation on task n. A refusal (409) says why in the document's words: the
    task is read again for its state."""
    daemon = daemon_link(request)
    try:
        return await daemon.call(_METHODS[operation], task_id=n, **params)
    except InvalidState as exc:
        try:
            now = cast(dict[str, Any], await daemon.call("get", task_id=n))
        except MsearchError:
            now = None
        why = refusal(operation, ref(n), now, exc.message, params.get("running", False))
        if operation == "cancel" and now is not None:
            why += f": {ref(n)}"  # the document names the task in a cancel's refusal
        raise ApiError(409, why) from None
    except MsearchError as exc:
        raise daemon_error(exc, missing) from None


@route(
    "POST",
    "/tasks/cancel-all",
    responses=answers(CancelAllAnswer, body=True),
    openapi_extra=openapi_body(CancelBody),
    summary="取消所有任务",
)
async def cancel_all(request: Request) -> ApiJSON:
    """Cancel every waiting task, and with cancel_running=true the running ones too."""
    body = await read_body(request, CancelBody)
    result = await ask(request, "cancel_all", running=body.cancel_running)
    return ApiJSON({"success": True, "message": f"已取消{result['cancelled']}个任务", "result": result})


@route(
    "POST",
    "/tasks/cancel-by-type",
    responses=answers(CancelByTypeAnswer, body=True),
    openapi_extra=openapi_body(TypeCancelBody),
    summary="按类型取消任务",
)
async def cancel_by_type(request: Request) -> ApiJSON:
    """Cancel every waiting task of one type (and what depends on them); running ones with cancel_running."""
    body = await read_body(request, TypeCancelBody)
    task_type = body.task_type
    result = await ask(request, "cancel_by_type", task_type=task_type, running=body.cancel_running)
    return ApiJSON(
        {"success": True, "message": f"已取消{result['cancelled']}个{task_type}任务", "result": result}
    )


@route(
    "POST",
    "/tasks/{task_id}/cancel",
    responses=answers(CancelAnswer, 404, 409, body=True),
    openapi_extra=openapi_body(CancelBody),
    summary="取消单个任务",
)
async def cancel_task(request: Request, task_id: TaskIdPath) -> ApiJSON:
    """Cancel a waiting task (and its dependents); a running one only with cancel_running=true."""
    body = await read_body(request, CancelBody)
    n = _number(task_id, "任务不存在或无法取消")
    result = await _act(request, n, "cancel", "任务不存在或无法取消", running=body.cancel_running)
    return ApiJSON({"success": True, "message": f"任务已取消: {ref(n)}", "data": result})


@route(
    "POST",
    "/tasks/{task_id}/priority",
    responses=answers(PriorityAnswer, 404, 409, body=True),
    openapi_extra=openapi_body(PriorityBody),
    summary="更新任务优先级",
)
async def set_priority(request: Request, task_id: TaskIdPath) -> ApiJSON:
    """Change the priority of a pending or blocked task."""
    body = await read_body(request, PriorityBody)
    n = _number(task_id, "任务不存在")
    priority = body.priority
    task = await _act(request, n, "priority", "任务不存在", priority=priority)
    return ApiJSON(
        {"success": True, "message": f"任务优先级已更新: {ref(n)} -> {priority}", "data": {"task": task}}
    )


@route(
    "POST",
    "/tasks/{task_id}/retry",
    responses=answers(RetryAnswer, 404, 409, body=True),
    openapi_extra=openapi_body(NoBody),
    summary="重试失败任务",
)
async def retry_task(request: Request, task_id: TaskIdPath) -> ApiJSON:
    """Queue a new task copying a failed one; only failed tasks, and each only once."""
    await read_body(request, NoBody)
    n = _number(task_id)
    result = await _act(request, n, "retry", f"任务不存在: {ref(n)}")
    data = {
        "new_task_id": result["new_task_id"],
        "task": result["task"],
        "handed_over": result["handed_over"],
    }
    return ApiJSON({"success": True, "message": f"任务已重试: {ref(n)}", "data": data})


# --- one task's past and log, for the task manager page's detail view ----------------------------------


@route("GET", "/tasks/{task_id}/history", responses=answers(HistoryAnswer, 404), summary="任务历史与被依赖")
async def task_history(request: Request, task_id: TaskIdPath) -> ApiJSON:
    """What happened to a task and who asked (oldest first), and the tasks that depend on it."""
    no_query(request, ())
    n = _number(task_id)
    history = await ask(request, "history", f"任务不存在: {ref(n)}", task_id=n)
    dependents = await ask(request, "dependents", f"任务不存在: {ref(n)}", task_id=n)
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
    return ApiJSON(await ask(request, "read_log", f"任务不存在: {ref(n)}", task_id=n, offset=offset))
