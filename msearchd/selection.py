"""Selections: which tasks a bulk operation (cancel, priority, retry) is about. Pure: no I/O here.

A selection arrives as a map (from the RPC, the REST shim or msearchctl) and is read here once, so that
every transport accepts and refuses the same things with the same words:

- ``ids``: task ids (``task_<n>`` or ``<n>``);
- ``types``: exact types or globs (``file_embed_*``; ``*``, ``?`` and ``[...]`` as in a shell);
- ``statuses``: task statuses;
- ``priority``: a value (``9``) or an inclusive range (``3..5``, ``..5``, ``9..``);
- ``older_than`` / ``newer_than``: on the time a task was created; a duration back from now (``90s``,
  ``30m``, ``2h``, ``1d``, ``2w``), a date (``2026-12-01``) or a date and time (``2026-12-01T08:30``,
  local time unless it names its offset), or seconds since the epoch (a number);
- ``where``: matches on the task's data, ``FIELD OP VALUE`` each, all of which must hold. FIELD is a key
  of the data, or a dotted path into nested maps (``source.path``); OP is ``=`` (equals), ``!=`` (differs,
  or the field is absent), ``^=`` (starts with), ``$=`` (ends with) or ``*=`` (contains). Values compare
  as text: a number as written in JSON, true/false, null.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from msearchd.errors import InvalidArgument
from msearchd.model import PRIORITY_MAX, PRIORITY_MIN, TaskStatus, parse_task_ids

SELECTION_FIELDS = ("ids", "types", "statuses", "priority", "older_than", "newer_than", "where")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])\s*$")
TYPE_GLOB_PATTERN = r"^[A-Za-z0-9_.:*?\[\]!-]{1,100}$"  # a task type, or a glob of types
_TYPE_GLOB_RE = re.compile(TYPE_GLOB_PATTERN)
_PRIORITY_RE = re.compile(r"^\s*([0-9]*)\s*\.\.\s*([0-9]*)\s*$")
_WHERE_RE = re.compile(r"^\s*([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\s*(!=|\^=|\$=|\*=|=)(.*)$", re.DOTALL)
WHERE_OPS = ("=", "!=", "^=", "$=", "*=")
SAMPLE_SIZE = 20  # ids a dry run shows


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def type_matches(task_type: str, patterns: Iterable[str]) -> bool:
    """Whether the type is one of `patterns` (exact types or globs such as `file_embed_*`)."""
    return any(fnmatch.fnmatchcase(task_type, p) for p in patterns)


def validate_type_pattern(value: object) -> str:
    """A task type, or a glob of types (`file_embed_*`), as a selection or a pause names them."""
    if not isinstance(value, str) or not _TYPE_GLOB_RE.match(value):
        raise InvalidArgument(f"invalid task type or pattern {value!r}")
    return value


def parse_time(value: object, now: float, what: str) -> float:
    """A point in time, in seconds since the epoch, from a duration back from `now` or a date."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidArgument(f"{what} must be a duration (30m, 2h, 1d) or a date, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{what} must be a finite time, got {value!r}")
        return float(value)
    match = _DURATION_RE.match(value)
    if match:
        return now - float(match[1]) * _UNITS[match[2]]
    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise InvalidArgument(
            f"{what} must be a duration (90s, 30m, 2h, 1d, 2w) or a date (2026-12-01, "
            f"2026-12-01T08:30), got {value!r}"
        ) from None


def parse_priority_range(value: object) -> tuple[int, int]:
    """An inclusive (low, high) range of priorities from ``9``, ``3..5``, ``..5`` or ``9..``."""
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and value.strip().isdigit():
        low = high = int(value)
    elif isinstance(value, str) and (match := _PRIORITY_RE.match(value)) and (match[1] or match[2]):
        low = int(match[1]) if match[1] else PRIORITY_MIN
        high = int(match[2]) if match[2] else PRIORITY_MAX
    else:
        raise InvalidArgument(f"priority must be a value or a range (3..5, ..5, 9..), got {value!r}")
    if not (PRIORITY_MIN <= low <= PRIORITY_MAX and PRIORITY_MIN <= high <= PRIORITY_MAX) or low > high:
        raise InvalidArgument(
            f"priority range {value!r} must lie within {PRIORITY_MIN}..{PRIORITY_MAX}, low end first"
        )
    return low, high


@dataclass(frozen=True, slots=True)
class Match:
    """One ``FIELD OP VALUE`` test on a task's data."""

    path: tuple[str, ...]
    op: str
    value: str

    def holds(self, data: Mapping[str, Any]) -> bool:
        found: Any = data
        for key in self.path:
            if not isinstance(found, Mapping) or key not in found:
                return self.op == "!="
            found = found[key]
        if isinstance(found, Mapping | list):
            return self.op == "!="
        text = _as_text(found)
        if self.op == "=":
            return text == self.value
        if self.op == "!=":
            return text != self.value
        if self.op == "^=":
            return text.startswith(self.value)
        if self.op == "$=":
            return text.endswith(self.value)
        return self.value in text

    def __str__(self) -> str:
        return f"{'.'.join(self.path)}{self.op}{self.value}"


