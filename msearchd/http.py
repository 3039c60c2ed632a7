"""The REST shim: the task-control paths of the API document, served over HTTP as a client of the RPC.

Run it beside the daemon with ``msearchd --http [HOST:]PORT``, or on its own against a running daemon:

    python -m msearchd.http [HOST:]PORT [--socket PATH]

It is a separate process on purpose: FastAPI and uvicorn are imported here only, and whatever happens to
this process (a crash, a hang, a flood of requests) reaches the daemon only as RPC requests, like any
other client's.
"""

# The answers are in Chinese, like the API document's, and use its full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import errno
import hmac
import json
import logging
import math
import os
import re
import socket
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from urllib.parse import unquote_plus, urlsplit

from msearchd import __version__, logformat, systemd
from msearchd.client import AsyncClient, AsyncEventStream
from msearchd.config import default_socket_path
from msearchd.errors import (
    InvalidArgument,
    InvalidState,
    MsearchError,
    NotFound,
    ProtocolError,
    Unavailable,
)
from msearchd.httpshim import (
    EXIT_USAGE,
    TOKEN_ENV,
    UsageError,
    bind,
    bound_url,
    check_http_extra,
    check_token_rule,
    is_loopback_name,
    parse_listen,
    url_host,
)
from msearchd.model import PRIORITY_MAX, PRIORITY_MIN, TaskStatus
from msearchd.prctl import die_with_parent

try:
    import uvicorn
    from fastapi import FastAPI, Query, Request
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import JSONResponse, StreamingResponse
    from fastapi.routing import APIRoute
    from fastapi_offline import FastAPIOffline
    from pydantic import BaseModel, ConfigDict
    from starlette.datastructures import Headers, UploadFile
    from starlette.exceptions import HTTPException
    from starlette.routing import Match, Mount
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # the http extra is not installed: say so in one sentence, as msearchd --http
    if __name__ != "__main__":
        raise
    try:
        check_http_extra("python -m msearchd.http", exc)
    except UsageError as refusal:
        print(f"msearchd-http: {refusal}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    raise

log = logging.getLogger("msearchd.http")

PREFIX = "/api/v1"
DOCS_ASSETS = "/docs/static"
MAX_BODY = 1024 * 1024
RPC_TIMEOUT = 60.0
MAX_CONNECTIONS = 64
LIST_LIMIT_MAX = 10_000
OFFSET_MAX = 2**62

_ID_RE = re.compile(r"(?:task_)?0*([1-9][0-9]{0,17})")
TASK_ID_PATTERN = r"^(task_)?0*[1-9][0-9]{0,17}$"
TYPE_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"
_TYPE_RE = re.compile(TYPE_PATTERN)
_STATUS_NAMES = "|".join(s.value for s in TaskStatus)
STATUS_PATTERN = rf"^({_STATUS_NAMES})(,({_STATUS_NAMES}))*$"
# The words a FastAPI (pydantic) form reads as booleans: an HTML checkbox sends "on".
_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})
_BOOL_WORDS = "true/false/1/0/yes/no/on/off"
# JSON Schema has no case-insensitive flag: spell every case out.
_BOOL_ALTERNATIVES = "|".join(
    "".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in w) for w in sorted(_TRUE | _FALSE)
)
BOOL_PATTERN = f"^({_BOOL_ALTERNATIVES})$"
# A form may also leave the field empty: that is an absent field, the default.
FORM_BOOL_PATTERN = f"^({_BOOL_ALTERNATIVES})?$"


# --- talking to the daemon ----------------------------------------------------------------------------


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
        async with self._slots:
            client = await self._take()
            try:
                result = await asyncio.wait_for(client.call(method, **params), self.timeout)
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


def link(request: Request) -> DaemonLink:
    return cast(DaemonLink, request.app.state.link)


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


# --- JSON out -----------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """Replace what JSON cannot carry (NaN, infinities, bytes a msgpack client stored) by what it can."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


