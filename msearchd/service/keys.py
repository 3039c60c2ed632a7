"""Submitting under a key: at most one unfinished task per key, a second submit kept or superseding."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from msearchd.errors import InvalidArgument
from msearchd.model import StopReason, Task, TaskStatus, format_task_id
from msearchd.service.core import requester
from msearchd.store import WAITING
from msearchd.workers import Outcome

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases

KEY_MAX = 512  # characters of a key
ON_CONFLICT = ("keep", "replace")


def validate_key(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= KEY_MAX:
        raise InvalidArgument(f"a key must be a string of 1 to {KEY_MAX} characters, got {value!r}")
    return value


class Keying(ServiceCore):
    """The keyed submits of `TaskService`."""

    if TYPE_CHECKING:

        def _submitted(self, task_id: int, spec: dict[str, Any], now: float) -> dict[str, Any]: ...
        async def _stop_running(
            self, task: Task, by: str, asked_elsewhere: bool = False
        ) -> tuple[Outcome, int]: ...

    def _submit_keyed(
        self, spec: dict[str, Any], key: object, on_conflict: object, running: bool
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """Submit under a key: at most one unfinished task holds it. The database's unique index
        decides; the reads here only choose what to answer."""
        key = validate_key(key)
        if on_conflict not in ON_CONFLICT:
            raise InvalidArgument(f"on_conflict must be one of {', '.join(ON_CONFLICT)}, got {on_conflict!r}")
        existing = self.store.unfinished_with_key(key)
        if existing is None:
            return self._insert_keyed(spec, key)
        if on_conflict == "keep":
            return self._keyed_answer(existing, key, "kept")
        if existing.status.waiting:
            return self._supersede(existing, spec, key)
        if running:
            return self._supersede_running(existing, spec, key)
        return self._keyed_answer(existing, key, "kept")  # a running one is left to finish

    def _keyed_answer(self, task: Task, key: str, outcome: str, **extra: Any) -> dict[str, Any]:
        return {**self.wire(task), "key": key, "key_outcome": outcome, **extra}

    def _insert_keyed(self, spec: dict[str, Any], key: str) -> dict[str, Any]:
        now = self.clock()
        task_id = self.store.insert_keyed(key, **spec, created_at=now, submitter=requester())
        if task_id is None:  # another took it since it was read: answer with that one
            holder = self.store.unfinished_with_key(key)
            assert holder is not None
            return self._keyed_answer(holder, key, "kept")
        return {**self._submitted(task_id, spec, now), "key": key, "key_outcome": "created"}

    def _supersede(self, old: Task, spec: dict[str, Any], key: str) -> dict[str, Any]:
        """Cancel the waiting holder of `key` and queue the new task in its place, in one transaction;
        the old one's dependents wait for the new one instead."""
        with self.store.transaction():
            self._record([old.id], "cancel_requested", by="replace", running=False)
            now = self.clock()
            self.store.update(
                old.id,
                expect=WAITING,
                status=TaskStatus.CANCELLED,
                finished_at=now,
                stop_reason=StopReason.NOT_STARTED,
                blocked_reason=None,
            )
            new_id = self.store.insert_keyed(key, **spec, created_at=now, submitter=requester())
            assert new_id is not None  # the key was freed just above, in this transaction
            handed = []
            while part := self.store.replace_dependency(old.id, new_id):
                handed += part
            self._record([old.id], "replaced", new_task_id=format_task_id(new_id))
            if handed:
                self._record(
                    handed, "dependency_replaced", old=format_task_id(old.id), new=format_task_id(new_id)
                )
        old.status, old.finished_at, old.stop_reason = TaskStatus.CANCELLED, now, StopReason.NOT_STARTED
        self._publish("cancelled", old, stop_reason=StopReason.NOT_STARTED.value)
        answer = self._submitted(new_id, spec, now)
        return {**answer, "key": key, "key_outcome": "replaced", "replaced": format_task_id(old.id)}

    async def _supersede_running(self, old: Task, spec: dict[str, Any], key: str) -> dict[str, Any]:
        await self._stop_running(old, by="replace")
        holder = self.store.unfinished_with_key(key)
        if holder is not None:  # taken again while the old one stopped
            return self._keyed_answer(holder, key, "kept")
        answer = self._insert_keyed(spec, key)
        if answer["key_outcome"] == "created":
            answer.update(key_outcome="replaced", replaced=format_task_id(old.id))
        return answer
