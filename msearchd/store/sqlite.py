"""The task store in SQLite, WAL mode: `Store`, the implementation of `msearchd.store.TaskStore`.

WAL with synchronous=NORMAL makes every commit durable against a crash of the daemon (kill -9): the
commit is in the WAL before the call returns. Only a power loss can drop the last commits.

Longer than most modules: it is one class over one connection, whose queries share the transaction
state and the column list; the schema and its migrations are in `schema`.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack

from msearchd.errors import Unavailable
from msearchd.model import StopReason, Task, TaskStatus
from msearchd.protocol import pack
from msearchd.selection import Selection
from msearchd.store.schema import MIGRATIONS, SCHEMA_VERSION, WAITING
from msearchd.store.schema import STATUS_BY_NAME as _STATUS
from msearchd.store.schema import STOP_REASON_BY_NAME as _STOP_REASON
from msearchd.store.schema import UPDATABLE as _UPDATABLE

_COLUMNS = (
    "id, type, status, priority, data, progress, current_operation, attempts, error, blocked_reason, "
    "stop_reason, retry_of, retried_as, created_at, started_at, finished_at, worker_pid, "
    "(SELECT group_concat(depends_on) FROM deps WHERE deps.task_id = tasks.id), result"
)
_FINISHED = "('completed', 'failed', 'cancelled')"
# A finished task `t` nothing unfinished refers to: no waiting or running task depends on it, and its
# retry (if any) has finished.
_UNREFERENCED = (
    "NOT EXISTS (SELECT 1 FROM deps d JOIN tasks w ON w.id = d.task_id WHERE d.depends_on = t.id "
    "AND w.status IN ('pending', 'blocked', 'running')) AND (t.retried_as IS NULL OR NOT EXISTS "
    "(SELECT 1 FROM tasks r WHERE r.id = t.retried_as AND r.status IN ('pending', 'blocked', 'running')))"
)
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


def _pack(data: dict[str, Any]) -> bytes:
    return pack(data)


# A column's text to its enum member: a dict lookup costs a fraction of calling the enum.


def _row_to_task(row: Sequence[Any]) -> Task:
    return Task(
        id=row[0],
        type=row[1],
        status=_STATUS[row[2]],
        priority=row[3],
        data=msgpack.unpackb(row[4], raw=False),
        depends_on=sorted(int(d) for d in row[17].split(",")) if row[17] else [],
        progress=row[5],
        current_operation=row[6],
        attempts=row[7],
        error=row[8],
        blocked_reason=row[9],
        stop_reason=_STOP_REASON[row[10]] if row[10] else None,
        retry_of=row[11],
        retried_as=row[12],
        created_at=row[13],
        started_at=row[14],
        finished_at=row[15],
        worker_pid=row[16],
        result=msgpack.unpackb(row[18], raw=False) if row[18] is not None else None,
    )


def disk_full(exc: BaseException) -> bool:
    """True when `exc` says the disk (or the quota) holding the store has no room left."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _marks(n: int) -> str:
    return ",".join("?" * n)


class UnusableStore(Exception):
    """The database file cannot serve as this msearchd's store; the message says why in one sentence."""


