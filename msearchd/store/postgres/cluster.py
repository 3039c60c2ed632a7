"""What daemons sharing the PostgreSQL store know of each other: the `daemons` table (registration,
heartbeats, the tasks of one that is gone) and notifications (LISTEN/NOTIFY) carrying cancels and
events between them."""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import msgpack
import psycopg

from msearchd.model import Task
from msearchd.protocol import pack
from msearchd.selection import is_glob
from msearchd.store.clauses import glob_regex
from msearchd.store.postgres.connection import COLUMNS, CONNECT

if TYPE_CHECKING:
    from msearchd.store.postgres.connection import Connection
else:
    Connection = object  # PgStore puts the real one last among its bases

# NOTIFY refuses payloads of 8000 bytes or more; base64 makes 4 characters of 3 bytes.
NOTIFY_MAX = 5800


class Cluster(Connection):
    """The daemons of the store, and the notifications between them."""

    if TYPE_CHECKING:
        limited_types: frozenset[str]  # see Leases

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holds: set[int] = set()  # the holds on starts this daemon puts (see `hold_starts`)

    def host_of(self, task_id: int) -> str | None:
        """The daemon that runs the task (or ran it last)."""
        row = self._run("SELECT host FROM tasks WHERE id = %s", (task_id,)).fetchone()
        return row[0] if row else None

    def running_here(self) -> list[Task]:
        """The running tasks of this daemon."""
        return self._tasks(
            f"SELECT {COLUMNS} FROM tasks WHERE status = 'running' AND host = %s ORDER BY id",
            (self.daemon_id,),
        )

    def register(self, workers: int) -> list[str]:
        """Enter this daemon in the `daemons` table. Returns the earlier daemons of this machine and
        state folder: this one holds that folder's lock, so they are gone, and their running tasks
        are this daemon's to settle (see `adopt`)."""
        with self.transaction():
            gone = [
                r[0]
                for r in self._run(
                    "DELETE FROM daemons WHERE hostname = %s AND state_dir = %s AND id <> %s RETURNING id",
                    (self.hostname, self.state_dir, self.daemon_id),
                )
            ]
            self._run(
                "INSERT INTO daemons (id, hostname, pid, state_dir, workers) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET workers = excluded.workers, heartbeat = now()",
                (self.daemon_id, self.hostname, os.getpid(), self.state_dir, workers),
            )
            self._run("DELETE FROM start_holds WHERE daemon = ANY(%s)", ([*gone, self.daemon_id],))
            self.limited_types = frozenset(r[0] for r in self._run("SELECT type FROM cluster_limits"))
        return gone

    def heartbeat(self, busy: int) -> bool:
        """Tell the others this daemon lives; False if they took it for dead and removed it. It also
        learns the types under a cluster limit, and removes the holds on starts this daemon put and
        could not remove when it was done with them."""
        row = self._run(
            "WITH done AS (DELETE FROM start_holds WHERE daemon = %s AND NOT id = ANY(%s)) "
            "UPDATE daemons SET heartbeat = now(), busy = %s WHERE id = %s "
            "RETURNING (SELECT coalesce(array_agg(type), '{}') FROM cluster_limits)",
            (self.daemon_id, list(self._holds), busy, self.daemon_id),
        ).fetchone()
        if row is None:
            return False
        self.limited_types = frozenset(row[0])
        return True

    def expire_daemons(self, timeout: float) -> list[str]:
        """Remove the daemons whose last heartbeat is older than `timeout` seconds, and the holds on
        starts they put; returns them."""
        with self.transaction():
            gone = [
                r[0]
                for r in self._run(
                    "DELETE FROM daemons WHERE heartbeat < now() - make_interval(secs => %s) RETURNING id",
                    (timeout,),
                )
            ]
            if gone:
                self._run("DELETE FROM start_holds WHERE daemon = ANY(%s)", (gone,))
        return gone

    def set_cluster_limits(self, limits: dict[str, int]) -> dict[str, int]:
        """Make these the limits of every daemon: at most so many tasks of each type run at once on
        all of them together; the limits of types not named go. Returns the limits before."""
        with self.transaction():
            before = dict(self._run("SELECT type, max_running FROM cluster_limits ORDER BY type FOR UPDATE"))
            self._run("DELETE FROM cluster_limits WHERE NOT type = ANY(%s)", (list(limits),))
            self._many(
                "INSERT INTO cluster_limits (type, max_running) VALUES (%s, %s) "
                "ON CONFLICT (type) DO UPDATE SET max_running = excluded.max_running",
                sorted(limits.items()),
            )
        self.limited_types = frozenset(limits)
        return before

    def hold_starts(self, types: Sequence[str] | None) -> list[int]:
        """Keep every daemon from starting tasks of these types (exact ones or globs; of any, when
        None) until `release_starts`; the holds are committed when this returns. A hold outlives its
        daemon only until the others take that daemon for dead."""
        # (type, pattern) rows: a glob as its regex; one that matches no type holds nothing.
        rows: list[tuple[str | None, str | None]] = [] if types is not None else [(None, None)]
        for task_type in types or ():
            if not is_glob(task_type):
                rows.append((task_type, None))
            elif (pattern := glob_regex(task_type)) is not None:
                rows.append((None, pattern))
        if not rows:
            return []
        with self.transaction():
            holds = [
                int(r[0])
                for r in self._run(
                    "INSERT INTO start_holds (type, pattern, daemon) SELECT h.type, h.pattern, %s "
                    "FROM unnest(%s::text[], %s::text[]) AS h(type, pattern) RETURNING id",
                    (self.daemon_id, [t for t, _ in rows], [p for _, p in rows]),
                ).fetchall()
            ]
        self._holds.update(holds)
        return holds

    def release_starts(self, holds: Sequence[int]) -> None:
        """End holds of `hold_starts`; if the store cannot be reached, the next heartbeat ends them."""
        self._holds.difference_update(holds)
        self._run("DELETE FROM start_holds WHERE id = ANY(%s)", (list(holds),))

    def orphans(self) -> list[str]:
        """Daemons that hold running tasks but are not in the `daemons` table: gone without a trace."""
        rows = self._run(
            "SELECT DISTINCT host FROM tasks WHERE status = 'running' AND host IS NOT NULL "
            "AND host NOT IN (SELECT id FROM daemons)"
        )
        return [r[0] for r in rows]

    def adopt(self, daemon_id: str) -> list[Task]:
        """Make the running tasks of a daemon that is gone this daemon's, to settle them as a restarted
        daemon settles its own. Each is taken once: the others find none left."""
        return self._tasks(
            f"UPDATE tasks SET host = %s WHERE status = 'running' AND host = %s RETURNING {COLUMNS}",
            (self.daemon_id, daemon_id),
        )

    def deregister(self) -> None:
        self._run("DELETE FROM daemons WHERE id = %s", (self.daemon_id,))

    def daemons(self) -> list[dict[str, Any]]:
        """Every daemon that uses the database, with its workers and the age of its heartbeat."""
        rows = self._run(
            "SELECT id, hostname, pid, workers, busy, extract(epoch FROM now() - heartbeat) "
            "FROM daemons ORDER BY id"
        )
        return [
            {"id": i, "hostname": h, "pid": p, "workers": w, "busy": b, "heartbeat_age": float(age)}
            for i, h, p, w, b, age in rows
        ]

    # --- notifications ----------------------------------------------------------------------------

    def _held(self) -> int:
        return len(self._notes)

    def _drop_held(self, mark: int) -> None:
        del self._notes[mark:]

    def _before_commit(self) -> None:
        self._send_notes()

    def notify(self, channel: str, payload: bytes) -> None:
        """Send `payload` to every daemon listening on `channel` when the current transaction commits
        (at once outside one). A transaction's notifications go together, a few per NOTIFY."""
        self._notes.append((channel, payload))
        if not self.transaction_open() and not self._holding_notes:
            self._send_notes()

    @contextmanager
    def notes_together(self) -> Iterator[None]:
        """Notifications made inside, outside a transaction, go in one statement at the end: many
        announcements of what was committed cost one round trip."""
        self._holding_notes += 1
        try:
            yield
        finally:
            self._holding_notes -= 1
            if not self._holding_notes and not self.transaction_open():
                self._send_notes()

    def _send_notes(self) -> None:
        notes, self._notes = self._notes, []
        batches: dict[str, list[list[bytes]]] = {}
        for channel, payload in notes:
            if len(payload) > NOTIFY_MAX:
                continue  # a payload too large for NOTIFY; the service keeps them far smaller
            batch = batches.setdefault(channel, [[]])
            if sum(map(len, batch[-1])) + len(payload) > NOTIFY_MAX:
                batch.append([])
            batch[-1].append(payload)
        sends = [(channel, base64.b64encode(pack(b)).decode()) for channel, bs in batches.items() for b in bs]
        if sends:
            self._run(
                "SELECT " + ", ".join(["pg_notify(%s, %s)"] * len(sends)), [v for send in sends for v in send]
            )

    async def listen(
        self,
        channels: Sequence[str],
        ready: Callable[[], None] | None = None,
        wanted: Callable[[str], bool] | None = None,
    ) -> AsyncIterator[tuple[str, bytes]]:
        """What daemons notify on `channels`, on a connection of its own; `ready` is called once it
        listens. A notification on a channel that `wanted` refuses at the moment it comes is dropped
        unread. It fails with psycopg.OperationalError when that connection is lost: the caller
        listens again, and has missed what was sent meanwhile."""
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, **CONNECT)
        try:
            for channel in channels:
                await conn.execute(f"LISTEN {channel}")
            if ready is not None:
                ready()
            async for note in conn.notifies():
                if wanted is not None and not wanted(note.channel):
                    continue
                for payload in msgpack.unpackb(base64.b64decode(note.payload)):
                    yield note.channel, payload
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
