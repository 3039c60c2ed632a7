"""Request bodies: one Pydantic model per route, read from a form or a JSON object alike.

Each model declares its fields once: their types, their defaults, unknown fields refused
(`extra="forbid"`), and what the OpenAPI document says of them, which is generated from the model
(`openapi_body`). The fields convert their values with the functions of `params`, which say what is
wrong in the API document's Chinese sentences; the model reports the first problem in field order.

`read_body` stays by hand, for what no library does here: Starlette's form parser keeps the last of
repeated fields and has no size limit of ours before parsing, FastAPI's form models neither refuse
repeated fields nor answer 415/413 in one sentence, and neither tells a form field from a JSON member
when the two spell booleans and numbers differently.
"""

# The answers are in Chinese, like the API document's, and use its full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeAlias, TypeVar
from urllib.parse import unquote_plus

from fastapi import Request
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SkipValidation,
    ValidationError,
    ValidationInfo,
)
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message, Scope
from typing_extensions import TypeAliasType  # in typing from Python 3.12

from msearchd.http.answers import ApiError
from msearchd.http.params import (
    BOOL_PATTERN,
    FORM_BOOL_PATTERN,
    TASK_ID_PATTERN,
    TYPE_PATTERN,
    bad,
    form_bool,
    form_priority,
    form_type,
    json_bool,
    json_count,
    json_object,
    json_optional_priority,
    json_optional_text,
    json_priority,
    json_seconds,
    json_string,
    json_task_ids,
    json_type,
    json_types,
    no_query,
)
from msearchd.model import PRIORITY_MAX, PRIORITY_MIN
from msearchd.selection import TYPE_GLOB_PATTERN

MAX_BODY = 1024 * 1024
# Tasks one selection (the batch paths) may name; the daemon holds the same bound.
SELECTION_MAX = 10_000
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what msgpack, and so the daemon, can hold
_BOOL_DOC = "true/false/1/0/yes/no/on/off（不区分大小写；t/f/y/n 亦可），默认 false；表单中的空值视为未提供"


# Any JSON value whose integers fit the daemon's 64 bits (other numbers: any finite one). The JSON parser
# of `read_body` bounds the numbers already: this only describes task data in the OpenAPI document.
if TYPE_CHECKING:  # mypy cannot resolve a recursive TypeAliasType (python/mypy#18252)
    JsonValue: TypeAlias = bool | str | int | float | list["JsonValue"] | dict[str, "JsonValue"] | None
else:
    JsonValue = TypeAliasType(
        "JsonValue",
        bool
        | str
        | Annotated[int, Field(ge=INT_MIN, le=INT_MAX)]
        | Annotated[float, WithJsonSchema({"type": "number", "not": {"type": "integer"}})]
        | list["JsonValue"]
        | dict[str, "JsonValue"]
        | None,
    )
# Where the document keeps shared schemas (JsonValue): `create_app` puts them there.
SCHEMA_REF = "#/components/schemas/{model}"


