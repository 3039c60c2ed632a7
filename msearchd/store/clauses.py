"""What both stores share about WHERE clauses: the filters of `list`/`count` and the translation of
a selection, written once over the two SQL dialects (how a value is bound, how a set of values and a
type glob are tested)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from msearchd.selection import Selection, is_glob
from msearchd.store.schema import WAITING


class Dialect:
    """SQLite's: `?` marks, `IN (?, ...)` sets, GLOB patterns."""

    mark = "?"

    def one_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """A test that `column` is one of `values`, and what it binds."""
        return f"{column} IN ({','.join([self.mark] * len(values))})", list(values)

    def glob(self, column: str, pattern: str) -> tuple[str, list[Any]]:
        """A test that `column` matches the type glob `pattern` as fnmatch does, and what it binds."""
        translated = sqlite_glob(pattern)
        return (f"{column} GLOB ?", [translated]) if translated is not None else (_NOTHING, [])


class PgDialect(Dialect):
    """PostgreSQL's: `%s` marks, `= ANY(%s)` over one array, anchored regexes."""

    mark = "%s"

    def one_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(%s)", [list(values)]

    def glob(self, column: str, pattern: str) -> tuple[str, list[Any]]:
        regex = glob_regex(pattern)
        return (f"{column} ~ %s", [regex]) if regex is not None else (_NOTHING, [])


SQLITE = Dialect()
POSTGRES = PgDialect()


def _add(tests: list[str], args: list[Any], tested: tuple[str, list[Any]]) -> None:
    """Put a test and what it binds with the others: the values stay in the order of their marks."""
    test, bound = tested
    tests.append(test)
    args.extend(bound)


def filters(dialect: Dialect, statuses: Sequence[str] | None, task_type: str | None) -> tuple[str, list[Any]]:
    """The WHERE of `list` and `count` (empty for no filter), and its arguments."""
    clauses: list[str] = []
    args: list[Any] = []
    if statuses:
        _add(clauses, args, dialect.one_of("status", statuses))
    if task_type is not None:
        clauses.append(f"type = {dialect.mark}")
        args.append(task_type)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def type_is(dialect: Dialect, types: Sequence[str]) -> tuple[str, list[Any]]:
    """A test that `type` is one of `types` (exact types or globs, at least one), and its arguments."""
    exact = [t for t in types if not is_glob(t)]
    tests: list[str] = []
    args: list[Any] = []
    if exact:
        _add(tests, args, dialect.one_of("type", exact))
    for pattern in (t for t in types if is_glob(t)):
        _add(tests, args, dialect.glob("type", pattern))
    return "(" + " OR ".join(tests) + ")", args


def types_except(dialect: Dialect, types: Sequence[str]) -> tuple[str, list[Any]]:
    """` AND` a test that `type` is none of `types` (exact types or globs), and its arguments; nothing
    for none."""
    if not types:
        return "", []
    clause, args = type_is(dialect, types)
    return f" AND NOT {clause}", args


def window_where(
    dialect: Dialect,
    selection: Selection,
    statuses: Sequence[str],
    after: int,
    up_to: int,
    not_retried: bool,
) -> tuple[str, list[Any]] | None:
    """The WHERE (without the word) of `select_window` and its arguments: ids in (after, up_to], in
    these statuses, the selection's fields SQL can test; None when its ids leave nothing to read."""
    m = dialect.mark
    clauses = [f"id > {m}", f"id <= {m}"]
    args: list[Any] = [after, up_to]
    _add(clauses, args, dialect.one_of("status", statuses))
    if selection.ids:
        wanted = [i for i in selection.ids if after < i <= up_to]
        if not wanted:
            return None
        _add(clauses, args, dialect.one_of("id", wanted))
    if selection.types:
        _add(clauses, args, type_is(dialect, selection.types))
    if selection.priority is not None:
        clauses.append(f"priority BETWEEN {m} AND {m}")
        args += list(selection.priority)
    if selection.created_before is not None:
        clauses.append(f"created_at < {m}")
        args.append(selection.created_before)
    if selection.created_after is not None:
        clauses.append(f"created_at >= {m}")
        args.append(selection.created_after)
    if not_retried:
        clauses.append("retried_as IS NULL")
    return " AND ".join(clauses), args


# A part of a type glob: "*", "?", another character (itself), or a set of characters (negated or
# not) as ranges (first, last) of code points.
GlobPart = str | tuple[bool, list[tuple[int, int]]]
# What a glob that no type can match is tested as.
_NOTHING = "1 = 0"


