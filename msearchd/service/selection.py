"""One request about many named tasks (retry, cancel, set_priority with task_ids), answered task by task.

The page's batch actions and `msearchctl tasks retry ID...` send their ids in one request. It is the
operation on the selection of those ids (`matching`: a window at a time, each one transaction, other
requests answered in between); each id is then answered as the operation on that task alone would
be: done, or refused with the reason (not failed, already finished, unknown).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from msearchd.errors import InvalidArgument, InvalidState, MsearchError, NotFound
from msearchd.model import (
    TERMINAL,
    Task,
    TaskStatus,
    format_task_id,
    parse_task_id,
    validate_priority,
)
from msearchd.selection import Selection
from msearchd.service.cancel import uncancellable
from msearchd.service.priority import not_waiting
from msearchd.service.retry import unretriable

# Tasks one selection may name.
SELECTION_MAX = 10_000

if TYPE_CHECKING:
    # The operations on the selection of the ids are its own.
    from msearchd.service.matching import Matching
else:
    Matching = object  # TaskService puts the real one after it among its bases


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


class Selecting(Matching):
    """The operations of `TaskService` on named tasks, task by task: each the operation on the
    selection of those ids (see `matching`), answered for each id."""

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

    def _why_not(self, task_id: int, refused: Callable[[Task], MsearchError | None]) -> MsearchError:
        """What the operation on this one task would have answered: it does not exist, or its state
        (`refused`) forbids the operation; or it changed state while the request ran."""
        try:
            task = self._require(task_id)
        except NotFound as exc:
            return exc
        why = refused(task)
        if why is None:
            why = InvalidState(f"{format_task_id(task_id)} became {task.status} while the request ran")
        return why

    async def retry_each(self, task_ids: list[Any]) -> dict[str, Any]:
        """Retry each failed task of a selection; the others are reported, never skipped in silence."""
        ids = selection(task_ids)
        outcomes: dict[int, str | MsearchError] = {}
        await self._retry_selection(Selection(ids=tuple(ids)), self.store.max_id(), outcomes)
        results = []
        for task_id in ids:
            outcome = outcomes.get(task_id) or self._why_not(task_id, unretriable)
            if isinstance(outcome, str):
                ref = format_task_id(task_id)
                results.append({"task_id": ref, "success": True, "new_task_id": outcome})
            else:
                results.append(self._refusal(task_id, outcome))
        return tally(results)

    async def cancel_each(self, task_ids: list[Any], running: bool = False) -> dict[str, Any]:
        """Cancel each task of a selection; running ones are stopped side by side. A task the
        selection cancelled as a dependent of another counts as cancelled by it."""
        ids = selection(task_ids)
        before = {t.id: t.status for t in self.store.get_many(ids)}
        outcomes: dict[int, MsearchError | None] = {}
        detail = {"by": "cancel", "running": running}
        await self._cancel_selection(
            Selection(ids=tuple(ids)), self.store.max_id(), running, detail, outcomes
        )
        cancelled = {"success": True, "status": str(TaskStatus.CANCELLED)}
        results = []
        for task_id in ids:
            ref = format_task_id(task_id)
            if task_id in outcomes and outcomes[task_id] is None:
                results.append({"task_id": ref, "success": True, **cancelled})
                continue
            task = self.store.get(task_id)
            was = before.get(task_id)
            if task is not None and task.status is TaskStatus.CANCELLED and was not in (None, *TERMINAL):
                results.append({"task_id": ref, **cancelled})  # with another it cancelled
                continue
            why = outcomes.get(task_id) or self._why_not(task_id, lambda t: uncancellable(t, running))
            results.append(self._refusal(task_id, why))
        return tally(results)

    async def set_priority_each(self, task_ids: list[Any], priority: int) -> dict[str, Any]:
        """Give each waiting task of a selection a new priority; others are reported."""
        priority = validate_priority(priority)
        ids = selection(task_ids)
        touched: list[int] = []
        await self._reprioritize_selection(Selection(ids=tuple(ids)), self.store.max_id(), priority, touched)
        changed = set(touched)
        results = []
        for task_id in ids:
            if task_id in changed:
                results.append({"task_id": format_task_id(task_id), "success": True, "priority": priority})
            else:
                why = self._why_not(task_id, lambda t: not_waiting(t.id, t.status))
                results.append(self._refusal(task_id, why))
        return tally(results)
