"""The PostgreSQL store's connection: a pool of them, migrations, transactions, lost connections.

Calls are synchronous, on the daemon's loop, over one connection taken from a psycopg pool; a lost
connection fails the call with `Unavailable`, and the next call takes a fresh one.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from msearchd.errors import Unavailable
from msearchd.model import Task
from msearchd.store.postgres.schema import MIGRATIONS, SCHEMA_VERSION
from msearchd.store.rows import rows_to_tasks, task_columns
from msearchd.store.sqlite import UnusableStore
from msearchd.store.transactions import Transactions

# Any fixed number: the lock that keeps two daemons starting together from migrating at once.
_MIGRATION_LOCK = 0x6D736561
CONNECT_TIMEOUT = 5  # seconds
# A server that stops answering (power off, network cut) is noticed within seconds, not after the
# system's TCP timeouts of many minutes: a daemon must notice in time to stop its tasks before the
# others take it for dead (see service.cluster.FENCE_AFTER).
CONNECT: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 3,
    "keepalives_interval": 1,
    "keepalives_count": 2,
    "tcp_user_timeout": 3_000,
}
# How long a call waits for a connection when there is none: it answers `unavailable` after that.
GETCONN_TIMEOUT = 0.5

# Every column of a task, in the order `row_to_task` reads them.
COLUMNS = task_columns(
    "(SELECT array_agg(depends_on ORDER BY depends_on) FROM deps WHERE deps.task_id = tasks.id)", "host"
)
# A running task is this daemon's: its claim named it (a row made running by hand names none).
OWN = "(host IS NULL OR host = %s)"
# Ids a statement that replaces dependencies changes at most (see `replace_dependency`).
CHUNK = 900


def redact(url: str) -> str:
    """The address without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def first_line(exc: BaseException) -> str:
    """The first line of an error's text, for a one-sentence message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Connection(Transactions):
    """A database shared by several daemons, over one pooled connection at a time. Not thread-safe:
    the loop owns it."""

    shared: Literal[True]

    def __init__(self, url: str, state_dir: str = "", daemon_id: str | None = None) -> None:
        self.shared = True  # of the instance, as SQLite's store has it
        self.url = url
        self.path = redact(url)
        self.hostname = socket.gethostname()
        # Which daemon runs a task: its machine, and its process there (HOSTNAME:PID).
        self.daemon_id = daemon_id or f"{self.hostname}:{os.getpid()}"
        self.state_dir = state_dir
        try:
            with psycopg.connect(url, autocommit=True, **CONNECT) as probe:
                self._migrate(probe)
        except psycopg.OperationalError as exc:
            raise UnusableStore(f"cannot reach the task store {self.path}: {first_line(exc)}") from None
        except psycopg.Error as exc:
            raise UnusableStore(f"{self.path} cannot serve as a task store: {first_line(exc)}") from None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=2,
            kwargs={"autocommit": True, **CONNECT},
            timeout=CONNECT_TIMEOUT,
            open=True,
        )
        self._conn: psycopg.Connection[Any] | None = None
        self._init_transactions()
        self._notes: list[tuple[str, bytes]] = []  # notifications of the open transaction
        self._holding_notes = 0

    def close(self) -> None:
        if self._conn is not None:
            self._pool.putconn(self._conn)
            self._conn = None
        self._pool.close()

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS msearch_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM msearch_schema").fetchone()
            if row is None:
                if conn.execute("SELECT to_regclass('tasks')").fetchone()[0] is not None:  # type: ignore[index]
                    raise UnusableStore(f"{self.path} holds a table 'tasks' that msearchd did not make")
                conn.execute("INSERT INTO msearch_schema VALUES (0)")
                version = 0
            else:
                version = row[0]
            if version > SCHEMA_VERSION:
                raise UnusableStore(
                    f"{self.path} was written by a newer msearchd "
                    f"(schema {version}; this one knows up to {SCHEMA_VERSION})"
                )
            for step in range(version, SCHEMA_VERSION):
                conn.execute(MIGRATIONS[step])
            conn.execute("UPDATE msearch_schema SET version = %s", (SCHEMA_VERSION,))

    # --- the connection ---------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            try:
                self._conn = self._pool.getconn(GETCONN_TIMEOUT)
            except PoolTimeout:
                raise Unavailable(f"the task store {self.path} cannot be reached") from None
        return self._conn

    def _lost(self, exc: psycopg.OperationalError) -> Unavailable:
        """Give the broken connection back (the pool drops it) and say so; the next call reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                self._pool.putconn(conn)
        self._pool.check()  # replace the pool's other connections that died with it, if any
        return Unavailable(f"the task store {self.path} cannot be reached: {first_line(exc)}")

    def _run(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> psycopg.Cursor[Any]:
        conn = self._connection()
        try:
            return conn.execute(sql, args)
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from None

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.executemany(sql, rows)
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from None

    def _quiet(self, sql: str) -> None:
        """End a transaction that failed; a connection that is gone has ended it already."""
        conn = self._conn
        if conn is None:
            return
        try:
            conn.execute(sql)
        except psycopg.OperationalError:
            self._conn = None
            with contextlib.suppress(Exception):
                self._pool.putconn(conn)

    def _execute(self, sql: str) -> None:
        self._run(sql)

    def _begin(self) -> None:
        self.begun += 1
        self._run("BEGIN")

    def _connection_lost(self) -> bool:
        return self._conn is None

    def _in_transaction(self) -> bool:
        conn = self._conn
        return conn is not None and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    @contextmanager
    def _reader(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of its own, for reads on another thread than the loop's."""
        try:
            with psycopg.connect(self.url, autocommit=True, **CONNECT) as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise Unavailable(f"the task store {self.path} cannot be reached: {first_line(exc)}") from None

    def _tasks(self, sql: str, args: Sequence[Any] = (), max_bytes: int | None = None) -> list[Task]:
        return rows_to_tasks(self._run(sql, args), max_bytes)

    # --- checkpoints --------------------------------------------------------------------------------

    def pause_checkpoints(self) -> None:
        """PostgreSQL checkpoints on its own schedule, off the daemon's loop: nothing to pause."""

    def resume_checkpoints(self) -> None:
        """See `pause_checkpoints`."""

    def checkpoint(self) -> None:
        """See `pause_checkpoints`."""
