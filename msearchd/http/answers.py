"""What the shim answers: compact JSON, errors as one sentence, the daemon's errors mapped to HTTP, and the
response models that document the answers (built as dicts; the models only describe them)."""

# The answers are in Chinese, like the API document's, and use its full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from msearchd.errors import (
    InvalidArgument,
    InvalidState,
    MsearchError,
    NotFound,
    Unavailable,
)
from msearchd.http.link import DaemonAway

log = logging.getLogger("msearchd.http")


class ApiError(HTTPException):
    """An answer with a status and a one-sentence `detail`."""


def daemon_error(exc: MsearchError, not_found: str, conflict: str | None = None) -> ApiError:
    """Map an RPC error to HTTP: not_found 404, invalid_state 409, invalid_argument 400, unavailable 503."""
    if isinstance(exc, NotFound):
        return ApiError(404, not_found)
    if isinstance(exc, InvalidState):
        return ApiError(409, conflict or f"当前状态不允许此操作: {exc.message}")
    if isinstance(exc, InvalidArgument):
        return ApiError(400, f"参数无效: {exc.message}")
    if isinstance(exc, Unavailable):
        why = exc.message if isinstance(exc, DaemonAway) else "守护进程正在停止，或与它的连接中断"
        return ApiError(503, f"msearchd守护进程不可用: {why}")
    log.error("msearchd answered with an error (%s): %s", exc.code, exc.message)
    return ApiError(500, f"msearchd内部错误（{exc.code}）: {exc.message}")


def json_safe(value: Any) -> Any:
    """Replace what JSON cannot carry (NaN, infinities, bytes a msgpack client stored) by what it can."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class ApiJSON(JSONResponse):
    """Compact UTF-8 JSON that never fails on task data stored by other clients."""

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (ValueError, TypeError):
            text = json.dumps(json_safe(content), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode()


def detail(status: int, text: str, headers: Mapping[str, str] | None = None) -> ApiJSON:
    return ApiJSON({"detail": text}, status, headers=dict(headers or {}))


class Task(BaseModel):
    """A task as the RPC returns it."""

    model_config = ConfigDict(extra="allow")
    id: str
    type: str
    status: Literal["pending", "blocked", "running", "completed", "failed", "cancelled"]
    priority: int
    data: dict[str, Any]
    depends_on: list[str]
    progress: float
    current_operation: str | None
    attempts: int
    error: str | None
    blocked_reason: str | None
    stop_reason: str | None
    retry_of: str | None
    retried_as: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    worker_pid: int | None
    log_path: str | None
    result: Any = None


class ErrorBody(BaseModel):
    detail: str


class TaskList(BaseModel):
    tasks: list[Task]
    total: int
    limit: int
    offset: int


class Workers(BaseModel):
    busy: int
    total: int


class Stats(BaseModel):
    model_config = ConfigDict(extra="allow")
    total: int
    by_status: dict[str, int]
    by_type: dict[str, dict[str, int]]
    workers: Workers
    paused: list[str] = []  # paused types; * is the whole queue


class CancelData(BaseModel):
    task: Task
    cancelled_dependents: int


class CancelAnswer(BaseModel):
    success: bool
    message: str
    data: CancelData


class PriorityData(BaseModel):
    task: Task


class PriorityAnswer(BaseModel):
    success: bool
    message: str
    data: PriorityData


class CancelCounts(BaseModel):
    cancelled: int
    failed: int
    total: int
    cancelled_dependents: int


class CancelAllAnswer(BaseModel):
    success: bool
    message: str
    result: CancelCounts


class TypeCancelCounts(CancelCounts):
    task_type: str


class CancelByTypeAnswer(BaseModel):
    success: bool
    message: str
    result: TypeCancelCounts


class RetryData(BaseModel):
    new_task_id: str
    task: Task
    handed_over: list[str]


class RetryAnswer(BaseModel):
    success: bool
    message: str
    data: RetryData


class SubmitData(BaseModel):
    task_id: str
    task: Task


class SubmitAnswer(BaseModel):
    success: bool
    message: str
    data: SubmitData


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


# An operation beyond the API document: the daemon's answer as it gives it.
class OperationAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")
    success: bool
    message: str
    result: dict[str, Any]


_STATUS_TEXT = {
    400: "参数无效（值不合法、缺少参数、未知参数）",
    404: "任务不存在",
    409: "任务的状态不允许此操作",
    413: "请求体过大",
    415: "不支持的 Content-Type",
    500: "内部错误",
    503: "msearchd 守护进程不可用",
}


def answers(
    ok: type[BaseModel], *errors: int, body: bool = False, ok_status: int = 200
) -> dict[int | str, Any]:
    """The responses a route declares: its success and every error status it can give."""
    codes = sorted({400, 500, 503, *errors, *((413, 415) if body else ())})
    out: dict[int | str, Any] = {ok_status: {"model": ok}}
    for code in codes:
        out[code] = {"model": ErrorBody, "description": _STATUS_TEXT[code]}
    return out
