"""Request parameters: task ids, query parameters, and request bodies as forms or JSON objects."""

# The answers are in Chinese, like the API document's, and use its full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import unquote_plus

from fastapi import Path as PathParam
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message, Scope

from msearchd.http.answers import ApiError
from msearchd.model import PRIORITY_MAX, PRIORITY_MIN, TaskStatus

log = logging.getLogger("msearchd.http")


MAX_BODY = 1024 * 1024


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


TaskIdPath = Annotated[
    str,
    PathParam(
        description="任务ID: task_<n> 或 <n>；其他写法视为不存在的任务（404）", examples=["task_12345"]
    ),
]


def validation_detail(exc: RequestValidationError) -> str:
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
