"""The task model: states, transitions, priorities and ids. Pure: no I/O here."""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from msearchd.errors import InvalidArgument

PRIORITY_MIN = 0
PRIORITY_MAX = 11

# Defaults by type pattern, first match wins; the API document's bands: embeddings 1-5, preprocessing
# 6-8, thumbnails and previews 9-10.
DEFAULT_PRIORITIES: tuple[tuple[str, int], ...] = (
    ("file_embed_*", 3),
    ("*_preprocess", 7),
    ("thumbnail_generate", 9),
    ("preview_generate", 10),
)
FALLBACK_PRIORITY = 6

_TYPE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_ID_RE = re.compile(r"^(?:task_)?0*([0-9]{1,18})$", re.IGNORECASE)
# Ids, offsets and counts are SQLite integers: signed 64-bit.
INT_MAX = 2**63 - 1
# Task ids in the form they are written in, each ended by a NUL: a list of them checked in one pass.
_WRITTEN_IDS = re.compile(r"(?:task_[1-9][0-9]{0,17}\x00)*")
# Task data is shown as JSON by `--json` and the REST shim, and a page of 100 tasks must fit a 16 MiB
# frame: data nested deeper, or larger (as msgpack), is refused at submit.
DATA_DEPTH_MAX = 64
DATA_BYTES_MAX = 64 * 1024


class TaskStatus(StrEnum):
    PENDING = "pending"
    BLOCKED = "blocked"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def waiting(self) -> bool:
        """Queued and not yet started: the states a plain cancel or a priority change applies to."""
        return self in (TaskStatus.PENDING, TaskStatus.BLOCKED)


TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

# The statuses a request compares with, as names of this module: CPython 3.11 caches the lookup of a
# module's name, not of an enum member.
PENDING_STATUS = TaskStatus.PENDING
CANCELLED_STATUS = TaskStatus.CANCELLED

# Running -> pending is an interruption (daemon stop or crash), never a user action.
TRANSITIONS: Mapping[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.RUNNING, TaskStatus.BLOCKED, TaskStatus.CANCELLED}),
    TaskStatus.BLOCKED: frozenset({TaskStatus.PENDING, TaskStatus.CANCELLED}),
    TaskStatus.RUNNING: frozenset(
        {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.PENDING}
    ),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


def can_transition(src: TaskStatus, dst: TaskStatus) -> bool:
    return dst in TRANSITIONS[src]


class StopReason(StrEnum):
    """How a cancelled task ended."""

    NOT_STARTED = "not_started"
    COOPERATIVE = "cooperative"
    SIGTERM = "sigterm"
    KILLED = "killed"


def format_task_id(n: int) -> str:
    return f"task_{n}"


def parse_task_id(value: object) -> int:
    """Accept `task_<n>`, `<n>` or an int; anything else is an invalid argument."""
    if type(value) is int and 0 < value <= INT_MAX:  # what clients send, checked first
        return value
    if isinstance(value, bool):
        raise InvalidArgument(f"invalid task id {value!r}: expected task_<n> or <n>")
    if isinstance(value, int):
        if 0 < value <= INT_MAX:
            return value
        if value > INT_MAX:
            raise InvalidArgument(f"invalid task id {value}: ids are at most {INT_MAX}")
        raise InvalidArgument(f"invalid task id {value}: ids start at 1")
    if isinstance(value, str):
        # The form ids are written in, read without the pattern: a wait may name thousands.
        digits = value[5:]
        canonical = digits.isdigit() and digits.isascii() and len(digits) <= 18 and digits[0] != "0"
        if canonical and value.startswith("task_"):
            return int(digits)
        m = _ID_RE.match(value.strip())
        if m:
            if int(m.group(1)) > 0:
                return int(m.group(1))
            raise InvalidArgument(f"invalid task id {value!r}: ids start at 1")
    raise InvalidArgument(f"invalid task id {value!r}: expected task_<n> or <n>")


def validate_timeout(timeout: float | None) -> None:
    """Refuse a negative (or NaN) timeout of a request that waits: before the request does anything."""
    if timeout is not None and not timeout >= 0:
        raise InvalidArgument(f"timeout must be 0 or more seconds, got {timeout!r}")


