"""Task handlers: the public API for handler authors, and the registry that finds a type's handler.

A handler is ``handler(ctx, data)``. It reports progress through ``ctx``, may submit follow-up tasks,
and ends the task by returning (completed) or raising (failed; `TaskFailed` gives a clean message).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol

from msearchd.handlers.media import HANDLERS as MEDIA_HANDLERS
from msearchd.handlers.media import INSTALL_HINT as MEDIA_INSTALL_HINT

ENTRY_POINT_GROUP = "msearchd.handlers"
BUILTIN: dict[str, str] = {"command": "msearchd.handlers.command:run", **MEDIA_HANDLERS}


class TaskFailed(Exception):
    """Raise from a handler to fail the task with exactly this message."""


class TaskCancelled(BaseException):
    """Raised inside a handler when the task is cancelled and the handler does not check for it.

    A BaseException, like KeyboardInterrupt, so that a handler's `except Exception` does not swallow it.
    """

    def __init__(self, stop_reason: str) -> None:
        super().__init__(stop_reason)
        self.stop_reason = stop_reason


class TaskContext(Protocol):
    """What a handler gets as `ctx`."""

    task_id: str
    log_path: str

    @property
    def cancelled(self) -> bool:
        """True once cancellation was asked. Reading it marks the handler as checking for itself:
        it is then not interrupted, and must return soon (before the grace period ends)."""
        ...

    def progress(self, fraction: float, current_operation: str | None = None) -> None: ...

    def set_operation(self, current_operation: str) -> None: ...

    def submit(
        self,
        task_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        priority: int | None = None,
        depends_on: Sequence[str] | None = None,
    ) -> str: ...

    def submit_many(self, tasks: Sequence[Mapping[str, Any]]) -> list[str]:
        """Submit several follow-up tasks with one request, all or none; returns their ids. Each is a
        map of `type`, and optionally `data`, `priority`, `depends_on` and `after` (the indices of
        earlier tasks of the same list it depends on)."""
        ...

    def cancel_waiting(self, task_ids: Sequence[str]) -> list[str]:
        """Cancel those of these tasks that have not started (work this handler queued before and
        now replaces); returns the ids of those cancelled. Running and ended tasks are left alone."""
        ...

    def handles(self, task_type: str) -> bool:
        """True if this daemon has a handler for `task_type` (without loading it)."""
        ...


Handler = Callable[[TaskContext, dict[str, Any]], Any]


class HandlerNotFound(LookupError):
    pass


def _load(target: str, task_type: str) -> Handler:
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise HandlerNotFound(
            f"cannot load handler {target!r} for type {task_type}: {type(exc).__name__}: {exc}"
        ) from None
    if not callable(obj):
        raise HandlerNotFound(f"handler {target!r} for type {task_type} is not callable")
    return obj


def _builtin(task_type: str) -> str | None:
    """Where the built-in handler of `task_type` is; the media types only with the `media` extra."""
    target = BUILTIN.get(task_type)
    if target is not None and task_type in MEDIA_HANDLERS:
        try:
            importlib.import_module("PIL")
        except ImportError:
            return None
    return target


def registered(task_type: str, configured: Mapping[str, str]) -> bool:
    """True if `resolve` would find a handler for `task_type` (it may still fail to load)."""
    return (
        task_type in configured
        or bool(entry_points(group=ENTRY_POINT_GROUP, name=task_type))
        or _builtin(task_type) is not None
    )


def resolve(task_type: str, configured: Mapping[str, str]) -> Handler:
    """Configured handlers win over the built-ins, which win over entry points: an installed
    package cannot take over a built-in type (and see every task's data) unless the config says so."""
    if task_type in configured:
        return _load(configured[task_type], task_type)
    target = _builtin(task_type)
    if target is not None:
        return _load(target, task_type)
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=task_type):
        return _load(ep.value, task_type)
    if task_type in MEDIA_HANDLERS:
        raise HandlerNotFound(MEDIA_INSTALL_HINT)
    raise HandlerNotFound(f"no handler for type {task_type}")