class ApiJSON(JSONResponse):
    """Compact UTF-8 JSON that never fails on task data stored by other clients."""

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (ValueError, TypeError):
            text = json.dumps(_json_safe(content), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode()


def detail(status: int, text: str, headers: Mapping[str, str] | None = None) -> ApiJSON:
    return ApiJSON({"detail": text}, status, headers=dict(headers or {}))


# --- parameters ---------------------------------------------------------------------------------------


def task_number(raw: str) -> int | None:
    """`task_<n>` or `<n>` as a number; None for anything else (to the client: an unknown task)."""
    m = _ID_RE.fullmatch(raw)
    return None if m is None else int(m.group(1))


def bad(text: str) -> ApiError:
    return ApiError(400, text)


def form_bool(name: str, text: str) -> bool:
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise bad(f"参数{name}的值无效: {text!r}（可用 {_BOOL_WORDS}）")


def json_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return form_bool(name, value)
    raise bad(f"参数{name}必须是布尔值（{_BOOL_WORDS}），收到: {json.dumps(value, ensure_ascii=False)}")


def _priority_range(name: str, value: int) -> int:
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise bad(f"参数{name}必须是{PRIORITY_MIN}到{PRIORITY_MAX}之间的整数，收到: {value}")
    return value


def form_priority(name: str, text: str) -> int:
    if re.fullmatch(r"-?[0-9]{1,30}", text) is None:
        raise bad(f"参数{name}必须是{PRIORITY_MIN}到{PRIORITY_MAX}之间的整数，收到: {text!r}")
    return _priority_range(name, int(text))


def _json_int(value: Any) -> int | None:
    """An integer as JSON Schema sees one: 3 and 3.0 alike, never true or false."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def json_priority(name: str, value: Any) -> int:
    as_int = _json_int(value)
    if as_int is None:
        given = json.dumps(value, ensure_ascii=False)
        raise bad(f"参数{name}必须是{PRIORITY_MIN}到{PRIORITY_MAX}之间的整数，收到: {given}")
    return _priority_range(name, as_int)


def form_type(name: str, text: str) -> str:
    if _TYPE_RE.fullmatch(text) is None:
        raise bad(f"参数{name}的值无效: {text!r}（1到100个字母、数字或 _ . : -）")
    return text


def json_type(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise bad(f"参数{name}必须是字符串，收到: {json.dumps(value, ensure_ascii=False)}")
    return form_type(name, value)


def json_object(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(f"参数{name}必须是JSON对象，收到: {json.dumps(value, ensure_ascii=False)[:100]}")
    return value


def json_optional_priority(name: str, value: Any) -> int | None:
    return None if value is None else json_priority(name, value)


def json_task_ids(name: str, value: Any) -> list[int]:
    """Task ids as numbers, so that the daemon reads `task_007` as the shim does."""
    if not isinstance(value, list):
        raise bad(f"参数{name}必须是任务ID的数组")
    ids = []
    for item in value:
        n = task_number(item) if isinstance(item, str) else _json_int(item)
        if n is not None and not 1 <= n < 10**18:
            n = None
        if n is None:
            raise bad(f"参数{name}中的任务ID无效: {json.dumps(item, ensure_ascii=False)}（task_<n> 或 <n>）")
        ids.append(n)
    return ids


@dataclass(frozen=True, slots=True)
class BodyParam:
    """One parameter of a request body, as form field and as JSON member, with its OpenAPI schema."""

    name: str
    description: str
    json_schema: dict[str, Any]
    from_json: Callable[[str, Any], Any]
    form_schema: dict[str, Any] | None = None  # None: JSON bodies only
    from_form: Callable[[str, str], Any] | None = None
    required: bool = False


_BOOL_DOC = f"{_BOOL_WORDS}（不区分大小写；t/f/y/n 亦可），默认 false；表单中的空值视为未提供"
CANCEL_RUNNING = BodyParam(
    "cancel_running",
    "是否也取消正在运行的任务：" + _BOOL_DOC,
    {"anyOf": [{"type": "boolean"}, {"type": "string", "pattern": BOOL_PATTERN}]},
    json_bool,
    {"type": "string", "pattern": FORM_BOOL_PATTERN},
    form_bool,
)
PRIORITY = BodyParam(
    "priority",
    f"新优先级，{PRIORITY_MIN}-{PRIORITY_MAX}，数值越小越先执行",
    {"type": "integer", "minimum": PRIORITY_MIN, "maximum": PRIORITY_MAX},
    json_priority,
    {"type": "integer", "minimum": PRIORITY_MIN, "maximum": PRIORITY_MAX},
    form_priority,
    required=True,
)
TASK_TYPE = BodyParam(
    "task_type",
    "任务类型，例如 image_preprocess",
    {"type": "string", "pattern": TYPE_PATTERN},
    json_type,
    {"type": "string", "pattern": TYPE_PATTERN},
    form_type,
    required=True,
)
SUBMIT = (
    BodyParam("type", "任务类型", {"type": "string", "pattern": TYPE_PATTERN}, json_type, required=True),
    BodyParam(
        "data",
        "任务数据（处理器的输入）；其中的整数须在64位范围内",
        {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
        json_object,
    ),
    BodyParam(
        "priority",
        f"优先级 {PRIORITY_MIN}-{PRIORITY_MAX}；省略或 null 时按类型取默认值",
        {"anyOf": [{"type": "integer", "minimum": PRIORITY_MIN, "maximum": PRIORITY_MAX}, {"type": "null"}]},
        json_optional_priority,
    ),
    BodyParam(
        "depends_on",
        "先要完成的任务的ID",
        {
            "type": "array",
            "items": {
                "anyOf": [
                    {"type": "string", "pattern": TASK_ID_PATTERN},
                    {"type": "integer", "minimum": 1, "maximum": 10**18 - 1},
                ]
            },
        },
        json_task_ids,
    ),
)

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def body_doc(params: tuple[BodyParam, ...]) -> dict[str, Any]:
    """The OpenAPI requestBody of a route: a form (urlencoded or multipart) and JSON, same fields."""

    def schema(form: bool) -> dict[str, Any]:
        props = {
            p.name: {
                **(p.form_schema if form and p.form_schema else p.json_schema),
                "description": p.description,
            }
            for p in params
        }
        out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        required = [p.name for p in params if p.required]
        if required:
            out["required"] = required
        return out

    content: dict[str, Any] = {}
    if all(p.from_form is not None for p in params):
        content.update({t: {"schema": schema(True)} for t in FORM_TYPES})
    content["application/json"] = {"schema": schema(False)}
    return {"requestBody": {"required": any(p.required for p in params), "content": content}}


async def _read_body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, f"请求体超过 {MAX_BODY // 1024} KiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise bad(f"请求体不是有效的JSON: 不支持 {name}")


def _finite(text: str) -> float:
    """A JSON number with a fraction or exponent; JSON Schema counts 1e3 as an integer, and so do we."""
    value = float(text)
    if not math.isfinite(value) or (value.is_integer() and not INT_MIN <= value <= INT_MAX):
        raise bad(f"请求体中的数超出范围: {text[:40]}")
    return value


INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what msgpack, and so the daemon, can hold


def _bounded_int(text: str) -> int:
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise bad(f"请求体中的整数超出64位范围: {text[:40]}")
    return value


# Any JSON value whose integers fit the daemon's 64 bits (other numbers: any finite one).
JSON_VALUE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "string"},
        {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
    ]
}


def _parse_urlencoded(body: bytes) -> list[tuple[str, str]]:
    pairs = []
    try:
        text = body.decode("ascii")  # urlencoded bodies are ASCII; UTF-8 travels percent-encoded
        for piece in text.split("&"):
            if not piece:
                continue
            name, eq, value = piece.partition("=")
            if not eq:
                raise bad(f"表单字段 {unquote_plus(name)!r} 没有值（应为 name=value）")
            pairs.append((unquote_plus(name, errors="strict"), unquote_plus(value, errors="strict")))
    except UnicodeDecodeError:
        raise bad("表单内容不是有效的 UTF-8 URL 编码") from None
    return pairs


async def _parse_multipart(scope: Scope, body: bytes) -> list[tuple[str, str | UploadFile]]:
    """Parse a multipart body already read (and size-checked) by replaying it to Starlette's parser."""

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, replay).form()
    except HTTPException:  # Starlette's parser refuses it, in English
        raise bad("multipart表单无法解析: 缺少boundary、字段缺少name，或格式有误") from None
    return list(form.multi_items())


