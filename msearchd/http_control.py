"""REST paths beyond the API document: operations on a selection (with a dry run), and the queue's
pause, resume and drain. Routes of the shim in `msearchd.http`, which imports this module to add them.
"""

# The answers are in Chinese, like the rest of the shim's.
# ruff: noqa: RUF001

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict

from msearchd.errors import MsearchError
from msearchd.http import (
    CANCEL_RUNNING,
    PREFIX,
    PRIORITY,
    TYPE_PATTERN,
    ApiJSON,
    BodyParam,
    answers,
    bad,
    body_doc,
    daemon_error,
    json_bool,
    json_object,
    link,
    no_query,
    read_params,
)

SELECT_DOC = (
    "选择哪些任务（各字段同时满足）：ids（任务ID）、types（类型，可用通配符如 file_embed_*）、"
    "statuses（状态）、"
    'priority（优先级或范围，如 9、"3..5"、"..5"、"9.."）、older_than / newer_than（创建时间早于/不早于：'
    '"30m"、"2h"、"1d" 或日期 "2026-12-01"）、where（数据字段匹配，如 "path^=/mnt/nas/"；'
    "运算符 = != ^= $= *=）；省略则选择全部任务"
)
# A drain answers within the shim's RPC timeout: a longer wait is several calls.
DRAIN_TIMEOUT_MAX = 50

# Added by `msearchd.http.create_app` after the document's own routes.
ROUTES: list[tuple[str, str, Callable[..., Any], dict[str, Any]]] = []


