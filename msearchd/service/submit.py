"""Submitting tasks: one, several answered each on its own, a batch that is all or nothing, a
handler's follow-ups."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any

from msearchd.errors import InvalidArgument, InvalidState, MsearchError, NotFound
from msearchd.handlers import command
from msearchd.model import (
    PENDING_STATUS,
    TERMINAL,
    TaskStatus,
    default_priority,
    dependency_state,
    format_task_id,
    new_task_wire,
    parse_task_id,
    parse_task_ids,
    validate_data,
    validate_priority,
    validate_timeout,
    validate_type,
)
from msearchd.protocol import check_params, pack
from msearchd.service.core import requester
from msearchd.store import NewRow, new_row

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases

log = logging.getLogger("msearchd.service")
# The parameters of a task that `submit_many` checks without the help of `submit`.
_PLAIN_KEYS = frozenset({"type", "data", "priority"})
_PENDING = str(TaskStatus.PENDING)


class Submitting(ServiceCore):
    """The submit operations of `TaskService`."""

    if TYPE_CHECKING:

        def _submit_keyed(
            self, spec: dict[str, Any], key: object, on_conflict: object, running: bool
        ) -> dict[str, Any] | Awaitable[dict[str, Any]]: ...
        async def _wait(
            self, ids: list[int], wanted: frozenset[TaskStatus], timeout: float | None
        ) -> dict[str, Any]: ...

    def _prepare(
        self, task_type: object, data: object, priority: object, depends_on: object
    ) -> dict[str, Any]:
        """Validate one submission and work out where it starts; no writes."""
        task_type = validate_type(task_type)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise InvalidArgument("task data must be a map")
        validate_data(data)
        if task_type == "command" and "command" not in self.settings.handlers:
            command.validate(data)
        # Known once a task of the type is checked, whatever its priority: `submit_many` then checks
        # the type's next tasks itself.
        defaults = self._default_priority
        default = defaults.get(task_type)
        if default is None:
            default = defaults[task_type] = default_priority(task_type, self.settings.priorities)
        prio = default if priority is None else validate_priority(priority)
        if not depends_on:
            return {
                "task_type": task_type,
                "data": data,
                "priority": prio,
                "status": PENDING_STATUS,
                "depends_on": [],
                "blocked_reason": None,
            }
        if not isinstance(depends_on, list):
            raise InvalidArgument("depends_on must be a list of task ids")
        deps = [self._current_attempt(d) for d in parse_task_ids(depends_on)]
        dep_tasks = {t.id: t for t in self.store.get_many(deps)}
        for dep in deps:
            if dep not in dep_tasks:
                raise NotFound(f"dependency {format_task_id(dep)} does not exist")
            if dep_tasks[dep].status is TaskStatus.CANCELLED:
                raise InvalidState(f"dependency {format_task_id(dep)} is cancelled")
        status, reason = dependency_state((d, dep_tasks[d].status) for d in deps)
        return {
            "task_type": task_type,
            "data": data,
            "priority": prio,
            "status": status,
            "depends_on": sorted(set(deps)),
            "blocked_reason": reason,
        }

    def _current_attempt(self, task_id: int) -> int:
        """Follow a failed task's retries to the newest attempt, so new dependents wait for that one."""
        seen = {task_id}
        while True:
            task = self.store.get(task_id)
            if task is None or task.status is not TaskStatus.FAILED or task.retried_as is None:
                return task_id
            task_id = task.retried_as
            if task_id in seen:
                return task_id
            seen.add(task_id)

    def submit(
        self,
        type: str,
        data: dict[str, Any] | None = None,
        priority: int | None = None,
        depends_on: list[Any] | None = None,
        key: str | None = None,
        on_conflict: str = "keep",
        running: bool = False,
        wait: bool = False,
        timeout: float | None = None,
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """Queue a task. With `wait`, answer once it has ended, or after `timeout` seconds (see
        `_until_ended`)."""
        if wait or timeout is not None:
            return self._submit_and_wait(
                type, data, priority, depends_on, key, on_conflict, running, wait, timeout
            )
        spec = self._prepare(type, data, priority, depends_on)
        if key is not None:
            return self._submit_keyed(spec, key, on_conflict, running)
        now = self.clock()
        task_id = self.store.insert(**spec, created_at=now, submitter=requester())
        return self._submitted(task_id, spec, now)

    def _submit_and_wait(
        self,
        type: str,
        data: dict[str, Any] | None,
        priority: int | None,
        depends_on: list[Any] | None,
        key: str | None,
        on_conflict: str,
        running: bool,
        wait: bool,
        timeout: float | None,
    ) -> Awaitable[dict[str, Any]]:
        """`submit` with `wait`: the parameters of the wait are checked before anything is queued."""
        if not wait:
            raise InvalidArgument("timeout goes with wait=true")
        validate_timeout(timeout)
        submitted = self.submit(type, data, priority, depends_on, key, on_conflict, running)
        return self._until_ended(submitted, timeout)

    async def _until_ended(
        self, submitted: dict[str, Any] | Awaitable[dict[str, Any]], timeout: float | None
    ) -> dict[str, Any]:
        """The answer of a submit that waits: the submit's answer, then the task as it is once it has
        ended (or the timeout passed), and `timed_out`. One request where a client would submit, then
        wait: the wait's round trip and its turn of the daemon are saved. The task is durable before
        this runs: the connection starts it once the submit is committed."""
        if not isinstance(submitted, dict):  # a keyed submit stopping the running holder of its key
            submitted = await submitted
        waited = await self._wait([parse_task_id(submitted["id"])], TERMINAL, timeout)
        return {**submitted, **waited["tasks"][0], "timed_out": waited["timed_out"]}

    def _submitted(self, task_id: int, spec: dict[str, Any], now: float) -> dict[str, Any]:
        """Announce a task just written, and answer with it."""
        task_type, status = spec["task_type"], spec["status"]
        self._announce("submitted", task_id, task_type, status)
        if status is PENDING_STATUS:
            self.wake()
        answer = new_task_wire(
            task_id,
            task_type,
            status,
            spec["priority"],
            spec["data"],
            spec["depends_on"],
            spec["blocked_reason"],
            now,
        )
        if self.store.shared:
            answer["host"] = None  # nobody runs it yet
        return answer

    def submit_each(self, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any] | MsearchError]:
        """Submit the tasks of separate requests that arrived together (checked params of `submit`).

        Each is accepted or refused on its own, exactly as `submit` would, in order; those without
        dependencies are written together, with one statement.
        """
        results: list[dict[str, Any] | MsearchError] = []
        waiting: list[tuple[int, dict[str, Any]]] = []  # (index in results, spec), not yet written

        def write_waiting() -> None:
            if not waiting:
                return
            now, submitter = self.clock(), requester()
            try:
                if len(waiting) == 1:
                    ids = [self.store.insert(**waiting[0][1], created_at=now, submitter=submitter)]
                else:
                    ids = self.store.insert_many([spec for _, spec in waiting], now, submitter)
            except MsearchError as exc:  # the database is locked: each of them is told
                for index, _ in waiting:
                    results[index] = exc
                waiting.clear()
                return
            for (index, spec), task_id in zip(waiting, ids, strict=True):
                results[index] = self._submitted(task_id, spec, now)
            waiting.clear()

        for params in requests:
            try:
                if params.get("depends_on"):
                    write_waiting()  # it may name a task submitted just before it
                    answer = self.submit(**params)
                    assert isinstance(answer, dict)  # plain submits: none waits or holds a key
                    results.append(answer)
                    continue
                spec = self._prepare(params["type"], params.get("data"), params.get("priority"), None)
            except MsearchError as exc:
                results.append(exc)
                continue
            waiting.append((len(results), spec))
            results.append(spec)  # replaced by the answer once written
        write_waiting()
        return results

    def submit_many(self, tasks: list[Any]) -> dict[str, Any]:
        """Submit many tasks in one transaction: all are accepted, or none.

        Each task goes in one pass from its checks to the row the store writes. A plain one (type,
        data, priority; a type already submitted, whose default priority is known) is checked here
        directly; any other takes the checks of `submit` itself, which answer what it lacks.
        """
        rows: list[NewRow] = []
        depends_on: list[tuple[int, list[int]]] = []
        defaults = self._default_priority  # types checked before, and their default priority
        for i, item in enumerate(tasks):
            if (
                type(item) is dict
                and _PLAIN_KEYS.issuperset(item)
                and type(task_type := item.get("type")) is str
                and task_type != "command"  # its data has checks of its own
                and (default := defaults.get(task_type)) is not None
                and type(data := item.get("data", {})) is dict
                and ((priority := item.get("priority")) is None or type(priority) is int)
            ):
                try:
                    validate_data(data)
                    prio = default if priority is None else validate_priority(priority)
                except InvalidArgument as exc:
                    raise InvalidArgument(f"tasks[{i}]: {exc.message}") from None
                rows.append((task_type, _PENDING, prio, pack(data), None))
                continue
            if not isinstance(item, dict):
                raise InvalidArgument(f"tasks[{i}] must be a map")
            if item.get("key") is not None:
                raise InvalidArgument(f"tasks[{i}]: submit_many takes no keys; submit keyed tasks one by one")
            if item.get("wait") or item.get("timeout") is not None:
                raise InvalidArgument(f"tasks[{i}]: submit_many does not wait; wait on its task_ids")
            try:
                params = check_params("submit", item)
                spec = self._prepare(
                    params["type"], params.get("data"), params.get("priority"), params.get("depends_on")
                )
            except (InvalidArgument, InvalidState, NotFound) as exc:
                raise type(exc)(f"tasks[{i}]: {exc.message}") from None
            if spec["depends_on"]:
                depends_on.append((len(rows), spec["depends_on"]))
            rows.append(new_row(spec))
        ids = self.store.insert_rows(rows, depends_on, self.clock(), requester())
        self._publish_status("submitted", ids)
        self.wake()
        return {"task_ids": [format_task_id(i) for i in ids]}

    def follow_up(self, parent_id: int, params: dict[str, Any]) -> str:
        params = _follow_up_params(params)
        task = self.submit(**params)
        assert isinstance(task, dict)
        log.info("%s submitted follow-up %s", format_task_id(parent_id), task["id"])
        return str(task["id"])

    def follow_up_many(self, parent_id: int, tasks: list[Any]) -> list[str]:
        """Submit a handler's follow-up tasks in one transaction, all or none: a scan queues the
        tasks of many files with one request. `after` in a task names earlier tasks of the same list,
        by index, that it depends on."""
        ids: list[str] = []
        with self.store.transaction():
            for i, item in enumerate(tasks):
                if not isinstance(item, dict):
                    raise InvalidArgument(f"tasks[{i}] must be a map")
                after = item.get("after") or []
                if not isinstance(after, list) or not all(isinstance(a, int) and 0 <= a < i for a in after):
                    raise InvalidArgument(f"tasks[{i}].after must list indices of earlier tasks")
                try:
                    params = _follow_up_params({k: v for k, v in item.items() if k != "after"})
                    params["depends_on"] = [*(params.get("depends_on") or []), *(ids[a] for a in after)]
                    task = self.submit(**params)
                    assert isinstance(task, dict)  # as in follow_up
                    ids.append(str(task["id"]))
                except (InvalidArgument, InvalidState, NotFound) as exc:
                    raise type(exc)(f"tasks[{i}]: {exc.message}") from None
        log.info("%s submitted %d follow-ups", format_task_id(parent_id), len(ids))
        return ids


def _follow_up_params(params: dict[str, Any]) -> dict[str, Any]:
    """The checked params of a handler's follow-up: a submit answered at once, with its task."""
    params = check_params("submit", params)
    if params.get("running"):
        raise InvalidArgument("a follow-up cannot stop a running task: submit it with running=false")
    if params.get("wait") or params.get("timeout") is not None:
        raise InvalidArgument("a follow-up cannot wait: its handler would hold its worker meanwhile")
    return params