async def read_params(request: Request, params: tuple[BodyParam, ...]) -> dict[str, Any]:
    """The route's body parameters, from a form or a JSON object; unknown, repeated or bad ones are 400."""
    no_query(request, ())
    body = await _read_body(request)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    form_ok = all(p.from_form is not None for p in params)
    raw: dict[str, Any] = {}
    from_form = False
    if not body.strip():
        pass
    elif ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json")):
        try:
            value = json.loads(
                body, parse_constant=_reject_constant, parse_float=_finite, parse_int=_bounded_int
            )
        except (ValueError, RecursionError) as exc:
            raise bad(f"请求体不是有效的JSON: {exc}") from None
        if not isinstance(value, dict):
            raise bad('JSON请求体必须是一个对象，例如 {"priority": 1}')
        raw = value
    elif ctype in FORM_TYPES and form_ok:
        from_form = True
        if ctype == FORM_TYPES[0]:
            pairs = _parse_urlencoded(body)
        else:
            pairs = await _parse_multipart(request.scope, body)
        for name, value in pairs:
            if name in raw:
                raise bad(f"参数{name}重复出现")
            if isinstance(value, UploadFile):
                raise bad(f"参数{name}必须是文本，不能是文件")
            raw[name] = value
    else:
        accepted = " 或 ".join((*FORM_TYPES, "application/json") if form_ok else ("application/json",))
        raise ApiError(415, f"不支持的 Content-Type {ctype or '（无）'}: 请使用 {accepted}")
    known = {p.name: p for p in params}
    unknown = [name for name in raw if name not in known]
    if unknown:
        allowed = "、".join(known) or "无"
        raise bad(f"未知参数: {unknown[0]}（可用参数: {allowed}）")
    if from_form:  # an empty field is an absent one, as in a FastAPI form
        raw = {name: value for name, value in raw.items() if value != ""}
    out: dict[str, Any] = {}
    for p in params:
        if p.name not in raw:
            if p.required:
                raise bad(f"缺少参数: {p.name}")
            continue
        if from_form:
            assert p.from_form is not None
            out[p.name] = p.from_form(p.name, raw[p.name])
        else:
            out[p.name] = p.from_json(p.name, raw[p.name])
    return out