# The database and the files SQLite keeps beside it (it gives those the database's mode when it makes them).
_STORE_FILE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _make_private(path: Path) -> None:
    """Tasks hold commands, their environment and their data: only this user may read the store."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in _STORE_FILE_SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).chmod(0o600)  # made before stores were private


class Store:
    """Tasks and their dependencies in one SQLite file. Not thread-safe: the daemon's loop owns it."""

    shared = False  # only this daemon writes it (see postgres.PgStore)

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        try:
            _make_private(Path(path))
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise UnusableStore(f"{self.path} is not a msearch database or is damaged: {exc}") from None
        except (OSError, sqlite3.Error) as exc:
            raise UnusableStore(f"cannot open the task store {self.path}: {exc}") from None
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT}")
        self._depth = 0
        self._grouping = False  # inside group(): transactions are savepoints of one shared transaction
        self._group_open = False  # that shared transaction has begun
        self._after_commit: list[Callable[[], None]] = []
        self._update_sql: dict[tuple[Any, ...], str] = {}
        self._checkpoints_paused = 0
        self.begun = 0  # transactions begun: tells one from the next
        self._migrate()

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        # A damaged file fails here, with one sentence, rather than in the middle of some later request
        # (~35 ms for 100,000 tasks).
        try:
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

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the current transaction is committed (at once outside one); never if it
        rolls back. So nobody hears of a change that a crash could still undo."""
        if self._depth or self._group_open:
            self._after_commit.append(callback)
        else:
            callback()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic, durable unit; nested uses join the outer transaction.

        Inside `group()` it is part of the group's transaction (a savepoint of it, unless it is the
        first to write): it rolls back alone, and becomes durable when the group commits.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if self._grouping and self._group_open:
            self._db.execute("SAVEPOINT unit")
            mark = len(self._after_commit)
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                del self._after_commit[mark:]
                self._db.execute("ROLLBACK TO unit")
                self._db.execute("RELEASE unit")
                raise
            self._depth = 0
            self._db.execute("RELEASE unit")
            return
        if self._grouping:
            # The group's first writer: the group's transaction holds nothing else, so it is the
            # unit's own, rolled back whole if the unit fails (a lone request needs no savepoint).
            self._begin_group()
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                self._group_open = False
                self._after_commit.clear()
                self._db.execute("ROLLBACK")
                raise
            self._depth = 0
            return
        self._begin()
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._after_commit.clear()
            self._db.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            self._db.execute("COMMIT")
        except BaseException:  # a full disk, say: nothing is announced, and the next BEGIN works
            self._after_commit.clear()
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._run_after_commit()

    @contextmanager
    def group(self) -> Iterator[None]:
        """Commit every transaction opened inside with one commit at the end (group commit).

        Each transaction inside stays atomic on its own (see `transaction`); none is durable, and no
        after-commit callback runs, before the group ends. Requests that arrive together share a
        commit this way. A group that never writes costs nothing.
        """
        if self._grouping or self._depth:
            yield
            return
        self._grouping = True
        try:
            yield
            if self._group_open:
                self._db.execute("COMMIT")
        except BaseException:
            self._after_commit.clear()
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        finally:
            self._grouping = self._group_open = False
        self._run_after_commit()

    def _begin_group(self) -> None:
        if not self._group_open:
            self._begin()
            self._group_open = True

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

    def _run_after_commit(self) -> None:
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    # --- reads ------------------------------------------------------------------------------------

    def _tasks(self, sql: str, args: Sequence[Any] = ()) -> list[Task]:
        return [_row_to_task(r) for r in self._db.execute(sql, args)]

    def get(self, task_id: int) -> Task | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return _row_to_task(row) if row else None

    def get_many(self, ids: Sequence[int]) -> list[Task]:
        out: list[Task] = []
        for start in range(0, len(ids), CHUNK):
            part = list(ids[start : start + CHUNK])
            out += self._tasks(f"SELECT {_COLUMNS} FROM tasks WHERE id IN ({_marks(len(part))})", part)
        return out

    def statuses(self, ids: Iterable[int]) -> dict[int, TaskStatus]:
        ids = list(ids)
        out: dict[int, TaskStatus] = {}
        for start in range(0, len(ids), CHUNK):
            part = ids[start : start + CHUNK]
            rows = self._db.execute(f"SELECT id, status FROM tasks WHERE id IN ({_marks(len(part))})", part)
            out.update((i, TaskStatus(s)) for i, s in rows)
        return out

    @staticmethod
    def _filters(statuses: Sequence[str] | None, task_type: str | None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if statuses:
            clauses.append(f"status IN ({_marks(len(statuses))})")
            args += statuses
        if task_type is not None:
            clauses.append("type = ?")
            args.append(task_type)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args

    def list(
        self,
        statuses: Sequence[str] | None = None,
        task_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[Task]:
        """Tasks in id order (newest_first: descending). Several statuses are read one index range
        each, their ids merged as they come, and only the tasks of the page are read whole: a deep page
        costs ids, not rows. A type alone is read that way too, over every status: its index is in id
        order only within one status, and sorting all tasks of a type took 12-19 ms with 100,000 of
        them. Either direction walks the same indexes, forwards or backwards."""
        direction = "DESC" if newest_first else ""
        if task_type is not None and not statuses:
            statuses = [s.value for s in TaskStatus]
        if not statuses or len(statuses) == 1:
            where, args = self._filters(statuses, task_type)
            return self._tasks(
                f"SELECT {_COLUMNS} FROM tasks{where} ORDER BY id {direction} LIMIT ? OFFSET ?",
                [*args, limit, offset],
            )
        type_clause, type_args = (" AND type = ?", [task_type]) if task_type is not None else ("", [])
        ranges = [
            (
                row[0]
                for row in self._db.execute(
                    f"SELECT id FROM tasks WHERE status = ?{type_clause} ORDER BY id {direction}",
                    [status, *type_args],
                )
            )
            for status in statuses
        ]
        page = list(itertools.islice(heapq.merge(*ranges, reverse=newest_first), offset, offset + limit))
        found = {t.id: t for t in self.get_many(page)}
        return [found[i] for i in page]

    def count(self, statuses: Sequence[str] | None = None, task_type: str | None = None) -> int:
        where, args = self._filters(statuses, task_type)
        return self._db.execute(f"SELECT count(*) FROM tasks{where}", args).fetchone()[0]

    def counts(self) -> list[tuple[str, str, int]]:
        """(type, status, count) for every pair present."""
        return self._db.execute("SELECT type, status, count(*) FROM tasks GROUP BY status, type").fetchall()

    def dependents(
        self, task_id: int, statuses: Sequence[str] = WAITING, after: int = 0, limit: int = -1
    ) -> list[int]:
        """Dependents of `task_id` in these statuses, in id order: those with ids above `after`, at
        most `limit` of them (no bound when negative)."""
        rows = self._db.execute(
            f"SELECT d.task_id FROM deps d JOIN tasks t ON t.id = d.task_id "
            f"WHERE d.depends_on = ? AND d.task_id > ? AND t.status IN ({_marks(len(statuses))}) "
            "ORDER BY d.task_id LIMIT ?",
            (task_id, after, *statuses, limit),
        )
        return [r[0] for r in rows]

    def with_dependents(self, ids: Sequence[int]) -> list[int]:
        """Those of `ids` that some waiting task depends on: the only ones a cascade needs to visit."""
        out: list[int] = []
        for start in range(0, len(ids), CHUNK):
            part = list(ids[start : start + CHUNK])
            rows = self._db.execute(
                f"SELECT DISTINCT d.depends_on FROM deps d JOIN tasks t ON t.id = d.task_id "
                f"WHERE d.depends_on IN ({_marks(len(part))}) AND t.status IN ('pending', 'blocked')",
                part,
            )
            out += [r[0] for r in rows]
        return sorted(out)

    def dependency_statuses(self, task_id: int) -> list[tuple[int, TaskStatus]]:
        rows = self._db.execute(
            "SELECT t.id, t.status FROM deps d JOIN tasks t ON t.id = d.depends_on WHERE d.task_id = ?",
            (task_id,),
        )
        return [(i, TaskStatus(s)) for i, s in rows]

    def failed_not_retried(self, task_type: str | None, after: int, up_to: int, limit: int) -> list[int]:
        """Up to `limit` failed tasks not yet retried with ids in (after, up_to], in id order."""
        type_clause = " AND type = ?" if task_type is not None else ""
        args: list[Any] = [after, up_to] + ([task_type] if task_type is not None else []) + [limit]
        rows = self._db.execute(
            "SELECT id FROM tasks WHERE status = 'failed' AND retried_as IS NULL AND id > ? AND id <= ?"
            f"{type_clause} ORDER BY id LIMIT ?",
            args,
        )
        return [r[0] for r in rows]

    def cancel_requested(self, task_id: int) -> bool:
        row = self._db.execute("SELECT cancel_requested FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return bool(row and row[0])

    # --- writes -----------------------------------------------------------------------------------

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
        row = (task_type, str(status), priority, _pack(data), blocked_reason, retry_of, created_at)
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
        cur = self._db.execute(
            "INSERT INTO tasks (type, status, priority, data, blocked_reason, retry_of, created_at, "
            "submitted_uid, submitted_pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )
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
                "INSERT INTO tasks (type, status, priority, data, blocked_reason, retry_of, created_at, "
                "submitted_uid, submitted_pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        s["task_type"],
                        str(s["status"]),
                        s["priority"],
                        _pack(s["data"]),
                        s["blocked_reason"],
                        s.get("retry_of"),
                        created_at,
                        uid,
                        pid,
                    )
                    for s in specs
                ],
            )
            # AUTOINCREMENT under the write lock hands out consecutive ids.
            ids = list(range(first, first + len(specs)))
            last = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'tasks'").fetchone()[0]
            assert not ids or last == ids[-1], "ids of a batch insert were not consecutive"
            deps = [(i, d) for i, spec in zip(ids, specs, strict=True) for d in spec["depends_on"]]
            if deps:
                self._db.executemany("INSERT OR IGNORE INTO deps (task_id, depends_on) VALUES (?, ?)", deps)
        return ids

    def _update(self, task_id: int, expect: Sequence[str] | None, fields: dict[str, Any], tail: str) -> Any:
        key = (tuple(fields), tuple(expect or ()), tail)
        sql = self._update_sql.get(key)
        if sql is None:
            unknown = set(fields) - _UPDATABLE
            if unknown:
                raise ValueError(f"not updatable: {sorted(unknown)}")
            assignments = ", ".join(f"{name} = ?" for name in fields)
            condition = f" AND status IN ({_marks(len(expect))})" if expect else ""
            sql = self._update_sql[key] = f"UPDATE tasks SET {assignments} WHERE id = ?{condition}{tail}"
        values = [
            str(v) if isinstance(v, TaskStatus | StopReason) else _pack(v) if name == "result" else v
            for name, v in fields.items()
        ]
        return self._db.execute(sql, (*values, task_id, *(expect or ())))

    def update(self, task_id: int, expect: Sequence[str] | None = None, **fields: Any) -> bool:
        """Change fields of a task, if its status is one of `expect` (when given); False if it did not."""
        return self._update(task_id, expect, fields, "").rowcount > 0

    def update_returning(
        self, task_id: int, expect: Sequence[str] | None = None, **fields: Any
    ) -> Task | None:
        """Like `update`, and return the task as it now is (None where `update` says False)."""
        row = self._update(task_id, expect, fields, f" RETURNING {_COLUMNS}").fetchone()
        return _row_to_task(row) if row else None

    def claim_next(self, exclude_types: Sequence[str], now: float, worker_pid: int) -> Task | None:
        """Move the first pending task in (priority, id) order to running and return it.

        Call it inside a transaction: several claims then share one commit.
        """
        extra = f" AND type NOT IN ({_marks(len(exclude_types))})" if exclude_types else ""
        row = self._db.execute(
            f"UPDATE tasks SET status = 'running', started_at = ?, attempts = attempts + 1, progress = 0, "
            f"current_operation = NULL, error = NULL, worker_pid = ? WHERE id = (SELECT id FROM tasks "
            f"INDEXED BY tasks_queue WHERE status = 'pending'{extra} ORDER BY priority, id LIMIT 1) "
            f"RETURNING {_COLUMNS}",
            (now, worker_pid, *exclude_types),
        ).fetchone()
        return _row_to_task(row) if row else None

    def next_pending(self, limit: int) -> list[tuple[int, str]]:
        """(id, type) of the first `limit` pending tasks, in queue order."""
        return self._db.execute(
            "SELECT id, type FROM tasks INDEXED BY tasks_queue WHERE status = 'pending' "
            "ORDER BY priority, id LIMIT ?",
            (limit,),
        ).fetchall()

    def claim_ids(self, ids: Sequence[int], worker_pid: int) -> list[Task]:
        """Move these tasks, if still pending, to running for `worker_pid`, to run after the task it
        runs now; returns them in queue order. None has started: `started_at` stays empty until its
        start is known (see `mark_started`), and a task found running without one never started."""
        rows = self._db.execute(
            f"UPDATE tasks SET status = 'running', started_at = NULL, attempts = attempts + 1, progress = 0, "
            f"current_operation = NULL, error = NULL, worker_pid = ? WHERE id IN ({_marks(len(ids))}) "
            f"AND status = 'pending' RETURNING {_COLUMNS}",
            (worker_pid, *ids),
        ).fetchall()
        return sorted(map(_row_to_task, rows), key=lambda t: (t.priority, t.id))

    def mark_started(self, task_id: int, started_at: float) -> None:
        """Record the start of a running task claimed without one (see `claim_ids`)."""
        self._db.execute(
            "UPDATE tasks SET started_at = ? WHERE id = ? AND status = 'running' AND started_at IS NULL",
            (started_at, task_id),
        )

    def complete_many(self, rows: Sequence[tuple[float | None, float, Any, int]]) -> None:
        """Record (started_at, finished_at, result, id) of running tasks that completed."""
        with self.transaction():
            self._db.executemany(
                "UPDATE tasks SET status = 'completed', progress = 1.0, started_at = "
                "coalesce(?, started_at), finished_at = ?, error = NULL, stop_reason = NULL, result = ? "
                "WHERE id = ? AND status = 'running'",
                [(s, f, None if r is None else _pack(r), i) for s, f, r, i in rows],
            )

    def unlease(self, ids: Sequence[int]) -> None:
        """Put running tasks that never started back in the queue, as if they had not been claimed."""
        with self.transaction():
            for start in range(0, len(ids), CHUNK):
                part = list(ids[start : start + CHUNK])
                self._db.execute(
                    "UPDATE tasks SET status = 'pending', started_at = NULL, attempts = attempts - 1, "
                    f"worker_pid = NULL WHERE id IN ({_marks(len(part))}) AND status = 'running'",
                    part,
                )

    def cancel_waiting(self, ids: Sequence[int], now: float, error: str | None = None) -> list[int]:
        """Cancel those of `ids` still pending or blocked; returns the ones it cancelled."""
        done: list[int] = []
        for start in range(0, len(ids), CHUNK):
            part = list(ids[start : start + CHUNK])
            rows = self._db.execute(
                f"UPDATE tasks SET status = 'cancelled', finished_at = ?, stop_reason = 'not_started', "
                f"error = ?, blocked_reason = NULL WHERE id IN ({_marks(len(part))}) "
                "AND status IN ('pending', 'blocked') RETURNING id",
                [now, error, *part],
            ).fetchall()
            done += sorted(r[0] for r in rows)
        return done

    def cancel_waiting_batch(
        self, task_type: str | None, max_id: int, now: float, limit: int, request: int
    ) -> list[int]:
        """Cancel up to `limit` waiting tasks (of a type) with ids up to `max_id`, for the bulk request
        `request` (a task_events row); returns their ids."""
        type_clause = "type = ? AND " if task_type is not None else ""
        args: list[Any] = [now, request] + ([task_type] if task_type is not None else [])
        rows = self._db.execute(
            "UPDATE tasks SET status = 'cancelled', finished_at = ?, stop_reason = 'not_started', "
            f"blocked_reason = NULL, bulk_request = ? WHERE id IN (SELECT id FROM tasks WHERE {type_clause}"
            "status IN ('pending', 'blocked') AND id <= ? LIMIT ?) RETURNING id",
            [*args, max_id, limit],
        ).fetchall()
        return sorted(r[0] for r in rows)

    def bulk_cancelled_with_newer_dependents(self, request: int, max_id: int) -> list[int]:
        """Tasks cancelled by the bulk request `request` that a waiting task newer than `max_id`
        depends on: submitted while the request ran, before the task it depends on was cancelled."""
        rows = self._db.execute(
            "SELECT DISTINCT d.depends_on FROM tasks t JOIN deps d ON d.task_id = t.id "
            "JOIN tasks p ON p.id = d.depends_on "
            "WHERE t.id > ? AND t.status IN ('pending', 'blocked') AND p.bulk_request = ?",
            (max_id, request),
        )
        return sorted(r[0] for r in rows)

    def max_id(self) -> int:
        row = self._db.execute("SELECT max(id) FROM tasks").fetchone()
        return row[0] or 0

    def replace_dependency(self, old: int, new: int, limit: int = CHUNK) -> list[int]:
        """Point up to `limit` waiting dependents of `old` at `new` (the first ones by id); returns them.
        Call it until it returns fewer than `limit`: each call binds at most CHUNK ids."""
        dependents = self.dependents(old, limit=limit)
        for start in range(0, len(dependents), CHUNK):
            part = dependents[start : start + CHUNK]
            self._db.execute(
                f"UPDATE OR IGNORE deps SET depends_on = ? WHERE depends_on = ? "
                f"AND task_id IN ({_marks(len(part))})",
                (new, old, *part),
            )
            self._db.execute(
                f"DELETE FROM deps WHERE depends_on = ? AND task_id IN ({_marks(len(part))})",
                (old, *part),
            )
        return dependents

    def add_events(
        self, rows: Iterable[tuple[int, float, str, dict[str, Any] | None, int | None, int | None]]
    ) -> None:
        """Record (task_id, time, event, detail, uid, pid) rows."""
        self._db.executemany(
            "INSERT INTO task_events (task_id, time, event, detail, uid, pid) VALUES (?, ?, ?, ?, ?, ?)",
            [(t, when, e, _pack(d) if d else None, uid, pid) for t, when, e, d, uid, pid in rows],
        )

    def add_bulk_request(
        self, time: float, event: str, detail: dict[str, Any], uid: int | None, pid: int | None
    ) -> int:
        """Record one request about many tasks; they point at it when it changes them."""
        cur = self._db.execute(
            "INSERT INTO task_events (task_id, time, event, detail, uid, pid) VALUES (NULL, ?, ?, ?, ?, ?)",
            (time, event, _pack(detail), uid, pid),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def delete_events(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), CHUNK):
            part = list(ids[start : start + CHUNK])
            self._db.execute(f"DELETE FROM task_events WHERE id IN ({_marks(len(part))})", part)

    def bulk_requests(self, event: str) -> list[tuple[int, dict[str, Any]]]:
        """(row id, detail) of the requests about many tasks recorded as `event`, oldest first."""
        rows = self._db.execute(
            "SELECT id, detail FROM task_events WHERE task_id IS NULL AND event = ? ORDER BY id", (event,)
        )
        return [(i, msgpack.unpackb(d, raw=False) if d else {}) for i, d in rows]

    def events(self, task_id: int) -> list[dict[str, Any]]:
        """A task's recorded requests, the bulk request that cancelled it among them."""
        rows = self._db.execute(
            "SELECT time, event, detail, uid, pid FROM task_events WHERE task_id = ? "
            "OR id = (SELECT bulk_request FROM tasks WHERE id = ?) ORDER BY id",
            (task_id, task_id),
        )
        return [
            {
                "time": when,
                "event": event,
                **(msgpack.unpackb(detail, raw=False) if detail else {}),
                "uid": uid,
                "pid": pid,
            }
            for when, event, detail, uid, pid in rows
        ]

    def submitter(self, task_id: int) -> tuple[int | None, int | None]:
        """The uid and pid of the client that submitted the task, if one did."""
        row = self._db.execute(
            "SELECT submitted_uid, submitted_pid FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
        return (row[0], row[1]) if row else (None, None)

    # --- retention --------------------------------------------------------------------------------

    def prunable(self, finished_before: float, keep: int, limit: int) -> list[int]:
        """Up to `limit` finished tasks that may go, oldest first: finished before `finished_before`,
        or beyond the newest `keep` finished ones (no bound when `keep` is negative); never one a
        waiting or running task depends on, nor one whose retry has not finished.

        It reads on a connection of its own, so it may run on another thread: the deletion
        (`prune`) checks again, under the write lock, what may have changed meanwhile.
        """
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if keep < 0:
                newest_kept = None
            else:
                row = db.execute(
                    f"SELECT id FROM tasks WHERE status IN {_FINISHED} ORDER BY id DESC LIMIT 1 OFFSET ?",
                    (keep,),
                ).fetchone()
                newest_kept = row[0] if row else None
            rows = db.execute(
                f"SELECT id FROM tasks t WHERE status IN {_FINISHED} AND (finished_at < ? OR id <= ?) "
                f"AND {_UNREFERENCED} ORDER BY id LIMIT ?",
                (finished_before, newest_kept if newest_kept is not None else 0, limit),
            )
            return [r[0] for r in rows]
        finally:
            db.close()

    def stale_bulk_requests(self, before: float, keep: Sequence[str]) -> list[int]:
        """Requests about many tasks (cancel-all) made before `before` that no task points at any more,
        but those recorded as one of `keep`. Like `prunable`, it reads on a connection of its own."""
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            used = {
                r[0] for r in db.execute("SELECT DISTINCT bulk_request FROM tasks WHERE bulk_request > 0")
            }
            rows = db.execute(
                f"SELECT id FROM task_events WHERE task_id IS NULL AND time < ? "
                f"AND event NOT IN ({_marks(len(keep))}) ORDER BY id",
                (before, *keep),
            )
            return [r[0] for r in rows if r[0] not in used]
        finally:
            db.close()

    def prune(self, ids: Sequence[int]) -> list[int]:
        """Remove those of `ids` still finished and unreferenced, with their dependencies and events;
        returns the ones removed. Call it inside a transaction."""
        removed: list[int] = []
        for start in range(0, len(ids), CHUNK):
            part = list(ids[start : start + CHUNK])
            rows = self._db.execute(
                f"DELETE FROM tasks AS t WHERE id IN ({_marks(len(part))}) AND status IN {_FINISHED} "
                f"AND {_UNREFERENCED} RETURNING id",
                part,
            ).fetchall()
            gone = [r[0] for r in rows]
            if gone:
                marks = _marks(len(gone))
                self._db.execute(f"DELETE FROM deps WHERE task_id IN ({marks})", gone)
                self._db.execute(f"DELETE FROM task_events WHERE task_id IN ({marks})", gone)
            removed += gone
        return sorted(removed)

    def running(self) -> list[Task]:
        return self._tasks(f"SELECT {_COLUMNS} FROM tasks WHERE status = 'running' ORDER BY id")

    def save_progress(self, updates: Iterable[tuple[int, float, str | None]]) -> None:
        with self.transaction():
            self._db.executemany(
                "UPDATE tasks SET progress = ?, current_operation = ? WHERE id = ? AND status = 'running'",
                [(p, op, i) for i, p, op in updates],
            )

    # --- keys, selections, pauses -----------------------------------------------------------------

    def unfinished_with_key(self, key: str) -> Task | None:
        """The pending, blocked or running task that holds `key`, if one does."""
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM tasks INDEXED BY tasks_key WHERE key = ? "
            "AND status IN ('pending', 'blocked', 'running')",
            (key,),
        ).fetchone()
        return _row_to_task(row) if row else None

    def insert_keyed(self, key: str, **spec: Any) -> int | None:
        """Insert a task (keywords of `insert`) holding `key`; None, and nothing written, when an
        unfinished task holds it already."""
        uid, pid = spec.get("submitter", (None, None))
        row = (
            spec["task_type"],
            str(spec["status"]),
            spec["priority"],
            _pack(spec["data"]),
            spec.get("blocked_reason"),
            spec.get("retry_of"),
            spec["created_at"],
            uid,
            pid,
            key,
        )
        try:
            with self.transaction():
                cur = self._db.execute(
                    "INSERT INTO tasks (type, status, priority, data, blocked_reason, retry_of, created_at, "
                    "submitted_uid, submitted_pid, key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

    def keys(self, ids: Sequence[int]) -> dict[int, str]:
        """The keys of those of `ids` that have one."""
        out: dict[int, str] = {}
        for start in range(0, len(ids), CHUNK):
            part = list(ids[start : start + CHUNK])
            rows = self._db.execute(
                f"SELECT id, key FROM tasks WHERE id IN ({_marks(len(part))}) AND key IS NOT NULL", part
            )
            out.update(rows)
        return out

    def select_window(
        self,
        selection: Selection,
        statuses: Sequence[str],
        after: int,
        up_to: int,
        *,
        with_data: bool = False,
        not_retried: bool = False,
    ) -> list[tuple[int, str, str, int, dict[str, Any] | None]]:
        """(id, type, status, priority, data) of the tasks with ids in (after, up_to] that the
        selection's fields SQL can test select, in these statuses, in id order. The caller bounds the
        window, which bounds the work; the data is read only when asked for (for `where`)."""
        clauses = ["id > ?", "id <= ?", f"status IN ({_marks(len(statuses))})"]
        args: list[Any] = [after, up_to, *statuses]
        if selection.ids:
            wanted = [i for i in selection.ids if after < i <= up_to]
            if not wanted:
                return []
            clauses.append(f"id IN ({_marks(len(wanted))})")
            args += wanted
        if selection.types:
            tests = [f"type IN ({_marks(len(selection.exact_types))})"] if selection.exact_types else []
            tests += ["type GLOB ?"] * len(selection.type_globs)
            clauses.append("(" + " OR ".join(tests) + ")")
            args += [*selection.exact_types, *selection.type_globs]
        if selection.priority is not None:
            clauses.append("priority BETWEEN ? AND ?")
            args += list(selection.priority)
        if selection.created_before is not None:
            clauses.append("created_at < ?")
            args.append(selection.created_before)
        if selection.created_after is not None:
            clauses.append("created_at >= ?")
            args.append(selection.created_after)
        if not_retried:
            clauses.append("retried_as IS NULL")
        data = "data" if with_data else "NULL"
        rows = self._db.execute(
            # NOT INDEXED: the id range bounds the work; the planner would rather walk a status's
            # whole index, for every window.
            f"SELECT id, type, status, priority, {data} FROM tasks NOT INDEXED WHERE {' AND '.join(clauses)} "
            "ORDER BY id",
            args,
        )
        return [
            (i, t, s, p, msgpack.unpackb(d, raw=False) if d is not None else None) for i, t, s, p, d in rows
        ]

    def cancel_for_request(self, ids: Sequence[int], now: float, request: int) -> list[int]:
        """Cancel those of `ids` still waiting, for the bulk request `request`; returns them."""
        done: list[int] = []
        for start in range(0, len(ids), CHUNK):
            part = list(ids[start : start + CHUNK])
            rows = self._db.execute(
                "UPDATE tasks SET status = 'cancelled', finished_at = ?, stop_reason = 'not_started', "
                f"blocked_reason = NULL, bulk_request = ? WHERE id IN ({_marks(len(part))}) "
                "AND status IN ('pending', 'blocked') RETURNING id",
                [now, request, *part],
            ).fetchall()
            done += [r[0] for r in rows]
        return sorted(done)

    def reprioritize(self, ids: Sequence[int], priority: int) -> list[tuple[int, int]]:
        """Give those of `ids` still waiting this priority; returns (id, old priority) of those it
        changed. Call it inside a transaction: the read and the write see the same rows."""
        changed: list[tuple[int, int]] = []
        for start in range(0, len(ids), CHUNK):
            part = list(ids[start : start + CHUNK])
            marks = _marks(len(part))
            old = self._db.execute(
                f"SELECT id, priority FROM tasks WHERE id IN ({marks}) AND status IN ('pending', 'blocked') "
                "AND priority != ?",
                [*part, priority],
            ).fetchall()
            if old:
                self._db.execute(
                    f"UPDATE tasks SET priority = ? WHERE id IN ({_marks(len(old))})",
                    [priority, *(i for i, _ in old)],
                )
            changed += old
        return sorted(changed)

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
                f"DELETE FROM queue_pauses WHERE type IN ({_marks(len(types))}) RETURNING type", list(types)
            ).fetchall()
        return sorted(r[0] for r in rows)

    def queue_requests(self, events: Sequence[str], limit: int) -> list[dict[str, Any]]:
        """The latest requests about the whole queue recorded as one of `events`, oldest first."""
        rows = self._db.execute(
            f"SELECT time, event, detail, uid, pid FROM task_events WHERE task_id IS NULL "
            f"AND event IN ({_marks(len(events))}) ORDER BY id DESC LIMIT ?",
            (*events, limit),
        ).fetchall()
        return [
            {"time": t, "event": e, **(msgpack.unpackb(d, raw=False) if d else {}), "uid": u, "pid": p}
            for t, e, d, u, p in reversed(rows)
        ]
