"""Retention: finished tasks go after a while, with their history and logs; a running task's log is capped.

Both run in the background on the daemon's loop, their file and long reads on threads, their deletions a
bounded chunk per transaction, so that clients are answered in between.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from msearchd.config import Settings
from msearchd.errors import MsearchError
from msearchd.store import TaskStore

log = logging.getLogger("msearchd.retention")

# Finished tasks are looked over at start, then this often.
PRUNE_INTERVAL = 3600.0
# Tasks removed per transaction: with their dependencies and events, a few ms of the loop.
PRUNE_CHUNK = 500
# How often the logs of running tasks are measured: a log grows at most what its command writes in
# this time beyond the cap.
LOG_CHECK_INTERVAL = 2.0
MIB = 1024 * 1024


def cap_log(path: str, limit: int) -> int:
    """Cut the log at `path` to its last `limit // 2` bytes if it holds more than `limit`, behind a line
    that says so; returns how many bytes were dropped.

    The command appends to the log (O_APPEND) while this runs, so the file is cut in place: output
    written in the instant between the read of its tail and the cut is lost with the head.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:  # not there (yet), or not a file of ours
        return 0
    try:
        size = os.fstat(fd).st_size
        if size <= limit:
            return 0
        keep = limit // 2
        tail = os.pread(fd, keep, size - keep)
        dropped = size - len(tail)
        note = f"[msearchd: {dropped} bytes of earlier output dropped; logs keep at most {limit} bytes]\n"
        head = note.encode()
        os.pwrite(fd, head + tail, 0)
        os.ftruncate(fd, len(head) + len(tail))
        return dropped
    finally:
        os.close(fd)


def remove_logs(paths: list[str]) -> None:
    for path in paths:
        try:
            Path(path).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the log %s: %s", path, exc.strerror)


class Retention:
    """Keeps the store and the log folder from growing for ever."""

    def __init__(
        self,
        store: TaskStore,
        settings: Settings,
        log_path: Callable[[int], str],
        running: Callable[[], list[int]],
        keep_events: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.log_path = log_path
        self.running = running  # ids of the running tasks
        self.keep_events = keep_events  # requests about many tasks that stand for work under way
        self.clock = clock

    async def run_pruner(self) -> None:
        """Remove finished tasks past the bounds: at start, then every PRUNE_INTERVAL."""
        if not (self.settings.keep_days or self.settings.keep_tasks):
            return
        while True:
            try:
                removed = await self.prune()
                if removed:
                    log.info("removed %d finished task(s) past the retention bounds", removed)
            except MsearchError as exc:  # the database is locked by another process, say
                log.warning("retention skipped this time: %s", exc.message)
            await asyncio.sleep(PRUNE_INTERVAL)

    async def prune(self) -> int:
        """Remove, a chunk at a time, the finished tasks past the bounds; returns how many."""
        days, keep = self.settings.keep_days, self.settings.keep_tasks
        total = 0
        while True:
            before = self.clock() - days * 86400 if days else float("-inf")
            ids = await asyncio.to_thread(self.store.prunable, before, keep or -1, PRUNE_CHUNK)
            if not ids:
                await self._prune_bulk_requests(before)
                return total
            with self.store.transaction():
                removed = self.store.prune(ids)
            total += len(removed)
            await asyncio.to_thread(remove_logs, [self.log_path(i) for i in removed])
            if not removed:  # all of them changed meanwhile: look again later
                return total

    async def _prune_bulk_requests(self, before: float) -> None:
        """Remove the records of old requests about many tasks once none of those tasks is left; the
        marks of fan-outs under way stay."""
        stale = await asyncio.to_thread(self.store.stale_bulk_requests, before, self.keep_events)
        for start in range(0, len(stale), PRUNE_CHUNK):
            with self.store.transaction():
                self.store.delete_events(stale[start : start + PRUNE_CHUNK])
            await asyncio.sleep(0)

    async def run_log_cap(self) -> None:
        """Cut the logs of running tasks that outgrow the cap."""
        limit = int(self.settings.log_max_mib * MIB)
        if limit <= 0:
            return
        while True:
            await asyncio.sleep(LOG_CHECK_INTERVAL)
            paths = [self.log_path(i) for i in self.running()]
            if paths:
                await asyncio.to_thread(self._cap_all, paths, limit)

    @staticmethod
    def _cap_all(paths: list[str], limit: int) -> None:
        for path in paths:
            dropped = cap_log(path, limit)
            if dropped:
                log.info("%s: dropped %d bytes of earlier output (log_max_mib)", path, dropped)