def no_query(request: Request, allowed: tuple[str, ...]) -> None:
    """Refuse query parameters a route does not take, and repeated ones: a typo must not go unnoticed."""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name not in allowed:
            where = f"（可用参数: {'、'.join(allowed)}）" if allowed else "（此接口不接受查询参数）"
            raise bad(f"未知参数: {name}{where}")
        if name in seen:
            raise bad(f"参数{name}重复出现")
        seen.add(name)


# --- documentation models (the answers are built as dicts; these only describe them) -----------------


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


TaskIdPath = Annotated[
    str,
    PathParam(
        description="任务ID: task_<n> 或 <n>；其他写法视为不存在的任务（404）", examples=["task_12345"]
    ),
]


# --- routes -------------------------------------------------------------------------------------------

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


@route("GET", "/tasks/stats", responses=answers(Stats), summary="获取任务统计信息")
async def get_stats(request: Request) -> ApiJSON:
    """Counts by status and by type, and how many workers are busy."""
    no_query(request, ())
    try:
        return ApiJSON(await link(request).call("stats"))
    except MsearchError as exc:
        raise daemon_error(exc, "任务不存在") from None


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
) -> ApiJSON:
    """Tasks in submission order, with the total that match the filters (for paging)."""
    no_query(request, ("status", "task_type", "limit", "offset"))
    daemon = link(request)
    try:
        tasks, total = await asyncio.gather(
            daemon.call("list", status=status, type=task_type, limit=limit, offset=offset),
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
    openapi_extra=body_doc(SUBMIT),
    summary="提交任务",
)
async def submit_task(request: Request) -> ApiJSON:
    """Queue one task (JSON body). 404/409: a dependency is unknown or was cancelled."""
    params = await read_params(request, SUBMIT)
    try:
        task = await link(request).call(
            "submit",
            type=params["type"],
            data=params.get("data", {}),
            priority=params.get("priority"),
            depends_on=params.get("depends_on", []),
        )
    except MsearchError as exc:
        raise daemon_error(
            exc, f"依赖的任务不存在（{exc.message}）", f"依赖的任务已取消（{exc.message}）"
        ) from None
    return ApiJSON(
        {
            "success": True,
            "message": f"任务已提交: {task['id']}",
            "data": {"task_id": task["id"], "task": task},
        },
        201,
    )


@route("GET", "/tasks/{task_id}", responses=answers(Task, 404), summary="获取单个任务详情")
async def get_task(request: Request, task_id: TaskIdPath) -> ApiJSON:
    """Everything about one task."""
    if is_fixed_path(request.scope["path"]):
        raise HTTPException(405)  # /tasks/cancel-all is no task: it is a path of its own, for POST
    no_query(request, ())
    n = task_number(task_id)
    if n is None:
        raise ApiError(404, f"任务不存在: {task_id}")
    try:
        return ApiJSON(await link(request).call("get", task_id=n))
    except MsearchError as exc:
        raise daemon_error(exc, f"任务不存在: {ref(n)}") from None


