"""What both stores share about transactions: nesting, group commit over savepoints, and callbacks
that run only once a commit is durable. Each store says how a statement runs on its connection."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


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
            self._execute("SAVEPOINT unit")
            mark, held = len(self._after_commit), self._held()
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                del self._after_commit[mark:]
                self._drop_held(held)
                self._quiet("ROLLBACK TO unit")
                self._quiet("RELEASE unit")
                if self._connection_lost():  # the group's transaction went with the connection
                    self._group_open = False
                    self._after_commit.clear()
                    self._drop_held(0)
                raise
            self._depth = 0
            self._execute("RELEASE unit")
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
                self._drop_held(0)
                self._quiet("ROLLBACK")
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
            self._drop_held(0)
            self._quiet("ROLLBACK")
            raise
        self._depth = 0
        try:
            self._before_commit()
            self._execute("COMMIT")
        except BaseException:  # a full disk, say: nothing is announced, and the next BEGIN works
            self._after_commit.clear()
            self._drop_held(0)
            if self._in_transaction():
                self._quiet("ROLLBACK")
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
                self._before_commit()
                self._execute("COMMIT")
        except BaseException:
            self._after_commit.clear()
            self._drop_held(0)
            if self._in_transaction():
                self._quiet("ROLLBACK")
            raise
        finally:
            self._grouping = self._group_open = False
        self._run_after_commit()

    def _begin_group(self) -> None:
        if not self._group_open:
            self._begin()
            self._group_open = True

    def _run_after_commit(self) -> None:
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()