class FormSchema:
    """A field's schema in a form, where it differs from its JSON one (an empty field, say)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema


def converted(
    from_json: Callable[[str, Any], Any], from_form: Callable[[str, str], Any] | None = None
) -> BeforeValidator:
    """A field read by `from_json` from JSON and `from_form` from a form; their refusal is the answer."""

    def convert(value: Any, info: ValidationInfo) -> Any:
        form = bool(info.context and info.context.get("form"))
        name = info.field_name or ""
        try:
            return from_form(name, value) if form and from_form else from_json(name, value)
        except ApiError as exc:
            raise PydanticCustomError("parameter", "{detail}", {"detail": exc.detail}) from None

    return BeforeValidator(convert)


CancelRunning = Annotated[
    bool,
    converted(json_bool, form_bool),
    WithJsonSchema({"anyOf": [{"type": "boolean"}, {"type": "string", "pattern": BOOL_PATTERN}]}),
    FormSchema({"type": "string", "pattern": FORM_BOOL_PATTERN}),
    Field(description="是否也取消正在运行的任务：" + _BOOL_DOC),
]
TaskType = Annotated[
    str, converted(json_type, form_type), WithJsonSchema({"type": "string", "pattern": TYPE_PATTERN})
]
NewPriority = Annotated[
    Annotated[int, Field(ge=PRIORITY_MIN, le=PRIORITY_MAX)],
    converted(json_priority, form_priority),
    Field(description=f"新优先级，{PRIORITY_MIN}-{PRIORITY_MAX}，数值越小越先执行"),
]


class Body(BaseModel):
    """A request body; `forms`: whether it may come as a form besides JSON (subclasses' docstrings would
    become descriptions in the API document, which is in Chinese: they use comments)."""

    model_config = ConfigDict(extra="forbid")
    forms: ClassVar[bool] = True


# No parameters: an empty body, `{}` or an empty form. (A docstring would describe it in the document.)
class NoBody(Body):
    pass


class CancelBody(Body):
    cancel_running: CancelRunning = False


class TypeCancelBody(Body):
    task_type: Annotated[TaskType, Field(description="任务类型，例如 image_preprocess")]
    cancel_running: CancelRunning = False


class PriorityBody(Body):
    priority: NewPriority


# JSON only: the task's data is an object, which a form cannot carry.
class SubmitBody(Body):
    forms: ClassVar[bool] = False
    type: Annotated[TaskType, Field(description="任务类型")]
    data: Annotated[
        SkipValidation[dict[str, JsonValue]],  # checked by the JSON parser; validating again costs time
        converted(json_object),
        Field(description="任务数据（处理器的输入）；其中的整数须在64位范围内"),
    ] = {}
    priority: Annotated[
        int | None,
        converted(json_optional_priority),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "integer", "minimum": PRIORITY_MIN, "maximum": PRIORITY_MAX},
                    {"type": "null"},
                ]
            }
        ),
        Field(description=f"优先级 {PRIORITY_MIN}-{PRIORITY_MAX}；省略或 null 时按类型取默认值"),
    ] = None
    depends_on: Annotated[
        list[int],
        converted(json_task_ids),
        WithJsonSchema(
            {
                "type": "array",
                "items": {
                    "anyOf": [
                        {"type": "string", "pattern": TASK_ID_PATTERN},
                        {"type": "integer", "minimum": 1, "maximum": 10**18 - 1},
                    ]
                },
            }
        ),
        Field(description="先要完成的任务的ID"),
    ] = []
    key: Annotated[
        str | None,
        converted(json_optional_text),
        WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1, "maxLength": 512}, {"type": "null"}]}),
        Field(description="键：同一键至多一个未结束的任务（可选）"),
    ] = None
    on_conflict: Annotated[
        str,
        converted(json_string),
        WithJsonSchema({"type": "string", "enum": ["keep", "replace"]}),
        Field(
            description="已有相同键的未结束任务时：keep（默认，回答已有任务）"
            "或 replace（取消等待中的旧任务，提交新任务）"
        ),
    ] = "keep"
    replace_running: Annotated[
        bool,
        converted(json_bool),
        WithJsonSchema({"type": "boolean"}),
        Field(description="replace 时旧任务正在运行也将其停止；默认 false"),
    ] = False


# Paths beyond the API document (JSON only): an operation on the tasks filters select, and the queue's pause.
SELECT_DOC = (
    "选择哪些任务（各字段同时满足）：ids（任务ID）、types（类型，可用通配符如 file_embed_*）、"
    "statuses（状态）、"
    'priority（优先级或范围，如 9、"3..5"、"..5"、"9.."）、older_than / newer_than（创建时间早于/不早于：'
    '"30m"、"2h"、"1d" 或日期 "2026-12-01"）、where（数据字段匹配，如 "path^=/mnt/nas/"；'
    "运算符 = != ^= $= *=）；省略则选择全部任务"
)
# A drain answers within the shim's RPC timeout: a longer wait is several calls.
DRAIN_TIMEOUT_MAX = 50
OptionalCount = Annotated[
    int | None,
    converted(json_count),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]}),
]


class FilterBody(Body):
    forms: ClassVar[bool] = False
    select: Annotated[
        dict[str, Any],
        converted(lambda name, value: {} if value is None else json_object(name, value)),
        WithJsonSchema({"type": "object"}),
        Field(description=SELECT_DOC),
    ] = {}
    dry_run: Annotated[
        bool,
        converted(json_bool),
        WithJsonSchema({"type": "boolean"}),
        Field(description="只预览，不执行：回答将涉及的任务数（按类型与状态）、部分ID与将连带取消的依赖任务"),
    ] = False
    up_to: Annotated[OptionalCount, Field(description="只涉及ID不大于此数的任务（预览回答中的 up_to）")] = (
        None
    )
    expect: Annotated[OptionalCount, Field(description="预览回答中的 count：回答会说明其间是否有变化")] = None


class FilterCancelBody(FilterBody):
    cancel_running: CancelRunning = False


class FilterPriorityBody(FilterBody):
    priority: NewPriority


class QueueBody(Body):
    forms: ClassVar[bool] = False
    types: Annotated[
        list[str] | None,
        converted(json_types),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "array", "items": {"type": "string", "pattern": TYPE_GLOB_PATTERN}},
                    {"type": "null"},
                ]
            }
        ),
        Field(description="任务类型或通配模式（file_embed_*）；省略则为整个队列"),
    ] = None


class DrainBody(QueueBody):
    timeout: Annotated[
        float | None,
        converted(lambda name, value: json_seconds(name, value, DRAIN_TIMEOUT_MAX)),
        WithJsonSchema(
            {"anyOf": [{"type": "number", "minimum": 0, "maximum": DRAIN_TIMEOUT_MAX}, {"type": "null"}]}
        ),
        Field(
            description=f"最多等待多少秒（0-{DRAIN_TIMEOUT_MAX}，默认{DRAIN_TIMEOUT_MAX}）；"
            "超时则 drained 为 false，可再次调用"
        ),
    ] = None


_TASK_ID_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": TASK_ID_PATTERN},
        {"type": "integer", "minimum": 1, "maximum": 10**18 - 1},
    ]
}
# The batch paths' selection, JSON only: a form has no arrays. An empty or too long one is the
# daemon's to refuse, in the same sentence as to an RPC client.
TaskIds = Annotated[
    list[int],
    converted(json_task_ids),
    WithJsonSchema({"type": "array", "minItems": 1, "maxItems": SELECTION_MAX, "items": _TASK_ID_SCHEMA}),
    Field(description=f"所选任务的ID（task_<n> 或 <n>），1到{SELECTION_MAX}个；重复的只算一次"),
]


class SelectionBody(Body):
    forms: ClassVar[bool] = False
    task_ids: TaskIds


class CancelSelectionBody(SelectionBody):
    cancel_running: CancelRunning = False


class PrioritySelectionBody(SelectionBody):
    priority: Annotated[
        Annotated[int, Field(ge=PRIORITY_MIN, le=PRIORITY_MAX)],
        converted(json_priority),
        Field(description=f"新优先级，{PRIORITY_MIN}-{PRIORITY_MAX}，数值越小越先执行"),
    ]


# Signing in to the task manager page; JSON only.
class SessionBody(Body):
    forms: ClassVar[bool] = False
    token: Annotated[
        str, converted(json_string), Field(description="访问令牌（与 Authorization: Bearer 相同）")
    ]


B = TypeVar("B", bound=Body)


def openapi_body(model: type[Body]) -> dict[str, Any]:
    """The route's OpenAPI requestBody, from the model: JSON, and forms too if it takes them."""
    schema = model.model_json_schema(ref_template=SCHEMA_REF)
    schema.pop("$defs", None)  # see shared_schemas
    content: dict[str, Any] = {}
    if model.forms:
        form = json.loads(json.dumps(schema))
        for name, field in model.model_fields.items():
            for extra in field.metadata:
                if isinstance(extra, FormSchema):
                    form["properties"][name] = {**extra.schema, "description": field.description}
        content.update({t: {"schema": form} for t in FORM_TYPES})
    content["application/json"] = {"schema": schema}
    required = any(field.is_required() for field in model.model_fields.values())
    return {"requestBody": {"required": required, "content": content}}


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


