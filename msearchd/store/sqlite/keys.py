"""Keys held by unfinished tasks, and queue pauses, in the SQLite store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from msearchd.model import Task
from msearchd.store.rows import event_dicts, row_to_task
from msearchd.store.sqlite.connection import CHUNK, COLUMNS, marks

if TYPE_CHECKING:
    from msearchd.store.sqlite.connection import Connection
else:
    Connection = object  # Store puts the real one last among its bases


class KeysAndPauses(Connection):
    """Task keys and paused types."""

    def unfinished_with_key(self, key: str) -> Task | None:
        """The pending, blocked or running task that holds `key`, if one does."""
        row = self._db.execute(
            f"SELECT {COLUMNS} FROM tasks INDEXED BY tasks_key WHERE key = ? "
            "AND status IN ('pending', 'blocked', 'running')",
            (key,),
        ).fetchone()
        return row_to_task(row) if row else None

    def keys(self, ids: Sequence[int]) -> dict[int, str]:
        """The keys of those of `ids` that have one."""
        out: dict[int, str] = {}
        for start in range(0, len(ids), CHUNK):
            part = list(ids[start : start + CHUNK])
            rows = self._db.execute(
                f"SELECT id, key FROM tasks WHERE id IN ({marks(len(part))}) AND key IS NOT NULL", part
            )
            out.update(rows)
        return out

    def pauses(self) -> list[tuple[str, float, int | None, int | None]]:
        """(type, since, uid, pid) of each paused type; '*' is the whole queue."""
        return self._db.execute("SELECT type, time, uid, pid FROM queue_pauses ORDER BY type").fetchall()

    def add_pauses(self, types: Sequence[str], time: float, uid: int | None, pid: int | None) -> list[str]:
        """Pause these types; returns those not paused before (the others keep who paused them)."""
        added = []
        for t in types:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO queue_pauses (type, time, uid, pid) VALUES (?, ?, ?, ?)",
                (t, time, uid, pid),
            )
            if cur.rowcount:
                added.append(t)
        return added

    def remove_pauses(self, types: Sequence[str] | None) -> list[str]:
        """Resume these types (all, when None); returns those that were paused."""
        if types is None:
            rows = self._db.execute("DELETE FROM queue_pauses RETURNING type").fetchall()
        else:
            rows = self._db.execute(
                f"DELETE FROM queue_pauses WHERE type IN ({marks(len(types))}) RETURNING type", list(types)
            ).fetchall()
        return sorted(r[0] for r in rows)

    def queue_requests(self, events: Sequence[str], limit: int) -> list[dict[str, Any]]:
        """The latest requests about the whole queue recorded as one of `events`, oldest first."""
        rows = self._db.execute(
            f"SELECT time, event, detail, uid, pid FROM task_events WHERE task_id IS NULL "
            f"AND event IN ({marks(len(events))}) ORDER BY id DESC LIMIT ?",
            (*events, limit),
        ).fetchall()
        return event_dicts(reversed(rows))