def _as_text(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def parse_match(text: object) -> Match:
    if not isinstance(text, str) or not (match := _WHERE_RE.match(text)):
        raise InvalidArgument(
            f"a where match is FIELD OP VALUE with OP one of {', '.join(WHERE_OPS)} "
            f"(path^=/mnt/nas/), got {text!r}"
        )
    return Match(tuple(match[1].split(".")), match[2], match[3])


@dataclass(frozen=True, slots=True)
class Selection:
    """Which tasks an operation is about; an empty field does not narrow it."""

    ids: tuple[int, ...] = ()
    types: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    priority: tuple[int, int] | None = None
    created_before: float | None = None  # older_than
    created_after: float | None = None  # newer_than
    where: tuple[Match, ...] = field(default=())

    def narrowed_to(self, allowed: Sequence[str]) -> tuple[str, ...]:
        """The statuses it selects among `allowed` (all of them when it names none)."""
        if not self.statuses:
            return tuple(allowed)
        return tuple(s for s in self.statuses if s in allowed)

    def data_matches(self, data: Mapping[str, Any]) -> bool:
        return all(m.holds(data) for m in self.where)

    def holds(
        self,
        task_id: int,
        task_type: str,
        status: str,
        priority: int,
        created_at: float,
        data: Mapping[str, Any],
    ) -> bool:
        """Whether it selects this task: the same tests as the store's, for tasks read one by one."""
        return (
            (not self.ids or task_id in self.ids)
            and (not self.types or type_matches(task_type, self.types))
            and (not self.statuses or status in self.statuses)
            and (self.priority is None or self.priority[0] <= priority <= self.priority[1])
            and (self.created_before is None or created_at < self.created_before)
            and (self.created_after is None or created_at >= self.created_after)
            and self.data_matches(data)
        )

    def to_wire(self) -> dict[str, Any]:
        """The selection as read, times made absolute: what a run right after a preview sends again."""
        out: dict[str, Any] = {}
        if self.ids:
            out["ids"] = [f"task_{i}" for i in self.ids]
        if self.types:
            out["types"] = list(self.types)
        if self.statuses:
            out["statuses"] = list(self.statuses)
        if self.priority is not None:
            low, high = self.priority
            out["priority"] = str(low) if low == high else f"{low}..{high}"
        if self.created_before is not None:
            out["older_than"] = self.created_before
        if self.created_after is not None:
            out["newer_than"] = self.created_after
        if self.where:
            out["where"] = [str(m) for m in self.where]
        return out

    def describe(self) -> str:
        """One line for logs and histories."""
        parts = [f"{k}={v}" for k, v in self.to_wire().items()]
        return ", ".join(parts) if parts else "every task"


def _strings(value: object, name: str) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise InvalidArgument(f"selection field {name!r} must be a list, got {value!r}")
    return value


def parse_selection(wire: object, now: float) -> Selection:
    """Read a selection map; refuses unknown fields, which would otherwise select more than meant."""
    if wire is None:
        wire = {}
    if not isinstance(wire, Mapping):
        raise InvalidArgument("a selection must be a map")
    unknown = sorted(set(wire) - set(SELECTION_FIELDS))
    if unknown:
        raise InvalidArgument(
            f"a selection has no field {unknown[0]!r}; its fields: {', '.join(SELECTION_FIELDS)}"
        )
    ids = tuple(parse_task_ids(_strings(wire.get("ids") or [], "ids")))
    types = [validate_type_pattern(t) for t in _strings(wire.get("types") or [], "types")]
    statuses: list[str] = []
    for s in _strings(wire.get("statuses") or [], "statuses"):
        try:
            statuses.append(str(TaskStatus(str(s).strip())))
        except ValueError:
            names = ", ".join(x.value for x in TaskStatus)
            raise InvalidArgument(f"unknown status {s!r}; one of: {names}") from None
    priority = wire.get("priority")
    older, newer = wire.get("older_than"), wire.get("newer_than")
    return Selection(
        ids=ids,
        types=tuple(types),
        statuses=tuple(statuses),
        priority=None if priority is None else parse_priority_range(priority),
        created_before=None if older is None else parse_time(older, now, "older_than"),
        created_after=None if newer is None else parse_time(newer, now, "newer_than"),
        where=tuple(parse_match(m) for m in _strings(wire.get("where") or [], "where")),
    )


@dataclass(slots=True)
class Preview:
    """What an operation on a selection would touch, counted as it is scanned."""

    count: int = 0
    by_type: dict[str, dict[str, int]] = field(default_factory=dict)
    sample: list[int] = field(default_factory=list)

    def add(self, task_id: int, task_type: str, status: str) -> None:
        self.count += 1
        counts = self.by_type.setdefault(task_type, {})
        counts[status] = counts.get(status, 0) + 1
        if len(self.sample) < SAMPLE_SIZE:
            self.sample.append(task_id)
