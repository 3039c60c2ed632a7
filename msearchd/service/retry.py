"""Retrying a failed or cancelled task as a new one, and all failed tasks (of a type) in chunks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from msearchd.errors import InvalidState, NotFound
from msearchd.model import (
    Task,
    TaskStatus,
    format_task_id,
)
from msearchd.service.core import requester
from msearchd.service.fanout import Fanned
from msearchd.service.query import type_filter

# A retry writes a new task and its history: a chunk of these holds the loop about 10 ms.
RETRY_CHUNK = 200

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases


def unretriable(task: Task) -> InvalidState | None:
    """Why a retry leaves this task alone, if its state says why: it did not fail, or was retried."""
    ref = format_task_id(task.id)
    if task.status is not TaskStatus.FAILED:
        return InvalidState(f"{ref} is {task.status}; only failed tasks can be retried")
    if task.retried_as is not None:
        return InvalidState(f"{ref} was already retried as {format_task_id(task.retried_as)}")
    return None


class Retrying(ServiceCore):
    """The retry operations of `TaskService`."""

    if TYPE_CHECKING:

        def _prepare(
            self, task_type: object, data: object, priority: object, depends_on: object
        ) -> dict[str, Any]: ...
        def _deferring(self) -> AbstractContextManager[list[asyncio.Future[Fanned]]]: ...
        def _fan_out(self, roots: Iterable[int]) -> Fanned: ...
        async def _later(self, later: list[asyncio.Future[Fanned]]) -> Fanned: ...
        @contextmanager
        def _bulk(self) -> Iterator[None]: ...
        def _stopped_meanwhile(self, done: str) -> None: ...

    def retry(self, task_id: Any) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """Retry a failed task; an awaitable answer when it has too many dependents to hand over at once."""
        with self._deferring() as later:
            answer = self._retry(task_id)
        return self._hand_over_later(answer, later) if later else answer

    async def _hand_over_later(
        self, answer: dict[str, Any], later: list[asyncio.Future[Fanned]]
    ) -> dict[str, Any]:
        answer["handed_over"] += [format_task_id(d) for d in (await self._later(later)).handed_over]
        return answer

    def _retry(self, task_id: Any) -> dict[str, Any]:
        old = self._require(task_id)
        ref = format_task_id(old.id)
        if (refused := unretriable(old)) is not None:
            raise refused
        key = self.store.keys([old.id]).get(old.id)
        with self.store.transaction():
            spec = self._prepare(old.type, old.data, old.priority, old.depends_on)
            spec.update(retry_of=old.id, created_at=self.clock(), submitter=requester())
            if key is None:
                new_id = self.store.insert(**spec)
            elif (keyed := self.store.insert_keyed(key, **spec)) is not None:
                new_id = keyed
            else:
                raise self._key_taken(ref, key)
            self.store.update(old.id, retried_as=new_id)
            self._record([old.id], "retried", new_task_id=format_task_id(new_id))
            handed_over = self._fan_out([old.id]).handed_over
        new = self.store.get(new_id)
        assert new is not None
        self._publish("retried", old, new_task_id=format_task_id(new_id))
        self._publish("submitted", new, retry_of=ref)
        if new.status is TaskStatus.PENDING:
            self.wake()
        return {
            "task_id": ref,
            "new_task_id": format_task_id(new_id),
            "task": self.wire(new),
            "handed_over": [format_task_id(d) for d in handed_over],
        }

    def _key_taken(self, ref: str, key: str) -> InvalidState:
        """A retry holds its task's key, as a submit would: while another unfinished task holds it, the
        retry is refused (the failed task stays as it is, to retry once the key is free)."""
        holder = self.store.unfinished_with_key(key)
        now = f"{format_task_id(holder.id)} ({holder.status})" if holder is not None else "another task"
        return InvalidState(
            f"{ref} cannot be retried: its key {key!r} is held by {now}; "
            f"a retry would be a second unfinished task with that key"
        )

    async def retry_failed(self, task_type: str | None = None) -> list[dict[str, Any]]:
        """Retry every failed task not yet retried, oldest first, so that a pipeline re-forms in order.
        A night of failures can be tens of thousands: they go a chunk at a time, each chunk one
        commit, and other requests are answered in between. Tasks that fail meanwhile (these
        retries among them) are not part of the request."""
        task_type = type_filter(task_type)
        results: list[dict[str, Any]] = []
        after, max_id = 0, self.store.max_id()
        with self._bulk():
            while batch := self.store.failed_not_retried(task_type, after, max_id, RETRY_CHUNK):
                self._stopped_meanwhile(f"{len(results)} failed tasks were retried")
                with self._deferring() as later, self.store.transaction():
                    for task_id in batch:
                        try:
                            answer = self._retry(task_id)
                            results.append(
                                {"task_id": answer["task_id"], "new_task_id": answer["new_task_id"]}
                            )
                        except (InvalidState, NotFound) as exc:  # refused before it wrote anything
                            results.append({"task_id": format_task_id(task_id), "error": exc.message})
                if later:  # dependents handed over in chunks: all of them before the next retries
                    await self._later(later)
                after = batch[-1]
                await asyncio.sleep(0)
        return results
