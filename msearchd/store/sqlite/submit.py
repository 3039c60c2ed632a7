"""New tasks in the SQLite store: one, many in one statement, or one holding a key."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from msearchd.model import TaskStatus
from msearchd.protocol import pack
from msearchd.store.rows import INSERT_FIELDS, spec_row

if TYPE_CHECKING:
    from msearchd.store.sqlite.connection import Connection
else:
    Connection = object  # Store puts the real one last among its bases

# Built once: sqlite3 finds its prepared statement by the text, which a new string hashes again.
_INSERT = f"INSERT INTO tasks ({INSERT_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


class Submits(Connection):
    """The inserts of the SQLite store."""

    def insert(
        self,
        *,
        task_type: str,
        data: dict[str, Any],
        priority: int,
        status: TaskStatus,
        depends_on: Sequence[int] = (),
        blocked_reason: str | None = None,
        retry_of: int | None = None,
        created_at: float,
        submitter: tuple[int | None, int | None] = (None, None),
    ) -> int:
        row = (task_type, str(status), priority, pack(data), blocked_reason, retry_of, created_at)
        row += submitter
        if not depends_on and self._grouping and not self._depth:
            # One statement is atomic by itself: in a group it needs no savepoint of its own.
            self._begin_group()
            return self._insert_row(row)
        with self.transaction():
            task_id = self._insert_row(row)
            if depends_on:
                self._db.executemany(
                    "INSERT OR IGNORE INTO deps (task_id, depends_on) VALUES (?, ?)",
                    [(task_id, d) for d in depends_on],
                )
        return task_id

    def _insert_row(self, row: tuple[Any, ...]) -> int:
        cur = self._db.execute(_INSERT, row)
        assert cur.lastrowid is not None
        return cur.lastrowid

    def insert_many(
        self,
        specs: Sequence[dict[str, Any]],
        created_at: float,
        submitter: tuple[int | None, int | None] = (None, None),
    ) -> list[int]:
        """Insert many tasks (each spec as the keywords of `insert`) with one statement; returns their ids."""
        uid, pid = submitter
        with self.transaction():
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'tasks'").fetchone()
            first = (row[0] if row else 0) + 1
            self._db.executemany(
                f"INSERT INTO tasks ({INSERT_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [spec_row(s, created_at, uid, pid) for s in specs],
            )
            # AUTOINCREMENT under the write lock hands out consecutive ids.
            ids = list(range(first, first + len(specs)))
            last = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'tasks'").fetchone()[0]
            assert not ids or last == ids[-1], "ids of a batch insert were not consecutive"
            deps = [(i, d) for i, spec in zip(ids, specs, strict=True) for d in spec["depends_on"]]
            if deps:
                self._db.executemany("INSERT OR IGNORE INTO deps (task_id, depends_on) VALUES (?, ?)", deps)
        return ids

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
