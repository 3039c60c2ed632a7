"""Request parameters: task ids, query parameters, and the fields of bodies as forms and JSON spell them.

Each refusal is a 400 with one sentence in the API document's Chinese, naming the parameter.
"""

# The answers are in Chinese, like the API document's, and use its full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import json
import logging
import re
from typing import Annotated, Any

from fastapi import Path as PathParam
from fastapi import Request
from fastapi.exceptions import RequestValidationError

from msearchd.http.answers import ApiError
from msearchd.model import PRIORITY_MAX, PRIORITY_MIN, TaskStatus

log = logging.getLogger("msearchd.http")

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


def json_optional_text(name: str, value: Any) -> str | None:
    return None if value is None else json_string(name, value)


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


def json_seconds(name: str, value: Any, most: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= most:
        raise bad(f"参数{name}必须是0到{most}之间的秒数: {json.dumps(value, ensure_ascii=False)}")
    return float(value)


def json_string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise bad(f"参数{name}必须是字符串")
    return value


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
