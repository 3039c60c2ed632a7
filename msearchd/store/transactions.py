"""What both stores share about transactions: nesting, group commit over savepoints, and callbacks
that run only once a commit is durable. Each store says how a statement runs on its connection."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType


class Transactions:
    """The transaction state of one connection; `transaction()` and `group()` as `TaskStore` has them."""

    begun: int
    """Transactions begun so far: two units of work with the same value shared a transaction."""

    def _init_transactions(self) -> None:
        self._depth = 0
        self._grouping = False  # inside group(): transactions are savepoints of one shared transaction
        self._group_open = False  # that shared transaction has begun
        self._after_commit: list[Callable[[], None]] = []
        self.begun = 0
        self._unit = _Transaction(self)

    # What each store provides.

    def _execute(self, sql: str) -> None:
        """Run a statement that controls the transaction."""
        raise NotImplementedError

    def _quiet(self, sql: str) -> None:
        """End a transaction that failed."""
        raise NotImplementedError

    def _begin(self) -> None:
        """Begin a transaction, counted in `begun`."""
        raise NotImplementedError

    def _in_transaction(self) -> bool:
        raise NotImplementedError

    def _held(self) -> int:
        """A mark of what the open transaction holds back until its commit, besides callbacks."""
        return 0

    def _drop_held(self, mark: int) -> None:
        """Forget what was held back since `mark`: it rolled back."""

    def _before_commit(self) -> None:
        """Send what was held back, as part of the transaction about to commit."""

    def _commit(self) -> None:
        """Commit the open transaction, with what was held back. A store that holds nothing back
        commits with one statement."""
        self._before_commit()
        self._execute("COMMIT")

    def _connection_lost(self) -> bool:
        """Whether a failed statement took the connection, and any open transaction, with it."""
        return False

    # The transactions.

    def transaction_open(self) -> bool:
        """Whether what is written now waits for a commit."""
        return bool(self._depth or self._group_open)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the current transaction is committed (at once outside one); never if it
        rolls back. So nobody hears of a change that a crash could still undo."""
        if self._depth or self._group_open:
            self._after_commit.append(callback)
        else:
            callback()

    def transaction(self) -> AbstractContextManager[None]:
        """One atomic, durable unit; nested uses join the outer transaction.

        Inside `group()` it is part of the group's transaction (a savepoint of it, unless it is the
        first to write): it rolls back alone, and becomes durable when the group commits.
        """
        return self._unit

    def group(self) -> AbstractContextManager[None]:
        """Commit every transaction opened inside with one commit at the end (group commit).

        Each transaction inside stays atomic on its own (see `transaction`); none is durable, and no
        after-commit callback runs, before the group ends. Requests that arrive together share a
        commit this way. A group that never writes costs nothing.
        """
        return _Group(self)

    def _abandon(self) -> None:
        """Roll back the open transaction whole, and forget what waited for its commit."""
        self._after_commit.clear()
        self._drop_held(0)
        if self._in_transaction():
            self._quiet("ROLLBACK")

    def _begin_group(self) -> None:
        if not self._group_open:
            self._begin()
            self._group_open = True

    def _run_after_commit(self) -> None:
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()


# What the outermost transaction is, as `_Transaction` begins it.
_SAVEPOINT, _GROUP_FIRST, _OWN = range(3)


class _Transaction:
    """`Transactions.transaction()`: one for each store, used again by every transaction. A class
    rather than a generator, and made once: every request opens one or more transactions, and a
    generator-based context manager costs about a microsecond more each time.

    What it keeps is the outermost transaction's: a nested one only counts in the store's depth."""

    __slots__ = ("_held", "_kind", "_mark", "_store")

    def __init__(self, store: Transactions) -> None:
        self._store = store

    def __enter__(self) -> None:
        store = self._store
        if store._depth:
            store._depth += 1
        elif store._grouping and store._group_open:
            store._execute("SAVEPOINT unit")
            self._mark, self._held = len(store._after_commit), store._held()
            store._depth = 1
            self._kind = _SAVEPOINT
        elif store._grouping:
            # The group's first writer: the group's transaction holds nothing else, so it is the
            # unit's own, rolled back whole if the unit fails (a lone request needs no savepoint).
            store._begin_group()
            store._depth = 1
            self._kind = _GROUP_FIRST
        else:
            store._begin()
            store._depth = 1
            self._kind = _OWN

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        store = self._store
        if store._depth > 1:  # nested: it joined the outer transaction
            store._depth -= 1
            return
        store._depth = 0
        kind = self._kind
        if exc_type is not None:
            if kind == _SAVEPOINT:
                del store._after_commit[self._mark :]
                store._drop_held(self._held)
                store._quiet("ROLLBACK TO unit")
                store._quiet("RELEASE unit")
                if store._connection_lost():  # the group's transaction went with the connection
                    store._group_open = False
                    store._after_commit.clear()
                    store._drop_held(0)
            else:
                if kind == _GROUP_FIRST:
                    store._group_open = False
                store._after_commit.clear()
                store._drop_held(0)
                store._quiet("ROLLBACK")
            return
        if kind == _SAVEPOINT:
            store._execute("RELEASE unit")
        elif kind == _OWN:
            try:
                store._commit()
            except BaseException:  # a full disk, say: nothing is announced, and the next BEGIN works
                store._abandon()
                raise
            if store._after_commit:
                store._run_after_commit()


class _Group:
    """`Transactions.group()`, a class for the reason `_Transaction` is one."""

    __slots__ = ("_inner", "_store")

    def __init__(self, store: Transactions) -> None:
        self._store = store

    def __enter__(self) -> None:
        store = self._store
        self._inner = bool(store._grouping or store._depth)
        if not self._inner:
            store._grouping = True

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._inner:
            return
        store = self._store
        try:
            if exc_type is not None:
                store._abandon()
                return
            try:
                if store._group_open:
                    store._commit()
            except BaseException:
                store._abandon()
                raise
        finally:
            store._grouping = store._group_open = False
        store._run_after_commit()
