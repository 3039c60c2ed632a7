"""Which task runs next.

The order itself, (priority, submission order) among pending tasks, is an index of the store; what is
left here is the part the store cannot know: how many tasks of each type run now, against per-type
limits, so that a type at its limit is skipped rather than blocking the queue.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from msearchd.selection import is_glob, type_matches


class Scheduler:
    def __init__(self, type_limits: Mapping[str, int] | None = None) -> None:
        self._limits = dict(type_limits or {})
        self._running: Counter[str] = Counter()
        self._held: Counter[str] = Counter()  # types a bulk cancel keeps from starting meanwhile
        self._held_globs: tuple[str, ...] = ()  # those of them that are globs
        self.paused: frozenset[str] = frozenset()
        self.all_paused = False  # the whole queue: nothing starts
        self._paused_globs: tuple[str, ...] = ()

    def pause(self, types: set[str], everything: bool) -> None:
        """Hold back these types (exact ones or globs such as `file_embed_*`), or `everything`."""
        self.paused, self.all_paused = frozenset(types), everything
        self._paused_globs = tuple(t for t in types if is_glob(t))

    def excluded_types(self) -> list[str]:
        """Types (and globs of types) that may not start another task now."""
        full = {t for t, limit in self._limits.items() if self._running[t] >= limit}
        return sorted(full | self.paused | self._held.keys())

    def limited(self, task_type: str) -> bool:
        return (
            task_type in self._limits
            or task_type in self.paused
            or task_type in self._held
            # Asked for each task a lease takes: the globs are only looked through if there are any.
            or bool(self._paused_globs and type_matches(task_type, self._paused_globs))
            or bool(self._held_globs and type_matches(task_type, self._held_globs))
        )

    def hold(self, task_type: str) -> None:
        """Start no task of this type (or, for a glob, of the types it matches) until as many
        `release` calls."""
        self._held[task_type] += 1
        self._find_held_globs()

    def release(self, task_type: str) -> None:
        self._held[task_type] -= 1
        if self._held[task_type] <= 0:
            del self._held[task_type]
            self._find_held_globs()

    def _find_held_globs(self) -> None:
        self._held_globs = tuple(t for t in self._held if is_glob(t))

    def started(self, task_type: str) -> None:
        self._running[task_type] += 1

    def finished(self, task_type: str) -> None:
        if self._running[task_type] <= 1:
            del self._running[task_type]
        else:
            self._running[task_type] -= 1

    def running(self, task_type: str) -> int:
        return self._running[task_type]

    def snapshot(self) -> Counter[str]:
        """The counts of running tasks, to `restore` if what changed them does not take place."""
        return self._running.copy()

    def restore(self, snapshot: Counter[str]) -> None:
        self._running = snapshot.copy()
