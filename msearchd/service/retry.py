"""Retrying a failed or cancelled task as a new one, and all failed tasks (of a type) in chunks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from msearchd.errors import InvalidState, NotFound
from msearchd.model import (
    TaskStatus,
    format_task_id,
)
from msearchd.service.core import REQUESTER
from msearchd.service.fanout import Fanned
from msearchd.service.query import type_filter

# A retry writes a new task and its history: a chunk of these holds the loop about 10 ms.
RETRY_CHUNK = 200

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases


class Retrying(ServiceCore):
    """The retry operations of `TaskService`."""

    if TYPE_CHECKING:

        def _prepare(
            self, task_type: object, data: object, priority: object, depends_on: object
        ) -> dict[str, Any]: ...
        @contextmanager
        def _deferring(self) -> Iterator[list[asyncio.Future[Fanned]]]: ...
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
        if old.status is not TaskStatus.FAILED:
            raise InvalidState(f"{ref} is {old.status}; only failed tasks can be retried")
        if old.retried_as is not None:
            raise InvalidState(f"{ref} was already retried as {format_task_id(old.retried_as)}")
        with self.store.transaction():
            spec = self._prepare(old.type, old.data, old.priority, old.depends_on)
            new_id = self.store.insert(
                **spec, retry_of=old.id, created_at=self.clock(), submitter=REQUESTER.get()
            )
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