def route(method: str, path: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def record(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        ROUTES.append((method, PREFIX + path, endpoint, options))
        return endpoint

    return record


def json_count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad(f"参数{name}必须是非负整数: {json.dumps(value, ensure_ascii=False)}")
    return value


def json_types(name: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise bad(f"参数{name}必须是任务类型的数组: {json.dumps(value, ensure_ascii=False)}")
    return value


def json_seconds(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= DRAIN_TIMEOUT_MAX:
        raise bad(
            f"参数{name}必须是0到{DRAIN_TIMEOUT_MAX}之间的秒数: {json.dumps(value, ensure_ascii=False)}"
        )
    return float(value)


def _optional_count(name: str, description: str) -> BodyParam:
    schema = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]}
    return BodyParam(name, description, schema, json_count)


SELECT = BodyParam(
    "select", SELECT_DOC, {"type": "object"}, lambda n, v: {} if v is None else json_object(n, v)
)
DRY_RUN = BodyParam(
    "dry_run",
    "只预览，不执行：回答将涉及的任务数（按类型与状态）、部分ID与将连带取消的依赖任务",
    {"type": "boolean"},
    json_bool,
)
UP_TO = _optional_count("up_to", "只涉及ID不大于此数的任务（预览回答中的 up_to）")
EXPECT = _optional_count("expect", "预览回答中的 count：回答会说明其间是否有变化")
TYPES = BodyParam(
    "types",
    "任务类型；省略则为整个队列",
    {"anyOf": [{"type": "array", "items": {"type": "string", "pattern": TYPE_PATTERN}}, {"type": "null"}]},
    json_types,
)
DRAIN_TIMEOUT = BodyParam(
    "timeout",
    f"最多等待多少秒（0-{DRAIN_TIMEOUT_MAX}，默认{DRAIN_TIMEOUT_MAX}）；超时则 drained 为 false，可再次调用",
    {"anyOf": [{"type": "number", "minimum": 0, "maximum": DRAIN_TIMEOUT_MAX}, {"type": "null"}]},
    json_seconds,
)
RUN = (SELECT, DRY_RUN, UP_TO, EXPECT)


class ControlAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")
    success: bool
    message: str
    result: dict[str, Any]


async def _run(request: Request, method: str, params: tuple[BodyParam, ...], **fixed: Any) -> dict[str, Any]:
    no_query(request, ())
    body = await read_params(request, params)
    call = {
        "select": body.get("select") or {},
        "dry_run": body.get("dry_run", False),
        "up_to": body.get("up_to"),
        "expect": body.get("expect"),
        **fixed,
    }
    if "priority" in body:
        call["priority"] = body["priority"]
    if "cancel_running" in body:
        call["running"] = body["cancel_running"]
    try:
        return dict(await link(request).call(method, **call))
    except MsearchError as exc:
        raise daemon_error(exc, "任务不存在") from None


def _preview_or(result: dict[str, Any], done: str) -> ApiJSON:
    message = f"预览：将涉及{result['count']}个任务" if result.get("dry_run") else done
    if result.get("changed_meanwhile"):
        message += f"（预览时为{result['previewed']}个，其间有任务状态变化）"
    return ApiJSON({"success": True, "message": message, "result": result})


@route(
    "POST",
    "/selection/cancel",
    responses=answers(ControlAnswer, body=True),
    openapi_extra=body_doc((*RUN, CANCEL_RUNNING)),
    summary="按条件取消任务（可预览）",
)
async def cancel_selected(request: Request) -> ApiJSON:
    """Cancel the selected waiting tasks (running ones with cancel_running) and their dependents."""
    result = await _run(request, "cancel_selected", (*RUN, CANCEL_RUNNING))
    return _preview_or(result, f"已取消{result.get('cancelled', 0)}个任务")


@route(
    "POST",
    "/selection/priority",
    responses=answers(ControlAnswer, body=True),
    openapi_extra=body_doc((*RUN, PRIORITY)),
    summary="按条件调整优先级（可预览）",
)
async def set_priority_selected(request: Request) -> ApiJSON:
    """Give the selected pending and blocked tasks one priority."""
    result = await _run(request, "set_priority_selected", (*RUN, PRIORITY))
    return _preview_or(result, f"已调整{result.get('changed', 0)}个任务的优先级")


@route(
    "POST",
    "/selection/retry",
    responses=answers(ControlAnswer, body=True),
    openapi_extra=body_doc(RUN),
    summary="按条件重试失败任务（可预览）",
)
async def retry_selected(request: Request) -> ApiJSON:
    """Retry the selected failed tasks not yet retried, oldest first."""
    result = await _run(request, "retry_selected", RUN)
    return _preview_or(result, f"已重试{result.get('retried', 0)}个任务")


async def _queue_call(
    request: Request, method: str, params: tuple[BodyParam, ...], **defaults: Any
) -> dict[str, Any]:
    no_query(request, ())
    body = await read_params(request, params) if params else {}
    try:
        return dict(await link(request).call(method, **{**defaults, **body}))
    except MsearchError as exc:
        raise daemon_error(exc, "任务不存在") from None


@route("GET", "/queue", responses=answers(ControlAnswer), summary="队列状态（暂停情况）")
async def queue_state(request: Request) -> ApiJSON:
    """What is paused (type * is the whole queue), since when, by whom; the latest pauses and resumes."""
    result = await _queue_call(request, "queue", ())
    return ApiJSON({"success": True, "message": "队列状态", "result": result})


@route(
    "POST",
    "/queue/pause",
    responses=answers(ControlAnswer, body=True),
    openapi_extra=body_doc((TYPES,)),
    summary="暂停队列（或某些类型）",
)
async def pause(request: Request) -> ApiJSON:
    """No new task (of these types) starts; running ones go on. Holds across daemon restarts."""
    result = await _queue_call(request, "pause", (TYPES,))
    return ApiJSON({"success": True, "message": "已暂停", "result": result})


@route(
    "POST",
    "/queue/resume",
    responses=answers(ControlAnswer, body=True),
    openapi_extra=body_doc((TYPES,)),
    summary="恢复队列（或某些类型）",
)
async def resume(request: Request) -> ApiJSON:
    """Let tasks of these types (of every paused one) start again."""
    result = await _queue_call(request, "resume", (TYPES,))
    return ApiJSON({"success": True, "message": "已恢复", "result": result})


@route(
    "POST",
    "/queue/drain",
    responses=answers(ControlAnswer, body=True),
    openapi_extra=body_doc((TYPES, DRAIN_TIMEOUT)),
    summary="排空队列：暂停并等待运行中的任务结束",
)
async def drain(request: Request) -> ApiJSON:
    """Pause, then wait until nothing (of these types) runs; drained says whether it got there."""
    result = await _queue_call(request, "drain", (TYPES, DRAIN_TIMEOUT), timeout=DRAIN_TIMEOUT_MAX)
    message = "已排空" if result["drained"] else f"超时，仍在运行: {', '.join(result['running'])}"
    return ApiJSON({"success": True, "message": message, "result": result})
