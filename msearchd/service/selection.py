"""Selections: one request about many named tasks (retry, cancel, set_priority with task_ids).

The page's batch actions and `msearchctl tasks retry ID...` send a selection in one request. Each task
is tried on its own: one refused (not failed, already finished, unknown) is reported with the reason,
and the others go on. Chunks share a commit and let other requests through between them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from msearchd.errors import InvalidArgument, InvalidState, MsearchError, NotFound
from msearchd.model import (
    TERMINAL,
    TaskStatus,
    format_task_id,
    parse_task_id,
    validate_priority,
)
from msearchd.service.retry import RETRY_CHUNK

# Tasks one selection may name.
SELECTION_MAX = 10_000
# Tasks a selection cancels or reprioritises per transaction: other requests wait tens of ms at most.
BULK_CHUNK = 1000

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases


def selection(task_ids: list[Any]) -> list[int]:
    """The ids of a selection, each once, in the order given."""
    if not task_ids:
        raise InvalidArgument("task_ids is empty; name at least one task")
    if len(task_ids) > SELECTION_MAX:
        raise InvalidArgument(f"task_ids names {len(task_ids)} tasks; at most {SELECTION_MAX} a request")
    return list(dict.fromkeys(parse_task_id(t) for t in task_ids))


def tally(results: list[dict[str, Any]]) -> dict[str, Any]:
    succeeded = sum(1 for r in results if r["success"])
    return {"results": results, "succeeded": succeeded, "failed": len(results) - succeeded}


class Selecting(ServiceCore):
    """The selection operations of `TaskService`: retry, cancel and set_priority, task by task."""

    if TYPE_CHECKING:

        def retry(self, task_id: Any) -> dict[str, Any] | Awaitable[dict[str, Any]]: ...
        def cancel(
            self, task_id: Any, running: bool = False
        ) -> dict[str, Any] | Awaitable[dict[str, Any]]: ...
        def set_priority(self, task_id: Any, priority: int) -> dict[str, Any]: ...
        @contextmanager
        def _bulk(self) -> Iterator[None]: ...

    def _refusal(self, task_id: int, exc: MsearchError) -> dict[str, Any]:
        """Why one task of a selection was not changed, with its status to say it in other words."""
        out: dict[str, Any] = {
            "task_id": format_task_id(task_id),
            "success": False,
            "code": exc.code,
            "error": exc.message,
        }
        task = self.store.get(task_id)
        if task is not None:
            out["status"] = str(task.status)
            if task.retried_as is not None:
                out["retried_as"] = format_task_id(task.retried_as)
        return out

    async def retry_each(self, task_ids: list[Any]) -> dict[str, Any]:
        """Retry each failed task of a selection; the others are reported, never skipped in silence."""
        ids = selection(task_ids)
        results: dict[int, dict[str, Any]] = {}

        def retried(answer: dict[str, Any]) -> dict[str, Any]:
            return {"task_id": answer["task_id"], "success": True, "new_task_id": answer["new_task_id"]}

        with self._bulk():
            for start in range(0, len(ids), RETRY_CHUNK):
                handing_over: dict[int, Awaitable[dict[str, Any]]] = {}
                with self.store.transaction():
                    for task_id in ids[start : start + RETRY_CHUNK]:
                        try:
                            answer = self.retry(task_id)
                        except (InvalidState, NotFound) as exc:  # refused before it wrote anything
                            results[task_id] = self._refusal(task_id, exc)
                            continue
                        if isinstance(answer, dict):
                            results[task_id] = retried(answer)
                        else:  # dependents handed over in chunks: all of them before the next retries
                            handing_over[task_id] = answer
                for task_id, done in zip(
                    handing_over, await asyncio.gather(*handing_over.values()), strict=True
                ):
                    results[task_id] = retried(done)
                await asyncio.sleep(0)
        return tally([results[i] for i in ids])

    async def cancel_each(self, task_ids: list[Any], running: bool = False) -> dict[str, Any]:
        """Cancel each task of a selection; running ones are stopped side by side. A task the
        selection cancelled as a dependent of another counts as cancelled by it."""
        ids = selection(task_ids)
        before = {t.id: t.status for t in self.store.get_many(ids)}
        results: dict[int, dict[str, Any]] = {}
        stopping: dict[int, Awaitable[dict[str, Any]]] = {}

        def refused(task_id: int, exc: MsearchError) -> dict[str, Any]:
            task = self.store.get(task_id)
            was = before.get(task_id)
            if task is not None and task.status is TaskStatus.CANCELLED and was not in (None, *TERMINAL):
                return {"task_id": format_task_id(task_id), "success": True, "status": str(task.status)}
            return self._refusal(task_id, exc)

        with self._bulk():
            for start in range(0, len(ids), BULK_CHUNK):
                with self.store.transaction():
                    for task_id in ids[start : start + BULK_CHUNK]:
                        try:
                            answer = self.cancel(task_id, running)
                        except (InvalidState, NotFound) as exc:
                            results[task_id] = refused(task_id, exc)
                            continue
                        if isinstance(answer, dict):
                            results[task_id] = {
                                "task_id": format_task_id(task_id),
                                "success": True,
                                "status": answer["task"]["status"],
                            }
                        else:
                            stopping[task_id] = answer
                await asyncio.sleep(0)
            outcomes = await asyncio.gather(*stopping.values(), return_exceptions=True)
        for task_id, outcome in zip(stopping, outcomes, strict=True):
            if isinstance(outcome, InvalidState | NotFound):
                results[task_id] = refused(task_id, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                results[task_id] = {
                    "task_id": format_task_id(task_id),
                    "success": True,
                    "status": outcome["task"]["status"],
                }
        return tally([results[i] for i in ids])

    async def set_priority_each(self, task_ids: list[Any], priority: int) -> dict[str, Any]:
        """Give each waiting task of a selection a new priority; others are reported."""
        priority = validate_priority(priority)
        ids = selection(task_ids)
        results: list[dict[str, Any]] = []
        for start in range(0, len(ids), BULK_CHUNK):
            with self.store.transaction():
                for task_id in ids[start : start + BULK_CHUNK]:
                    try:
                        task = self.set_priority(task_id, priority)
                    except (InvalidState, NotFound) as exc:
                        results.append(self._refusal(task_id, exc))
                        continue
                    results.append({"task_id": task["id"], "success": True, "priority": task["priority"]})
            await asyncio.sleep(0)
        return tally(results)