async def _status_of(request: Request, n: int) -> dict[str, Any] | None:
    """The task as it is now, to say why an operation was refused; None if that cannot be known."""
    try:
        return cast(dict[str, Any], await link(request).call("get", task_id=n))
    except MsearchError:
        return None


@route(
    "POST",
    "/tasks/cancel-all",
    responses=answers(CancelAllAnswer, body=True),
    openapi_extra=body_doc((CANCEL_RUNNING,)),
    summary="取消所有任务",
)
async def cancel_all(request: Request) -> ApiJSON:
    """Cancel every waiting task, and with cancel_running=true the running ones too."""
    params = await read_params(request, (CANCEL_RUNNING,))
    try:
        result = await link(request).call("cancel_all", running=params.get("cancel_running", False))
    except MsearchError as exc:
        raise daemon_error(exc, "任务不存在") from None
    return ApiJSON({"success": True, "message": f"已取消{result['cancelled']}个任务", "result": result})


@route(
    "POST",
    "/tasks/cancel-by-type",
    responses=answers(CancelByTypeAnswer, body=True),
    openapi_extra=body_doc((TASK_TYPE, CANCEL_RUNNING)),
    summary="按类型取消任务",
)
async def cancel_by_type(request: Request) -> ApiJSON:
    """Cancel every waiting task of one type (and what depends on them); running ones with cancel_running."""
    params = await read_params(request, (TASK_TYPE, CANCEL_RUNNING))
    task_type = params["task_type"]
    try:
        result = await link(request).call(
            "cancel_by_type", task_type=task_type, running=params.get("cancel_running", False)
        )
    except MsearchError as exc:
        raise daemon_error(exc, "任务不存在") from None
    return ApiJSON(
        {"success": True, "message": f"已取消{result['cancelled']}个{task_type}任务", "result": result}
    )


@route(
    "POST",
    "/tasks/{task_id}/cancel",
    responses=answers(CancelAnswer, 404, 409, body=True),
    openapi_extra=body_doc((CANCEL_RUNNING,)),
    summary="取消单个任务",
)
async def cancel_task(request: Request, task_id: TaskIdPath) -> ApiJSON:
    """Cancel a waiting task (and its dependents); a running one only with cancel_running=true."""
    params = await read_params(request, (CANCEL_RUNNING,))
    n = task_number(task_id)
    if n is None:
        raise ApiError(404, "任务不存在或无法取消")
    running = params.get("cancel_running", False)
    try:
        result = await link(request).call("cancel", task_id=n, running=running)
    except InvalidState as exc:
        now = await _status_of(request, n)
        if now is not None and now["status"] == TaskStatus.RUNNING and not running:
            why = f"任务正在运行，需设置cancel_running=true才能取消: {ref(n)}"
        elif now is not None:
            why = f"任务已结束（{now['status']}），无法取消: {ref(n)}"
        else:
            why = f"任务无法取消: {ref(n)}（{exc.message}）"
        raise ApiError(409, why) from None
    except MsearchError as exc:
        raise daemon_error(exc, "任务不存在或无法取消") from None
    return ApiJSON({"success": True, "message": f"任务已取消: {ref(n)}", "data": result})


@route(
    "POST",
    "/tasks/{task_id}/priority",
    responses=answers(PriorityAnswer, 404, 409, body=True),
    openapi_extra=body_doc((PRIORITY,)),
    summary="更新任务优先级",
)
async def set_priority(request: Request, task_id: TaskIdPath) -> ApiJSON:
    """Change the priority of a pending or blocked task."""
    params = await read_params(request, (PRIORITY,))
    n = task_number(task_id)
    if n is None:
        raise ApiError(404, "任务不存在")
    priority = params["priority"]
    try:
        task = await link(request).call("set_priority", task_id=n, priority=priority)
    except InvalidState as exc:
        now = await _status_of(request, n)
        status = now["status"] if now is not None else exc.message
        raise ApiError(409, f"任务状态不是等待中，无法修改优先级: {status}") from None
    except MsearchError as exc:
        raise daemon_error(exc, "任务不存在") from None
    return ApiJSON(
        {"success": True, "message": f"任务优先级已更新: {ref(n)} -> {priority}", "data": {"task": task}}
    )


