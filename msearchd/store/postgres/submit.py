"""New tasks in the PostgreSQL store: one, many (ids taken from the sequence first), or one holding a key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from msearchd.store.rows import BATCH_FIELDS, INSERT_FIELDS, NEW_ROW_FIELDS, NewRow, SpecInserts, spec_row

if TYPE_CHECKING:
    from msearchd.store.postgres.connection import Connection
else:
    Connection = object  # PgStore puts the real one last among its bases


class Submits(SpecInserts, Connection):
    """The inserts of the PostgreSQL store."""

    def _insert_row(self, row: tuple[Any, ...]) -> int:
        return int(
            self._run(
                f"INSERT INTO tasks ({INSERT_FIELDS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "RETURNING id",
                row,
            ).fetchone()[0]  # type: ignore[index]
        )

    def _insert_deps(self, pairs: list[tuple[int, int]]) -> None:
        self._many("INSERT INTO deps (task_id, depends_on) VALUES (%s, %s) ON CONFLICT DO NOTHING", pairs)

    def insert_rows(
        self,
        rows: Sequence[NewRow],
        depends_on: Sequence[tuple[int, Sequence[int]]],
        created_at: float,
        submitter: tuple[int | None, int | None] = (None, None),
    ) -> list[int]:
        """Insert new tasks, all or none; returns their ids, in order. Other daemons insert at the
        same time: the ids are taken from the sequence first."""
        if not rows:
            return []
        uid, pid = submitter
        with self.transaction():
            ids = [
                r[0]
                for r in self._run(
                    "SELECT nextval(pg_get_serial_sequence('tasks', 'id')) FROM generate_series(1, %s)",
                    (len(rows),),
                )
            ]
            self._many(
                f"INSERT INTO tasks (id, {NEW_ROW_FIELDS}, {BATCH_FIELDS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(i, *row, created_at, uid, pid) for i, row in zip(ids, rows, strict=True)],
            )
            self._many(
                "INSERT INTO deps (task_id, depends_on) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                [(ids[i], d) for i, deps in depends_on for d in deps],
            )
        return ids

    def insert_keyed(self, key: str, **spec: Any) -> int | None:
        """Insert a task (keywords of `insert`) holding `key`; None, and nothing written, when an
        unfinished task holds it already. The unique index decides, so two daemons never both win."""
        uid, pid = spec.get("submitter", (None, None))
        with self.transaction():
            row = self._run(
                f"INSERT INTO tasks ({INSERT_FIELDS}, key) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (key) WHERE key IS NOT NULL AND status IN ('pending', 'blocked', 'running') "
                "DO NOTHING RETURNING id",
                (*spec_row(spec, spec["created_at"], uid, pid), key),
            ).fetchone()
            if row is None:
                return None
            task_id = int(row[0])
            self._many(
                "INSERT INTO deps (task_id, depends_on) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                [(task_id, d) for d in spec.get("depends_on") or ()],
            )
        return task_id
