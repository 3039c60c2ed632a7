"""How a task of a lease ended, and what the pool tells whoever owns the tasks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from msearchd.model import StopReason, Task, TaskStatus


@dataclass(frozen=True, slots=True)
class Outcome:
    status: TaskStatus
    error: str | None = None
    stop_reason: StopReason | None = None
    # When the task ran, as the worker saw it (a task of a lease may start a little after its lease).
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None  # what the handler returned, when it completed
    logged: bool | None = None  # whether the run left a log; None where the worker did not say


# A task taken out of a lease before the worker started it.
NOT_STARTED = Outcome(TaskStatus.CANCELLED, stop_reason=StopReason.NOT_STARTED)


class PoolListener(Protocol):
    def worker_idle(self) -> None: ...

    def task_progress(self, task: Task, progress: float | None, operation: str | None) -> None: ...

    def task_finished(self, task: Task, outcome: Outcome) -> None: ...

    def task_started(self, task: Task) -> None:
        """A task of a lease claimed without a start (it waited its turn) runs long: it started."""

    def tasks_returned(self, tasks: list[Task]) -> None:
        """Tasks of a lease that did not start and will not: back to the queue."""

    def follow_up(self, parent_id: int, params: dict[str, Any]) -> str: ...

    def follow_up_many(self, parent_id: int, tasks: list[Any]) -> list[str]: ...

    def follow_up_cancel(self, parent_id: int, task_ids: list[Any]) -> list[str]: ...