def validate_priority(value: object) -> int:
    if type(value) is int and PRIORITY_MIN <= value <= PRIORITY_MAX:  # what clients send, checked first
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(
            f"priority must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}, got {value!r}"
        )
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise InvalidArgument(f"priority must be from {PRIORITY_MIN} to {PRIORITY_MAX}, got {value}")
    return value


def parse_task_ids(values: Iterable[object]) -> list[int]:
    """Task ids in order, each once (a list may name a task twice).

    A wait may name thousands, most often as `task_<n>`: such a list is checked with one match over
    all of it, not a call for each (a third of the time). A NUL inside an id adds an end that the
    count of ends finds.
    """
    values = list(values)
    try:
        text = "\x00".join(values) + "\x00"  # type: ignore[arg-type]  # a TypeError if one is not a str
    except TypeError:
        text = None
    if text is not None and text.count("\x00") == len(values) and _WRITTEN_IDS.fullmatch(text):
        return list(dict.fromkeys(map(int, text[5:-1].split("\x00task_"))))
    return list(dict.fromkeys(parse_task_id(v) for v in values))


def _data_path(path: tuple[str | int, ...], shown: int = 8) -> str:
    """Where in the data: `data.files[2].name`; a deep path shows its first steps only."""
    steps = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[:shown])
    return "data" + steps + ("…" if len(path) > shown else "")


class _Unfit(Exception):
    """Task data without a JSON form: `_explain` says where."""


def _measure(value: Any, depth: int) -> int:
    """About how many bytes `value` takes as msgpack; _Unfit if it has no JSON form (the fast path:
    no record of where it is)."""
    kind = type(value)
    if kind is str or kind is bytes:
        return len(value)
    if kind is int or kind is bool or value is None:
        return 1
    if kind is float:
        if math.isfinite(value):
            return 9
        raise _Unfit
    if depth >= DATA_DEPTH_MAX:
        raise _Unfit
    size = 1
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise _Unfit
            size += len(key) + _measure(item, depth + 1)
    elif kind is list:
        for item in value:
            size += _measure(item, depth + 1)
    else:
        raise _Unfit
    return size


def validate_data(data: dict[str, Any]) -> None:
    """Refuse task data that has no JSON form, so that every task can be listed and shown for good.

    Allowed: maps with string keys, lists, strings, bytes (shown as text), integers, finite floats,
    booleans and null; at most DATA_DEPTH_MAX levels deep and about DATA_BYTES_MAX bytes as msgpack.
    """
    try:
        size = _measure(data, 0)
    except _Unfit:
        _explain(data)
        raise InvalidArgument("task data has no JSON form") from None
    if size > DATA_BYTES_MAX:
        raise InvalidArgument(f"task data exceeds {DATA_BYTES_MAX // 1024} KiB")


def _explain(data: dict[str, Any]) -> None:
    """Raise the InvalidArgument that names the first place in `data` without a JSON form."""
    # An explicit stack: a recursive walk would meet Python's recursion limit before the depth bound.
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        kind = type(value)
        if kind is float and not math.isfinite(value):
            raise InvalidArgument(f"{_data_path(path)} is {value}: task data has no NaN or infinity")
        if kind is dict or kind is list:
            if len(path) >= DATA_DEPTH_MAX:
                raise InvalidArgument(
                    f"{_data_path(path)} is nested too deep: task data has at most {DATA_DEPTH_MAX} levels"
                )
            if kind is dict:
                for key, item in value.items():
                    if type(key) is not str:
                        raise InvalidArgument(
                            f"{_data_path(path)} has the key {key!r}: keys of task data are strings"
                        )
                    stack.append((item, (*path, key)))
            else:
                stack.extend((item, (*path, i)) for i, item in enumerate(value))
        elif kind not in (str, bytes, int, bool, float, type(None)):
            raise InvalidArgument(
                f"{_data_path(path)} holds a msgpack {kind.__name__}: task data is limited to "
                "maps, lists, strings, bytes, numbers, booleans and null"
            )


