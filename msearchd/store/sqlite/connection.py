"""The SQLite store's connection: opening and checking the file, migrations, transactions, checkpoints.

WAL with synchronous=NORMAL makes every commit durable against a crash of the daemon (kill -9): the
commit is in the WAL before the call returns. Only a power loss can drop the last commits.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from msearchd.errors import Unavailable
from msearchd.model import Task
from msearchd.store.rows import rows_to_tasks, task_columns
from msearchd.store.schema import MIGRATIONS, SCHEMA_VERSION
from msearchd.store.transactions import Transactions

# Every column of a task, in the order `row_to_task` reads them.
COLUMNS = task_columns("(SELECT group_concat(depends_on) FROM deps WHERE deps.task_id = tasks.id)", "NULL")
# Bound on how many ids one statement binds: under the 999 variables of SQLite builds before 3.32
# (32,766 since).
CHUNK = 900
# A commit that leaves the WAL this many pages long (16 MB) checkpoints it: copies it back into the
# database file and fsyncs both. SQLite's default is 1,000; each checkpoint costs its two fsyncs
# whatever its size, and a page rewritten many times is copied once, so 4,000 costs a write ~20% less
# on average and takes the checkpoints out of the 99th percentile of control calls (one commit in
# several hundred pays ~10 ms instead of one in ~150 paying ~5 ms).
AUTOCHECKPOINT = 4000
# How long a write waits for another process's lock on the database (sqlite3 run by hand, say) before
# it is refused as unavailable: the wait holds the daemon's loop, so every client waits with it.
BUSY_TIMEOUT_MS = 20


def disk_full(exc: BaseException) -> bool:
    """True when `exc` says the disk (or the quota) holding the store has no room left."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def marks(n: int) -> str:
    """`n` bind marks, comma-separated."""
    return ",".join("?" * n)


class UnusableStore(Exception):
    """The database file cannot serve as this msearchd's store; the message says why in one sentence."""


# The database and the files SQLite keeps beside it (it gives those the database's mode when it makes them).
_STORE_FILE_SUFFIXES = ("", "-wal", "-shm", "-journal")
# Beside the database, written when the store is closed cleanly: the file's size, modification time
# and inode as the close left them. Opening removes it. A store opened without it, with a log of
# commits (-wal) beside it, or whose file changed since, was stopped uncleanly or written by something
# else: only then does the opening check every page (quick_check: most of 19 s with 10,000,000 tasks).
CLEAN_SUFFIX = "-clean"


def _file_state(path: Path) -> str:
    """What a clean close leaves to compare: the file's size, modification time and inode."""
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}\n"


def _make_private(path: Path) -> None:
    """Tasks hold commands, their environment and their data: only this user may read the store."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in _STORE_FILE_SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).chmod(0o600)  # made before stores were private


class Connection(Transactions):
    """One SQLite file over one connection. Not thread-safe: the daemon's loop owns it."""

    shared: Literal[False]  # only this daemon writes it (see postgres.PgStore)

    def __init__(self, path: Path | str) -> None:
        # An attribute of the instance, not of the class: CPython 3.11 caches the lookup of the one,
        # not of the other, and the service asks at every change it announces.
        self.shared = False
        self.path = str(path)
        try:
            _make_private(Path(path))
            closed_cleanly = self._closed_cleanly()
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise UnusableStore(f"{self.path} is not a msearch database or is damaged: {exc}") from None
        except (OSError, sqlite3.Error) as exc:
            raise UnusableStore(f"cannot open the task store {self.path}: {exc}") from None
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT}")
        self._init_transactions()
        self._update_sql: dict[tuple[Any, ...], str] = {}  # statements of `update`, by its arguments
        self._insert_sql: dict[int, str] = {}  # statements of `insert_rows`, by their number of rows
        self._checkpoints_paused = 0
        self._migrate(check=not closed_cleanly)

    def close(self) -> None:
        """Close the connection, and say the store was closed cleanly when it was the last one: SQLite
        then copies the log of commits into the file and removes it."""
        self._db.close()
        if Path(self.path + "-wal").exists():
            return
        with contextlib.suppress(OSError):  # no word of it: the next opening checks the file
            state = _file_state(Path(self.path)).encode()
            marker = os.open(self.path + CLEAN_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(marker, state)
            finally:
                os.close(marker)

    def _closed_cleanly(self) -> bool:
        """Whether the store was closed cleanly and left alone since; the word of it is removed, so
        that a stop that is not clean leaves none."""
        marker = Path(self.path + CLEAN_SUFFIX)
        try:
            said = marker.read_text()
            marker.unlink()
            return not Path(self.path + "-wal").exists() and said == _file_state(Path(self.path))
        except (OSError, ValueError):
            return False

    def _migrate(self, check: bool) -> None:
        # A damaged file fails here, with one sentence, rather than in the middle of some later request
        # (~35 ms for 100,000 tasks). A store closed cleanly and not written since is taken as sound.
        problems = ["ok"]
        try:
            if check:
                problems = [row[0] for row in self._db.execute("PRAGMA quick_check(1)")]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        if problems != ["ok"]:
            # SQLite heads its report with "*** in database main ***" on a line of its own.
            detail = " ".join(ln for ln in problems[0].splitlines() if not ln.startswith("***"))
            raise UnusableStore(f"{self.path} is not a msearch database or is damaged: {detail}")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UnusableStore(
                f"{self.path} was written by a newer msearchd "
                f"(schema {version}; this one knows up to {SCHEMA_VERSION})"
            )
        for step in range(version, SCHEMA_VERSION):
            # executescript runs outside our transaction helper; each script is its own transaction.
            try:
                self._db.executescript(f"BEGIN; {MIGRATIONS[step]} PRAGMA user_version={step + 1}; COMMIT;")
            except sqlite3.Error as exc:
                raise UnusableStore(f"{self.path} is not a msearch database or is damaged: {exc}") from None

    def pause_checkpoints(self) -> None:
        """Keep checkpoints out of this connection's commits until `resume_checkpoints`.

        SQLite copies the WAL back into the database file, and fsyncs both, inside the commit that
        takes the WAL past AUTOCHECKPOINT pages. A bulk change of many rows would pay that every few
        chunks, on the daemon's loop; paused, the WAL grows instead, and `checkpoint` copies it once,
        from another thread. Pauses nest.
        """
        self._checkpoints_paused += 1
        if self._checkpoints_paused == 1:
            self._db.execute("PRAGMA wal_autocheckpoint=0")

    def resume_checkpoints(self) -> None:
        self._checkpoints_paused -= 1
        if self._checkpoints_paused == 0:
            self._db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT}")

    def checkpoint(self) -> None:
        """Copy the WAL into the database file. It uses a connection of its own, so it may run on
        another thread while this store's connection goes on reading and writing."""
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def _execute(self, sql: str) -> None:
        self._db.execute(sql)

    def _commit(self) -> None:
        self._db.execute("COMMIT")  # it holds nothing back (see `Transactions._commit`)

    def _quiet(self, sql: str) -> None:
        self._db.execute(sql)

    def _in_transaction(self) -> bool:
        return self._db.in_transaction

    def _begin(self) -> None:
        self.begun += 1
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            raise Unavailable(
                f"the database {self.path} is locked by another process; try again once it lets go"
            ) from None

    def _tasks(self, sql: str, args: Sequence[Any] = (), max_bytes: int | None = None) -> list[Task]:
        return rows_to_tasks(self._db.execute(sql, args), max_bytes)
