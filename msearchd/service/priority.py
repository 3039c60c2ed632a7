"""Changing the priority of a task that has not started."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from msearchd.errors import InvalidState
from msearchd.model import PENDING_STATUS, TaskStatus, format_task_id, parse_task_id, validate_priority
from msearchd.service.core import requester
from msearchd.store.schema import STATUS_BY_NAME

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases


def not_waiting(task_id: int, status: TaskStatus | str) -> InvalidState:
    return InvalidState(
        f"{format_task_id(task_id)} is {status}; only a pending or blocked task's priority changes"
    )


class Prioritising(ServiceCore):
    """The priority operations of `TaskService`."""

    def set_priority(self, task_id: Any, priority: int) -> dict[str, Any]:
        priority = validate_priority(priority)
        task_id = parse_task_id(task_id)
        status, answer = self._read_waiting(task_id)
        if answer is None:
            raise not_waiting(task_id, status)
        old = answer["priority"]
        uid, pid = requester()
        with self.store.transaction():
            if not self.store.change_priority(task_id, priority, old, self.clock(), uid, pid):
                # Another daemon of a shared store started or cancelled it since it was read.
                raise not_waiting(task_id, self._require(task_id).status)
        answer["priority"] = priority
        waiting = STATUS_BY_NAME[status]
        changed = {"old_priority": old, "priority": priority}
        self._announce("priority_changed", task_id, answer["type"], waiting, extra=changed)
        if waiting is PENDING_STATUS:
            self.wake()
        return answer
