"""Keys held by unfinished tasks, and queue pauses, in the PostgreSQL store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from msearchd.model import Task
from msearchd.store.postgres.connection import COLUMNS
from msearchd.store.rows import event_dicts, row_to_task

if TYPE_CHECKING:
    from msearchd.store.postgres.connection import Connection
else:
    Connection = object  # PgStore puts the real one last among its bases

# How long a pause waits for the claims under way (see `_lock_out_claims`): well under the heartbeat
# delay after which the other daemons take this one for dead, as its loop waits with it.
CLAIMS_WAIT = 2.0


class KeysAndPauses(Connection):
    """Task keys and paused types."""

    def unfinished_with_key(self, key: str) -> Task | None:
        """The pending, blocked or running task that holds `key`, if one does."""
        row = self._run(
            f"SELECT {COLUMNS} FROM tasks WHERE key = %s AND status IN ('pending', 'blocked', 'running')",
            (key,),
        ).fetchone()
        return row_to_task(row) if row else None

    def keys(self, ids: Sequence[int]) -> dict[int, str]:
        """The keys of those of `ids` that have one."""
        rows = self._run("SELECT id, key FROM tasks WHERE id = ANY(%s) AND key IS NOT NULL", (list(ids),))
        return {i: k for i, k in rows}

    def pauses(self) -> list[tuple[str, float, int | None, int | None]]:
        """(type, since, uid, pid) of each paused type, by type; '*' is the whole queue."""
        return [
            (t, w, u, p)
            for t, w, u, p in self._run("SELECT type, time, uid, pid FROM queue_pauses ORDER BY type")
        ]

    def add_pauses(self, types: Sequence[str], time: float, uid: int | None, pid: int | None) -> list[str]:
        """Pause these types; returns those not paused before (the others keep who paused them)."""
        added = []
        with self.transaction():
            self._lock_out_claims()
            for t in types:
                cur = self._run(
                    "INSERT INTO queue_pauses (type, time, uid, pid) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (type) DO NOTHING",
                    (t, time, uid, pid),
                )
                if cur.rowcount:
                    added.append(t)
        return added

    def _lock_out_claims(self) -> None:
        """Wait for the claims under way to commit, and keep new ones waiting until this transaction
        ends: every claim reads this table (see `claim_next`), so those after it see the pause, and none
        that began before commits a start after it, unseen by a drain. A daemon that does not end its
        claim (stopped, cut off) is waited for CLAIMS_WAIT seconds at most: the pause goes in without."""
        self._run("SAVEPOINT lock_out_claims")
        self._run(f"SET LOCAL lock_timeout = {int(CLAIMS_WAIT * 1000)}")
        try:
            self._connection().execute("LOCK TABLE queue_pauses IN ACCESS EXCLUSIVE MODE")
        except psycopg.errors.LockNotAvailable:
            self._run("ROLLBACK TO SAVEPOINT lock_out_claims")
            return
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from None
        self._run("SET LOCAL lock_timeout = DEFAULT")
        self._run("RELEASE SAVEPOINT lock_out_claims")

    def remove_pauses(self, types: Sequence[str] | None) -> list[str]:
        """Resume these types (all, when None); returns those that were paused, sorted."""
        if types is None:
            rows = self._run("DELETE FROM queue_pauses RETURNING type").fetchall()
        else:
            rows = self._run(
                "DELETE FROM queue_pauses WHERE type = ANY(%s) RETURNING type", (list(types),)
            ).fetchall()
        return sorted(r[0] for r in rows)

    def queue_requests(self, events: Sequence[str], limit: int) -> list[dict[str, Any]]:
        """The latest `limit` requests about the whole queue recorded as one of `events`, oldest first:
        of every daemon."""
        rows = self._run(
            "SELECT time, event, detail, uid, pid FROM task_events WHERE task_id IS NULL "
            "AND event = ANY(%s) ORDER BY id DESC LIMIT %s",
            (list(events), limit),
        ).fetchall()
        return event_dicts(reversed(rows))