def cancel_window_where(
    dialect: Dialect, selection: Selection, statuses: Sequence[str], after: int, up_to: int
) -> tuple[str, list[Any]] | None:
    """`window_where` for `cancel_window`: only the waiting ones of `statuses` (a cancel takes no
    other); None when nothing in the window can be cancelled."""
    waiting = [s for s in statuses if s in WAITING]
    return window_where(dialect, selection, waiting, after, up_to, False) if waiting else None


def glob_parts(pattern: str) -> list[GlobPart]:
    """A type glob read as Python's fnmatch reads it (the service's own test, `Selection.holds`):
    `*`, `?`, `[...]` and `[!...]`, `]` first in a set stands for itself, `a-z` is a range (one that
    runs backwards holds nothing), an unclosed `[` stands for itself."""
    parts: list[GlobPart] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c != "[":
            parts.append(c)  # "*" and "?" are wildcards; any other character stands for itself
            continue
        j = i + (i < n and pattern[i] == "!")
        j += j < n and pattern[j] == "]"
        while j < n and pattern[j] != "]":
            j += 1
        if j >= n:
            parts.append("[")
            continue
        negated = pattern[i] == "!"
        body = pattern[i + negated : j]
        ranges: list[tuple[int, int]] = []
        k = 0
        while k < len(body):
            if k + 2 < len(body) and body[k + 1] == "-":
                ranges.append((ord(body[k]), ord(body[k + 2])))
                k += 3
            else:
                ranges.append((ord(body[k]), ord(body[k])))
                k += 1
        parts.append((negated, [(lo, hi) for lo, hi in ranges if lo <= hi]))
        i = j + 1
    return parts


def glob_regex(pattern: str) -> str | None:
    """A type glob as an anchored PostgreSQL regex that matches what fnmatch matches; None when
    nothing can match it (a set that holds no character)."""

    def char(code: int) -> str:
        c = chr(code)
        return c if c.isalnum() or c == "_" else "\\" + c

    out = []
    for part in glob_parts(pattern):
        if part == "*":
            out.append(".*")
        elif part == "?":
            out.append(".")
        elif isinstance(part, str):
            out.append(char(ord(part)))
        else:
            negated, ranges = part
            if not ranges:
                if not negated:
                    return None
                out.append(".")
                continue
            inside = "".join(char(lo) if lo == hi else f"{char(lo)}-{char(hi)}" for lo, hi in ranges)
            out.append(f"[{'^' if negated else ''}{inside}]")
    return "^" + "".join(out) + "$"


# Characters a SQLite GLOB set reads specially: "]" ends it (but first), "-" makes a range (but first
# or last), "^" negates it (first).
_SET_SPECIAL = (ord("-"), ord("]"), ord("^"))


def sqlite_glob(pattern: str) -> str | None:
    """A type glob as a SQLite GLOB pattern that matches what fnmatch matches; None when nothing can
    match it. GLOB negates a set with `^`, not `!`, and has no escape: a wildcard character stands
    for itself inside a set."""

    def char(c: str) -> str:
        return f"[{c}]" if c in "*?[" else c

    out = []
    for part in glob_parts(pattern):
        if isinstance(part, str):
            out.append(part if part in "*?" else char(part))
            continue
        negated, ranges = part
        if not ranges:
            if not negated:
                return None
            out.append("?")
            continue
        plain: list[tuple[int, int]] = []
        special: set[int] = set()
        for lo, hi in ranges:
            for code in _SET_SPECIAL:
                if lo <= code <= hi:
                    special.add(code)
                    if lo < code:
                        plain.append((lo, code - 1))
                    lo = code + 1
            if lo <= hi:
                plain.append((lo, hi))
        if not negated and not plain and len(special) == 1:
            out.append(chr(special.pop()))  # one of "-", "]", "^" alone: itself
            continue
        # "]" first stands for itself, then "-" (nothing before it to range from), "^" last.
        inside = "]" if ord("]") in special else ""
        inside += "-" if ord("-") in special else ""
        inside += "".join(chr(lo) if lo == hi else f"{chr(lo)}-{chr(hi)}" for lo, hi in plain)
        inside += "^" if ord("^") in special else ""
        out.append(f"[{'^' if negated else ''}{inside}]")
    return "".join(out)
