"""Changing the priority of a task that has not started."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from msearchd.errors import InvalidState
from msearchd.model import (
    Task,
    TaskStatus,
    format_task_id,
    validate_priority,
)
from msearchd.store import WAITING

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases


def not_waiting(task: Task) -> InvalidState:
    return InvalidState(
        f"{format_task_id(task.id)} is {task.status}; only a pending or blocked task's priority changes"
    )


class Prioritising(ServiceCore):
    """The priority operations of `TaskService`."""

    def set_priority(self, task_id: Any, priority: int) -> dict[str, Any]:
        priority = validate_priority(priority)
        task = self._require(task_id)
        if not task.status.waiting:
            raise not_waiting(task)
        old = task.priority
        with self.store.transaction():
            changed = self.store.update(task.id, expect=WAITING, priority=priority)
            assert changed  # nothing ran between the read and this write
            self._record([task.id], "priority_changed", old=old, new=priority)
        task.priority = priority
        self._publish("priority_changed", task, old_priority=old, priority=priority)
        if task.status is TaskStatus.PENDING:
            self.wake()
        return self.wire(task)
