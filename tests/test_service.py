"""TaskService in process, where a failure of the disk can be staged: nothing a failed write was
about may be lost."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from msearchd.config import Settings
from msearchd.model import TaskStatus
from msearchd.service import TaskService
from msearchd.store import Store
from msearchd.workers import Outcome


def test_outcomes_survive_a_write_that_failed(tmp_path: Path, monkeypatch):
    store = Store(tmp_path / "tasks.db")
    settings = Settings(state_dir=tmp_path, type_limits={"quick": 1})
    service = TaskService(store, settings)

    async def scenario() -> None:
        ref = service.submit("quick")["id"]
        task = store.claim_next([], 1.0, 4242)  # as the dispatcher hands it to a worker
        assert task is not None and task.status is TaskStatus.RUNNING
        service.scheduler.started(task.type)  # the limit of its type is reached
        service.task_progress(task, 0.5, "halfway")
        service.task_finished(task, Outcome(TaskStatus.COMPLETED, started_at=1.0, finished_at=2.0))

        full = sqlite3.OperationalError("database or disk is full")

        def no_space(*args: object) -> None:
            raise full

        with monkeypatch.context() as m:
            m.setattr(store, "complete_many", no_space)
            try:
                service._dispatch_ready()
            except sqlite3.OperationalError as exc:
                assert exc is full
            else:
                raise AssertionError("the failed write went unnoticed")
        assert service.get(ref)["status"] == "running"
        assert service.scheduler.running("quick") == 1  # still counted: it did not finish, on disk
        service._dispatch_ready()  # the disk has room again: the outcome is recorded this time
        done = service.get(ref)
        assert (done["status"], done["progress"], done["current_operation"]) == ("completed", 1.0, "halfway")
        assert service.scheduler.running("quick") == 0

    asyncio.run(scenario())
    store.close()