def _bounded_int(text: str) -> int:
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise bad(f"请求体中的整数超出64位范围: {text[:40]}")
    return value


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


async def read_body(request: Request, model: type[B]) -> B:
    """The route's body as `model`, from a form or a JSON object; unknown, repeated or bad fields are 400."""
    no_query(request, ())
    body = await _read_body(request)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
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
    elif ctype in FORM_TYPES and model.forms:
        from_form = True
        pairs: Sequence[tuple[str, str | UploadFile]]
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
        raw = {name: value for name, value in raw.items() if value != ""}  # empty: absent, as in FastAPI
    else:
        accepted = " 或 ".join((*FORM_TYPES, "application/json") if model.forms else ("application/json",))
        raise ApiError(415, f"不支持的 Content-Type {ctype or '（无）'}: 请使用 {accepted}")
    try:
        return model.model_validate(raw, context={"form": from_form})
    except ValidationError as exc:
        raise bad(_first_problem(model, raw, exc)) from None


def _first_problem(model: type[Body], raw: dict[str, Any], exc: ValidationError) -> str:
    """The sentence for the first problem: an unknown field before all, then the fields in their order."""
    known = model.model_fields
    unknown = [name for name in raw if name not in known]
    if unknown:
        return f"未知参数: {unknown[0]}（可用参数: {'、'.join(known) or '无'}）"
    problems = {str(error["loc"][0]): error for error in exc.errors() if error["loc"]}
    for name in known:
        error = problems.get(name)
        if error is None:
            continue
        if error["type"] == "missing":
            return f"缺少参数: {name}"
        if error["type"] == "parameter":
            return str(error["ctx"]["detail"])
        return f"参数{name}的值无效: {error['msg']}"
    return "请求体无效"


def shared_schemas() -> dict[str, Any]:
    """The schemas the bodies refer to (JsonValue), for the document's components."""
    return dict(SubmitBody.model_json_schema(ref_template=SCHEMA_REF).get("$defs", {}))