@route(
    "POST",
    "/tasks/{task_id}/retry",
    responses=answers(RetryAnswer, 404, 409, body=True),
    openapi_extra=body_doc(()),
    summary="重试失败任务",
)
async def retry_task(request: Request, task_id: TaskIdPath) -> ApiJSON:
    """Queue a new task copying a failed one; only failed tasks, and each only once."""
    await read_params(request, ())
    n = task_number(task_id)
    if n is None:
        raise ApiError(404, f"任务不存在: {task_id}")
    try:
        result = await link(request).call("retry", task_id=n)
    except InvalidState as exc:
        now = await _status_of(request, n)
        if now is not None and now["status"] != TaskStatus.FAILED:
            why = f"任务状态不是失败，无法重试: {now['status']}"
        elif now is not None and now.get("retried_as"):
            why = f"任务已经重试过: {ref(n)} -> {now['retried_as']}"
        else:
            why = f"任务无法重试: {ref(n)}（{exc.message}）"
        raise ApiError(409, why) from None
    except MsearchError as exc:
        raise daemon_error(exc, f"任务不存在: {ref(n)}") from None
    data = {
        "new_task_id": result["new_task_id"],
        "task": result["task"],
        "handed_over": result["handed_over"],
    }
    return ApiJSON({"success": True, "message": f"任务已重试: {ref(n)}", "data": data})


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
        daemon = link(request)
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
                data = json.dumps(_json_safe(event), ensure_ascii=False)
                yield f"id: {number}\nevent: {event['event']}\ndata: {data}\n\n".encode()
        finally:
            if pending is not None:
                pending.cancel()

    return EventStreamResponse(frames(), stream, slots)


# --- the application ----------------------------------------------------------------------------------


def _is_local(url: str) -> bool:
    """Whether a URL (or `//host:port`) names this machine; an unreadable one does not."""
    try:
        return is_loopback_name(urlsplit(url).hostname or "")
    except ValueError:
        return False


def _proc_net_address(host: str, port: int) -> str:
    """An address as /proc/net/tcp{,6} writes it: each 32-bit word of the address in host order, in hex."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = socket.inet_pton(family, host)
    words = "".join(raw[i : i + 4][::-1].hex() for i in range(0, len(raw), 4))
    return f"{words.upper()}:{port:04X}"


def tcp_peer_uid(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The uid owning the client end of a TCP connection on this machine, from /proc/net/tcp; None when
    no connection with these ends is found (or an end is not an address: nobody owns it)."""
    try:
        local, remote = _proc_net_address(*client), _proc_net_address(*server)
    except (OSError, ValueError):
        return None
    for table in ("/proc/net/tcp6", "/proc/net/tcp") if ":" in client[0] else ("/proc/net/tcp",):
        try:
            with open(table) as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    if fields[1] == local and fields[2] == remote:
                        return int(fields[7])
        except OSError:
            continue
    return None


# Methods that only read: a page of another origin may send them (it cannot read the answer).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin or URL, as browsers compare them; None if unreadable."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.scheme.lower(), parts.hostname.lower(), port


def _own_origin(scope: Scope, host: str | None) -> str:
    """The shim's origin as this request reached it: the Host it was sent to, else the bound address."""
    if host is None:
        address, port = scope["server"]
        host = f"{url_host(address)}:{port}"
    return f"{scope['scheme']}://{host}"