def validate_type(value: object) -> str:
    if not isinstance(value, str) or not _TYPE_RE.match(value):
        raise InvalidArgument(f"invalid task type {value!r}: 1-100 characters of letters, digits and _ . : -")
    return value


def default_priority(task_type: str, overrides: Mapping[str, int] | None = None) -> int:
    """The configured default for a type: exact override, then override pattern, then built-in bands."""
    overrides = overrides or {}
    if task_type in overrides:
        return overrides[task_type]
    for table in (overrides.items(), DEFAULT_PRIORITIES):
        for pattern, priority in table:
            if fnmatch.fnmatchcase(task_type, pattern):
                return priority
    return FALLBACK_PRIORITY


@dataclass(slots=True)
class Task:
    # `store.rows.row_to_task` passes the fields by position: a new field goes last, or there too.
    id: int
    type: str
    status: TaskStatus
    priority: int
    data: dict[str, Any] = field(default_factory=dict)
    depends_on: list[int] = field(default_factory=list)
    progress: float = 0.0
    current_operation: str | None = None
    attempts: int = 0
    error: str | None = None
    blocked_reason: str | None = None
    stop_reason: StopReason | None = None
    retry_of: int | None = None
    retried_as: int | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    worker_pid: int | None = None
    log_path: str | None = None
    # What the handler returned: a small JSON value (paths written, sizes, counts), or None.
    result: Any = None
    host: str | None = None  # with a shared store: the daemon that runs it, or ran it last
    # Whether its run left a log, as its worker saw at the end; None where no worker said (it is
    # running, or its run ended without a report): the log file is looked for instead.
    logged: bool | None = None

    def to_wire(self) -> dict[str, Any]:
        """The public shape of a task, shared by the RPC, `--json` and the REST shim."""
        return {
            "id": format_task_id(self.id),
            "type": self.type,
            "status": str(self.status),
            "priority": self.priority,
            "data": self.data,
            "depends_on": [format_task_id(d) for d in self.depends_on] if self.depends_on else [],
            "progress": self.progress,
            "current_operation": self.current_operation,
            "attempts": self.attempts,
            "error": self.error,
            "blocked_reason": self.blocked_reason,
            "stop_reason": str(self.stop_reason) if self.stop_reason else None,
            "retry_of": format_task_id(self.retry_of) if self.retry_of else None,
            "retried_as": format_task_id(self.retried_as) if self.retried_as else None,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "worker_pid": self.worker_pid,
            "log_path": self.log_path,
            "result": self.result,
        }


def new_task_wire(
    task_id: int,
    task_type: str,
    status: TaskStatus,
    priority: int,
    data: dict[str, Any],
    depends_on: list[int],
    blocked_reason: str | None,
    created_at: float,
) -> dict[str, Any]:
    """`Task.to_wire` of a task just submitted, without building the `Task`: what every submit
    answers, about a seventh of its Python when built through one."""
    return {
        "id": format_task_id(task_id),
        "type": task_type,
        "status": str(status),
        "priority": priority,
        "data": data,
        "depends_on": [format_task_id(d) for d in depends_on] if depends_on else [],
        "progress": 0.0,
        "current_operation": None,
        "attempts": 0,
        "error": None,
        "blocked_reason": blocked_reason,
        "stop_reason": None,
        "retry_of": None,
        "retried_as": None,
        "created_at": created_at,
        "started_at": None,
        "finished_at": None,
        "worker_pid": None,
        "log_path": None,
        "result": None,
    }


def dependency_state(deps: Iterable[tuple[int, TaskStatus]]) -> tuple[TaskStatus, str | None]:
    """Where a task with these dependencies starts: pending, or blocked and why.

    A cancelled dependency is handled by the caller (the dependent is cancelled with it).
    """
    waiting: list[int] = []
    for dep_id, status in deps:
        if status is TaskStatus.FAILED:
            return TaskStatus.BLOCKED, f"dependency {format_task_id(dep_id)} failed"
        if status is not TaskStatus.COMPLETED:
            waiting.append(dep_id)
    if waiting:
        return TaskStatus.BLOCKED, "waiting for " + ", ".join(format_task_id(d) for d in sorted(waiting))
    return TaskStatus.PENDING, None
