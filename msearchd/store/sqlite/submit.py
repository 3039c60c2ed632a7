"""New tasks in the SQLite store: one, many in one statement, or one holding a key."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any

from msearchd.store.rows import BATCH_FIELDS, INSERT_FIELDS, NEW_ROW_FIELDS, NewRow, SpecInserts, spec_row
from msearchd.store.sqlite.connection import CHUNK

if TYPE_CHECKING:
    from msearchd.store.sqlite.connection import Connection
else:
    Connection = object  # Store puts the real one last among its bases

# Built once: sqlite3 finds its prepared statement by the text, which a new string hashes again.
_INSERT = f"INSERT INTO tasks ({INSERT_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


_ROW_WIDTH = len(NEW_ROW_FIELDS.split(","))
# New rows one INSERT writes: their values, and the three they share, stay within CHUNK marks.
_ROWS_PER_INSERT = (CHUNK - 3) // _ROW_WIDTH


class Submits(SpecInserts, Connection):
    """The inserts of the SQLite store."""

    def _insert_row(self, row: tuple[Any, ...]) -> int:
        cur = self._db.execute(_INSERT, row)
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _insert_deps(self, pairs: list[tuple[int, int]]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO deps (task_id, depends_on) VALUES (?, ?)", pairs)

    def insert_rows(
        self,
        rows: Sequence[NewRow],
        depends_on: Sequence[tuple[int, Sequence[int]]],
        created_at: float,
        submitter: tuple[int | None, int | None] = (None, None),
    ) -> list[int]:
        """Insert new tasks, all or none; returns their ids, consecutive. A statement writes many
        rows: a third less than a statement a row (executemany), which opens the table and its
        indexes again for every row."""
        uid, pid = submitter
        with self.transaction():
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'tasks'").fetchone()
            first = (row[0] if row else 0) + 1
            for start in range(0, len(rows), _ROWS_PER_INSERT):
                part = rows[start : start + _ROWS_PER_INSERT]
                self._db.execute(self._insert_rows_sql(len(part)), (created_at, uid, pid, *chain(*part)))
            # AUTOINCREMENT under the write lock hands out consecutive ids, in the order of the rows.
            ids = list(range(first, first + len(rows)))
            last = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'tasks'").fetchone()
            assert not ids or last[0] == ids[-1], "ids of a batch insert were not consecutive"
            if depends_on:
                self._db.executemany(
                    "INSERT OR IGNORE INTO deps (task_id, depends_on) VALUES (?, ?)",
                    [(first + i, d) for i, deps in depends_on for d in deps],
                )
        return ids

    def _insert_rows_sql(self, count: int) -> str:
        """The INSERT of `count` new rows: ?1-?3 the values they share, then each row's own."""
        sql = self._insert_sql.get(count)
        if sql is None:
            values = ",".join(
                "(" + "".join(f"?{4 + r * _ROW_WIDTH + c}," for c in range(_ROW_WIDTH)) + "?1,?2,?3)"
                for r in range(count)
            )
            sql = self._insert_sql[count] = (
                f"INSERT INTO tasks ({NEW_ROW_FIELDS}, {BATCH_FIELDS}) VALUES {values}"
            )
        return sql

    def insert_keyed(self, key: str, **spec: Any) -> int | None:
        """Insert a task (keywords of `insert`) holding `key`; None, and nothing written, when an
        unfinished task holds it already."""
        uid, pid = spec.get("submitter", (None, None))
        row = (*spec_row(spec, spec["created_at"], uid, pid), key)
        try:
            with self.transaction():
                cur = self._db.execute(
                    f"INSERT INTO tasks ({INSERT_FIELDS}, key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                task_id = cur.lastrowid
                assert task_id is not None
                if spec.get("depends_on"):
                    self._db.executemany(
                        "INSERT OR IGNORE INTO deps (task_id, depends_on) VALUES (?, ?)",
                        [(task_id, d) for d in spec["depends_on"]],
                    )
        except sqlite3.IntegrityError:
            return None
        return task_id