class Guard:
    """Outermost checks: the bearer token; without one, only loopback hosts and origins; no 500 unlogged.

    Without a token the shim trusts only this user on this machine, as the daemon's socket does: a
    request must come from a loopback connection that the daemon's own uid opened, and must not carry
    what a web page could smuggle in: a foreign Host (DNS rebinding) or a foreign Origin (cross-site posts).
    A request that changes something must moreover come from the shim's own origin, exactly: a form post
    needs no preflight, so a page served on another local port could otherwise post to the shim.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    def _refusal(self, scope: Scope, headers: Headers) -> ApiJSON | None:
        if self.token is not None:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
                what = "缺少" if "authorization" not in headers else "无效的"
                return detail(
                    401,
                    f"{what}访问令牌: 请发送 Authorization: Bearer <token>",
                    {"WWW-Authenticate": "Bearer"},
                )
            return None
        client, server = scope.get("client"), scope.get("server")
        uid = tcp_peer_uid(tuple(client), tuple(server)) if client and server else None
        if uid != os.getuid():
            who = "未知用户" if uid is None else f"uid {uid}"
            return detail(403, f"拒绝访问: 请求来自{who}，未设置令牌时只接受与守护进程相同用户的本机请求")
        host = headers.get("host")
        if host is not None and not _is_local(f"//{host}"):
            return detail(403, f"拒绝访问: Host {host!r} 不是本机地址（未设置令牌时只接受本机请求）")
        origin = headers.get("origin")
        if origin is not None and not _is_local(origin):
            return detail(403, f"拒绝来自其他网站的请求: Origin {origin!r}")
        if scope["method"] in SAFE_METHODS:
            return None
        site = headers.get("sec-fetch-site", "").lower()
        if site in ("cross-site", "same-site"):
            return detail(
                403, f"拒绝其他网页发来的修改请求: Sec-Fetch-Site: {site}（只接受本服务自己的页面）"
            )
        own = _own_origin(scope, host)
        theirs = _origin(origin) if origin is not None else None
        if origin is not None and (theirs is None or theirs != _origin(own)):
            return detail(
                403, f"拒绝其他来源发来的修改请求: Origin {origin!r}（只接受本服务自己的来源 {own}）"
            )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            refusal = self._refusal(scope, Headers(scope=scope))
            if refusal is not None:
                await refusal(scope, receive, watch)
                return
            await self.app(scope, receive, watch)
        except Exception as exc:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise
            await detail(500, f"内部错误: {type(exc).__name__}: {exc}")(scope, receive, send)


def _validation_detail(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one sentence naming the parameter."""
    errors = exc.errors()
    if not errors:
        return "请求无效"
    first = errors[0]
    name = str(first.get("loc", ("", "?"))[-1])
    kind = first.get("type", "")
    given = first.get("input")
    if kind == "missing":
        return f"缺少参数: {name}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"参数{name}必须是整数，收到: {given!r}"
    bounds = first.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"参数{name}必须大于或等于{bounds.get('ge')}，收到: {given!r}"
    if kind == "less_than_equal":
        return f"参数{name}必须小于或等于{bounds.get('le')}，收到: {given!r}"
    if kind == "string_pattern_mismatch" and name == "status":
        return (
            f"参数status的值无效: {given!r}（可用: {', '.join(s.value for s in TaskStatus)}，多个用逗号分隔）"
        )
    return f"参数{name}的值无效: {given!r}（{first.get('msg', '')}）"


_TASK_LINKS = {
    "GetTask": "get_task",
    "CancelTask": "cancel_task",
    "SetPriority": "set_priority",
    "RetryTask": "retry_task",
}


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method served on the request's path (Starlette names only the first route's).

    A fixed path such as /tasks/cancel-all also matches /tasks/{task_id}; the fixed route is the one meant.
    """
    fixed: set[str] = set()
    templated: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.matches(scope)[0] is not Match.NONE:
            (templated if "{" in route.path else fixed).update(route.methods)
        elif isinstance(route, Mount) and scope["path"].startswith(f"{route.path}/"):
            fixed.update(("GET", "HEAD"))  # the files of /docs (the mount has changed the scope's root)
    return sorted(fixed or templated)


def create_app(socket_path: Path, token: str | None = None, rpc_timeout: float = RPC_TIMEOUT) -> FastAPI:
    """The FastAPI application for one daemon socket; `token` makes every request need a bearer token."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.link = DaemonLink(socket_path, rpc_timeout)
        app.state.event_streams = StreamSlots(MAX_EVENT_STREAMS)
        yield
        await app.state.link.close()

    app = FastAPIOffline(  # /docs and /redoc with their scripts served from the package: no CDN
        static_url=DOCS_ASSETS,
        title="msearch task control",
        version=__version__,
        description="任务控制API：取消、调整优先级、重试、查询任务。msearchd 的 REST 接口（经由 RPC）。",
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,  # operation ids: the function names
        swagger_ui_parameters={"validatorUrl": None},  # no badge from swagger.io
    )
    for method, path, endpoint, options in ROUTES:
        app.add_api_route(path, endpoint, methods=[method], tags=["tasks"], **options)

    async def on_validation_error(request: Request, exc: Exception) -> ApiJSON:
        assert isinstance(exc, RequestValidationError)
        return detail(400, _validation_detail(exc))

    async def on_http_error(request: Request, exc: Exception) -> ApiJSON:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        text = str(exc.detail)
        path = request.scope["path"]
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
            if not isinstance(exc, ApiError):  # the router's English phrase
                text = f"不支持的请求方法: {request.method}（{path} 只接受 {headers['Allow']}）"
        elif exc.status_code == 404 and not isinstance(exc, ApiError):
            text = f"路径不存在: {path}"
        return detail(exc.status_code, text, headers)

    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_middleware(Guard, token=token)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            for path in schema["paths"].values():
                for operation in path.values():
                    operation["responses"].pop("422", None)  # validation errors are answered with 400
                    if token:
                        operation["responses"]["401"] = {
                            "description": "缺少或无效的访问令牌",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                            },
                        }
                    else:
                        operation["responses"]["403"] = {
                            "description": "未设置令牌时：请求不是本机同一用户发出，Host、Origin 不是本机，"
                            "或修改请求来自其他来源（Origin、Sec-Fetch-Site）",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                            },
                        }
            # The id a submit returns is what the single-task paths take.
            schema["paths"][f"{PREFIX}/tasks"]["post"]["responses"]["201"]["links"] = {
                name: {"operationId": op, "parameters": {"task_id": "$response.body#/data/task_id"}}
                for name, op in _TASK_LINKS.items()
            }
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {})["JsonValue"] = JSON_VALUE_SCHEMA
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
            if token:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


