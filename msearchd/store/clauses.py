"""What both stores share about WHERE clauses: the filters of `list`/`count` and the translation of
a selection, written once over the two SQL dialects (how a value is bound, how a set of values and a
type glob are tested)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from msearchd.selection import Selection


class Dialect:
    """SQLite's: `?` marks, `IN (?, ...)` sets, GLOB patterns."""

    mark = "?"

    def one_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """A test that `column` is one of `values`, and what it binds."""
        return f"{column} IN ({','.join([self.mark] * len(values))})", list(values)

    def glob(self, column: str, pattern: str) -> tuple[str, Any]:
        """A test that `column` matches the type glob `pattern`, and what it binds."""
        return f"{column} GLOB ?", pattern


class PgDialect(Dialect):
    """PostgreSQL's: `%s` marks, `= ANY(%s)` over one array, anchored regexes."""

    mark = "%s"

    def one_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(%s)", [list(values)]

    def glob(self, column: str, pattern: str) -> tuple[str, Any]:
        return f"{column} ~ %s", glob_regex(pattern)


SQLITE = Dialect()
POSTGRES = PgDialect()


def filters(dialect: Dialect, statuses: Sequence[str] | None, task_type: str | None) -> tuple[str, list[Any]]:
    """The WHERE of `list` and `count` (empty for no filter), and its arguments."""
    clauses: list[str] = []
    args: list[Any] = []
    if statuses:
        clause, bound = dialect.one_of("status", statuses)
        clauses.append(clause)
        args += bound
    if task_type is not None:
        clauses.append(f"type = {dialect.mark}")
        args.append(task_type)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


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
    clause, bound = dialect.one_of("status", statuses)
    clauses.append(clause)
    args += bound
    if selection.ids:
        wanted = [i for i in selection.ids if after < i <= up_to]
        if not wanted:
            return None
        clause, bound = dialect.one_of("id", wanted)
        clauses.append(clause)
        args += bound
    if selection.types:
        tests: list[str] = []
        if selection.exact_types:
            clause, bound = dialect.one_of("type", selection.exact_types)
            tests.append(clause)
            args += bound
        for pattern in selection.type_globs:
            clause, value = dialect.glob("type", pattern)
            tests.append(clause)
            args.append(value)
        clauses.append("(" + " OR ".join(tests) + ")")
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


def glob_regex(pattern: str) -> str:
    """A type glob as an anchored PostgreSQL regex, matching what fnmatch matches (as the SQLite
    store's GLOB does): `*`, `?`, `[...]` and `[!...]`; an unclosed `[` stands for itself."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i + (i < n and pattern[i] == "!")
            j += j < n and pattern[j] == "]"
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")
                continue
            inside = pattern[i:j].replace("\\", "\\\\").replace("[", "\\[")
            out.append("[" + ("^" + inside[1:] if inside.startswith("!") else inside) + "]")
            i = j + 1
        else:
            out.append(c if c.isalnum() or c == "_" else "\\" + c)
    return "^" + "".join(out) + "$"
