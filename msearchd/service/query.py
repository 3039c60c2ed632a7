"""Questions about tasks and the daemon: get, list, count, stats, status, history, dependents, read_log."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from msearchd import __version__
from msearchd.errors import InvalidArgument
from msearchd.model import (
    INT_MAX,
    TERMINAL,
    TaskStatus,
    format_task_id,
    validate_type,
)
from msearchd.protocol import MAX_FRAME, PROTOCOL_VERSION

LIST_LIMIT_MAX = 10_000
LIST_ORDERS = ("oldest", "newest")
# A command's log is read this much at a time: a page following it asks again for the rest.
LOG_CHUNK = 256 * 1024

if TYPE_CHECKING:
    from msearchd.service.core import ServiceCore
else:
    ServiceCore = object  # TaskService puts the real one last among its bases


def type_filter(value: object) -> str | None:
    """A type to filter by: none, or a valid name (a typo'd name would match nothing, silently)."""
    return None if value is None else validate_type(value)


class Querying(ServiceCore):
    """The query operations of `TaskService`."""

    def get(self, task_id: Any) -> dict[str, Any]:
        return self.wire(self._require(task_id))

    @staticmethod
    def _statuses(status: str | list[Any] | None) -> list[str] | None:
        if status is None:
            return None
        values = status.split(",") if isinstance(status, str) else status
        out = []
        for value in values:
            try:
                out.append(str(TaskStatus(str(value).strip())))
            except ValueError:
                names = ", ".join(s.value for s in TaskStatus)
                raise InvalidArgument(f"unknown status {value!r}; one of: {names}") from None
        return out

    def list_tasks(
        self,
        status: str | list[Any] | None = None,
        type: str | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "oldest",
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise InvalidArgument(f"limit must be from 1 to {LIST_LIMIT_MAX}, got {limit}")
        if not 0 <= offset <= INT_MAX:
            raise InvalidArgument(f"offset must be from 0 to {INT_MAX}, got {offset}")
        if order not in LIST_ORDERS:
            raise InvalidArgument(f"order must be one of {', '.join(LIST_ORDERS)}, got {order!r}")
        newest = order == "newest"
        # Tasks with more data than one answer carries are not read out whole: the answer is refused.
        tasks = self.store.list(
            self._statuses(status), type_filter(type), limit, offset, newest, max_bytes=MAX_FRAME
        )
        return [self.wire(t) for t in tasks]

    def count(self, status: str | list[Any] | None = None, type: str | None = None) -> int:
        return self.store.count(self._statuses(status), type_filter(type))

    def _workers(self) -> dict[str, int]:
        pool = self.pool
        return {"busy": pool.busy_count if pool else 0, "total": pool.size if pool else 0}

    def stats(self) -> dict[str, Any]:
        by_status = {s.value: 0 for s in TaskStatus}
        by_type: dict[str, dict[str, int]] = {}
        for task_type, status, n in self.store.counts():
            by_status[status] += n
            by_type.setdefault(task_type, {})[status] = n
        running = [
            {k: w[k] for k in ("id", "type", "progress", "current_operation", "started_at")}
            for w in map(self.wire, self.store.running())
        ]
        answer = {
            "total": sum(by_status.values()),
            "by_status": by_status,
            "by_type": by_type,
            "workers": self._workers(),
            "running": running,
            "paused": [t for t, *_ in self.store.pauses()],
        }
        if self.store.shared:
            answer["daemons"] = self.store.daemons()
        return answer

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime": self.clock() - self.started_at,
            "socket": str(self.settings.socket_path),
            "state_dir": str(self.settings.state_dir),
            "workers": self._workers(),
            "pending": self.store.count([TaskStatus.PENDING.value]),
        }

    def history(self, task_id: Any) -> list[dict[str, Any]]:
        """What happened to a task, oldest first: its lifecycle, and every request about it and by whom."""
        task = self._require(task_id)
        recorded = self.store.events(task.id)
        changes = [e["old"] for e in recorded if e["event"] == "priority_changed"]
        first: dict[str, Any] = {
            "time": task.created_at,
            "event": "submitted",
            "priority": changes[0] if changes else task.priority,
        }
        if task.retry_of is not None:
            first["retry_of"] = format_task_id(task.retry_of)
        uid, pid = self.store.submitter(task.id)
        if uid is not None:
            first.update(uid=uid, pid=pid)
        entries = [first, *recorded]
        if task.started_at is not None:
            entries.append(
                {
                    "time": task.started_at,
                    "event": "started",
                    "attempt": task.attempts,
                    "worker_pid": task.worker_pid,
                }
            )
        if task.finished_at is not None:
            end: dict[str, Any] = {"time": task.finished_at, "event": str(task.status)}
            if task.stop_reason:
                end["stop_reason"] = str(task.stop_reason)
            if task.error:
                end["error"] = task.error
            entries.append(end)
        return sorted(entries, key=lambda e: e["time"])

    def dependents(self, task_id: Any) -> list[str]:
        """Every task that depends on this one, whatever its state: the other way of `depends_on`."""
        task = self._require(task_id)
        return [format_task_id(i) for i in self.store.dependents(task.id, [str(s) for s in TaskStatus])]

    def read_log(self, task_id: Any, offset: int = 0) -> dict[str, Any]:
        """A piece of a command task's log from `offset`, for a reader following it as it grows; the
        reader may be on another machine than the daemon, so the log travels in answers, not paths."""
        task = self._require(task_id)
        if offset < 0:
            raise InvalidArgument(f"offset must be zero or more, got {offset}")
        raw = b""
        size = 0
        with contextlib.suppress(FileNotFoundError), open(self.log_path(task.id), "rb") as log_file:
            size = os.fstat(log_file.fileno()).st_size
            offset = min(offset, size)
            log_file.seek(offset)
            raw = log_file.read(LOG_CHUNK)
        # Stop before a character cut at the chunk's end; the next read starts with it.
        keep = len(raw)
        for back in range(1, min(4, len(raw)) + 1):
            lead = raw[-back]
            if lead & 0xC0 != 0x80:  # the last character's first byte
                need = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4
                if need > back and (offset + len(raw) < size or task.status not in TERMINAL):
                    keep = len(raw) - back
                break
        return {
            "task_id": format_task_id(task.id),
            "text": raw[:keep].decode("utf-8", errors="replace"),
            "offset": offset + keep,
            "size": size,
            "status": str(task.status),
        }
