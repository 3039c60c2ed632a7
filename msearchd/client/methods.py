"""The operations of the RPC as methods, written once for the blocking client, its pipeline and the
asyncio client."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Any

from msearchd.errors import TooLarge

# Tasks one `wait` request names at most. Its answer holds each task whole and must fit in a frame
# (protocol.MAX_FRAME, 16 MiB; a task takes a few hundred bytes): the clients ask a wait on more in
# parts (see `Client.wait`), and a part of tasks with large data, refused as too large, in smaller
# ones (see `Client._wait_part`).
WAIT_PART = 10_000


def wait_parts(task_ids: list[str | int]) -> list[list[str | int]]:
    return [task_ids[i : i + WAIT_PART] for i in range(0, len(task_ids), WAIT_PART)]


def joined_waits(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The answers of a wait's parts, as the answer of one wait on all of them."""
    return {
        "tasks": [task for answer in answers for task in answer["tasks"]],
        "timed_out": any(answer["timed_out"] for answer in answers),
    }


def subscription(task_ids: Sequence[str | int] | None, types: list[str] | None) -> dict[str, Any]:
    """The params of `subscribe`, as both clients' `events` send them."""
    return {"task_ids": None if task_ids is None else list(task_ids), "types": types}


def smaller_part(refusal: TooLarge, asked: int) -> int:
    """How many tasks to ask for once `asked` were refused as too large: as many as the daemon said
    fit, else half as many; the refusal itself where not one fits."""
    fits = refusal.fits
    if fits is not None and 0 < fits < asked:
        return fits
    if asked < 2 or fits == 0:
        raise refusal
    return asked // 2


class Methods:
    """The operations, written once: each returns whatever `call` returns (a value, or an awaitable)."""

    def call(self, method: str, **params: Any) -> Any:
        raise NotImplementedError

    def submit(
        self,
        task_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        priority: int | None = None,
        depends_on: Sequence[str | int] | None = None,
        key: str | None = None,
        on_conflict: str = "keep",
        running: bool = False,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Queue a task; its answer is the task. With `wait`, the answer comes once the task has ended
        (or after `timeout` seconds): the task as it then is, with `timed_out`. One request for what
        would be a submit and then a wait."""
        extra: dict[str, Any] = (
            {"key": key, "on_conflict": on_conflict, "running": running} if key is not None else {}
        )
        if wait:
            extra["wait"] = True
            if timeout is not None:
                extra["timeout"] = timeout
        return self.call(
            "submit",
            type=task_type,
            data=dict(data or {}),
            priority=priority,
            depends_on=list(depends_on or []),
            **extra,
        )

    def submit_many(self, tasks: builtins.list[dict[str, Any]]) -> Any:
        return self.call("submit_many", tasks=tasks)

    def get(self, task_id: str | int) -> Any:
        return self.call("get", task_id=task_id)

    def list(
        self,
        status: str | builtins.list[str] | None = None,
        task_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "oldest",
    ) -> Any:
        return self.call("list", status=status, type=task_type, limit=limit, offset=offset, order=order)

    def count(self, status: str | builtins.list[str] | None = None, task_type: str | None = None) -> Any:
        return self.call("count", status=status, type=task_type)

    def stats(self) -> Any:
        return self.call("stats")

    def cancel(self, task_id: str | int, running: bool = False) -> Any:
        return self.call("cancel", task_id=task_id, running=running)

    def cancel_all(self, running: bool = False) -> Any:
        return self.call("cancel_all", running=running)

    def cancel_by_type(self, task_type: str, running: bool = False) -> Any:
        return self.call("cancel_by_type", type=task_type, running=running)

    def set_priority(self, task_id: str | int, priority: int) -> Any:
        return self.call("set_priority", task_id=task_id, priority=priority)

    def retry(self, task_id: str | int) -> Any:
        return self.call("retry", task_id=task_id)

    def retry_many(self, task_ids: Sequence[str | int]) -> Any:
        """Retry a selection in one request: {results: [{task_id, success, ...}], succeeded, failed}."""
        return self.call("retry", task_ids=list(task_ids))

    def cancel_many(self, task_ids: Sequence[str | int], running: bool = False) -> Any:
        return self.call("cancel", task_ids=list(task_ids), running=running)

    def set_priority_many(self, task_ids: Sequence[str | int], priority: int) -> Any:
        return self.call("set_priority", task_ids=list(task_ids), priority=priority)

    def dependents(self, task_id: str | int) -> Any:
        return self.call("dependents", task_id=task_id)

    def read_log(self, task_id: str | int, offset: int = 0) -> Any:
        return self.call("read_log", task_id=task_id, offset=offset)

    def retry_failed(self, task_type: str | None = None) -> Any:
        return self.call("retry_failed", type=task_type)

    def cancel_selected(self, select: dict[str, Any], running: bool = False, **run: Any) -> Any:
        """`run`: dry_run, and for a run after a dry run, its up_to and count as expect."""
        return self.call("cancel_selected", select=select, running=running, **run)

    def set_priority_selected(self, select: dict[str, Any], priority: int, **run: Any) -> Any:
        return self.call("set_priority_selected", select=select, priority=priority, **run)

    def retry_selected(self, select: dict[str, Any], **run: Any) -> Any:
        return self.call("retry_selected", select=select, **run)

    def pause(self, types: builtins.list[str] | None = None) -> Any:
        return self.call("pause", types=types)

    def resume(self, types: builtins.list[str] | None = None) -> Any:
        return self.call("resume", types=types)

    def drain(self, types: builtins.list[str] | None = None, timeout: float | None = None) -> Any:
        return self.call("drain", types=types, timeout=timeout)

    def queue(self) -> Any:
        return self.call("queue")

    def wait(
        self,
        task_ids: Sequence[str | int],
        statuses: builtins.list[str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        return self.call("wait", task_ids=list(task_ids), statuses=statuses, timeout=timeout)

    def history(self, task_id: str | int) -> Any:
        return self.call("history", task_id=task_id)

    def status(self) -> Any:
        return self.call("status")

    def shutdown(self) -> Any:
        return self.call("shutdown")