# --- the process --------------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn's server, saying when it serves: the daemon and the tests wait for that line."""

    url = ""
    socket_path = Path()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            log.info(
                "http shim listening on %s (pid %d) for msearchd at %s",
                self.url,
                os.getpid(),
                self.socket_path,
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m msearchd.http",
        description="Serve the REST task-control API (/api/v1/tasks...) for a running msearchd, as a "
        "client of its socket. msearchd --http [HOST:]PORT runs this for you beside the daemon; run it by "
        "hand to serve a daemon that is already running. Listening on anything but loopback needs a token.",
    )
    parser.add_argument(
        "listen", metavar="[HOST:]PORT", help="where to listen; the host defaults to 127.0.0.1"
    )
    parser.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        help="the daemon's RPC socket; by default the one msearchd and msearchctl use: env MSEARCH_SOCKET, "
        "else $XDG_RUNTIME_DIR/msearch/msearchd.sock, or /tmp/msearch-UID/msearchd.sock when XDG_RUNTIME_DIR "
        f"is unset (here: {default_socket_path()})",
    )
    parser.add_argument(
        "--token",
        help=f"require 'Authorization: Bearer TOKEN' on every request (env {TOKEN_ENV}, which keeps it "
        "out of the process list); needed to listen on anything but loopback",
    )
    parser.add_argument(
        "--rpc-timeout",
        type=float,
        default=RPC_TIMEOUT,
        help=f"answer 503 when the daemon takes longer than this many seconds (default {RPC_TIMEOUT:g})",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    parser.add_argument(
        "--log-format",
        choices=logformat.FORMATS,
        default="auto",
        help="text, journal (syslog priority prefixes, no time) or json; auto: journal when standard "
        "error is the journal, else text",
    )
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a listening socket from msearchd
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logformat.configure(args.log_level, logformat.resolve(args.log_format, systemd.journal_on_stderr()))
    # Go when the daemon goes, even by SIGKILL: an orphan would hold the port the next daemon needs.
    if args.parent_pid is not None and not die_with_parent(args.parent_pid):
        sys.exit(0)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        address = parse_listen(args.listen)
        if args.fd is None:
            check_token_rule(address, token)
            sock = bind(address)
        else:
            sock = socket.socket(fileno=args.fd)
            check_token_rule(parse_listen(bound_url(sock).removeprefix("http://")), token)
    except UsageError as exc:
        print(f"msearchd-http: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except OSError as exc:
        print(f"msearchd-http: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
    if args.rpc_timeout <= 0:
        print("msearchd-http: --rpc-timeout must be more than 0 seconds", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    socket_path = args.socket or default_socket_path()
    app = create_app(socket_path, token, args.rpc_timeout)
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=5,
        server_header=False,
        # Not behind a proxy: X-Forwarded-For must not replace the peer whose uid the Guard checks.
        proxy_headers=False,
    )
    server = _Server(config)
    server.url = bound_url(sock)
    server.socket_path = socket_path
    asyncio.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()
