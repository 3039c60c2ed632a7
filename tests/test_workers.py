"""The worker pool's bookkeeping of leases, fed what a worker sends or how it ends (no workers run)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from msearchd import protocol
from msearchd.errors import ProtocolError
from msearchd.lease import LeaseWord, Phase
from msearchd.model import Task, TaskStatus
from msearchd.workers import NOT_STARTED, Outcome, Reaper, WorkerPool, WorkerProcess, describe_exit
from msearchd.workers.channel import _Reports


class Listener:
    def __init__(self) -> None:
        self.returned: list[list[int]] = []
        self.finished: list[tuple[int, Outcome]] = []

    def worker_idle(self) -> None:
        pass

    def task_progress(self, task: Task, progress: float | None, operation: str | None) -> None:
        pass

    def task_finished(self, task: Task, outcome: Outcome) -> None:
        self.finished.append((task.id, outcome))

    def tasks_returned(self, tasks: list[Task]) -> None:
        self.returned.append([t.id for t in tasks])

    def follow_up(self, parent_id: int, params: dict[str, Any]) -> str:
        raise AssertionError("not expected")


def pool(tmp_path: Path) -> tuple[WorkerPool, Listener]:
    listener = Listener()
    return WorkerPool(0, tmp_path, tmp_path, {}, listener, Reaper()), listener


def worker(*entries: tuple[int, int]) -> Any:
    """A worker holding lease entries (seq, task id)."""
    lease = {n: (seq, Task(n, "quick", TaskStatus.RUNNING, 5)) for seq, n in entries}
    return SimpleNamespace(pid=1, lease=lease, stopping=False)


def dead_pid() -> int:
    """The pid of a process that has ended and been reaped: no process group carries it any more."""
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()
    return proc.pid


def test_a_skip_names_the_entry_it_is_about(tmp_path):
    """Task 5 was entry 2 of a lease that overran: it went back to the queue and was leased to the
    same worker again as entry 4. The worker's late word that it skipped entry 2 must not take
    entry 4 away (the task would run there, and be queued to run once more)."""
    p, listener = pool(tmp_path)
    w = worker((4, 5))
    p._on_message(w, {"op": "skipped", "id": "task_5", "seq": 2})
    assert listener.returned == []
    assert w.lease[5][0] == 4
    p._on_message(w, {"op": "skipped", "id": "task_5", "seq": 4})
    assert listener.returned == [[5]]
    assert w.lease == {}


def test_a_skip_during_a_stop_of_the_task_ends_it_there(tmp_path):
    """A cancel of task 7 is under way when the worker says it passed it: the cancel ends it as not
    started; it does not go back to the queue."""

    async def scenario() -> Outcome:
        p, listener = pool(tmp_path)
        w = worker((3, 7))
        loop = asyncio.get_running_loop()
        p._terminating[7] = loop.create_future()
        report = p._reports[7] = loop.create_future()
        p._on_message(w, {"op": "skipped", "id": "task_7", "seq": 3})
        assert listener.returned == [] and w.lease == {}
        return await report

    assert asyncio.run(scenario()) is NOT_STARTED


def test_an_exit_by_any_signal_is_described(tmp_path):
    assert describe_exit(signal.SIGKILL) == "killed by SIGKILL"  # a wait status: terminated by 9
    assert describe_exit(signal.SIGRTMIN + 6) == f"killed by signal {signal.SIGRTMIN + 6}"
    assert describe_exit(3 << 8) == "exited with code 3"


def test_a_worker_that_dies_settles_what_stops_of_its_tasks_wait_for(tmp_path):
    """A cancel waits on a report for each of these tasks: the worker's death must answer all of
    them, except the one a stop killed it over (that stop says how it ended)."""

    async def scenario(stopping: bool) -> list[Outcome | None]:
        p, _ = pool(tmp_path)
        p._closing = True  # no replacement worker in this test
        word = LeaseWord.create()
        word.write(3, Phase.RUNNING)
        w = WorkerProcess(
            pid=dead_pid(), proc=SimpleNamespace(returncode=None), exited=None, word=word, stopping=stopping
        )
        w.lease = {n: (seq, Task(n, "quick", TaskStatus.RUNNING, 5)) for seq, n in ((2, 8), (3, 9), (4, 10))}
        loop = asyncio.get_running_loop()
        reports = {n: loop.create_future() for n in (8, 9, 10)}
        p._reports.update(reports)
        p._on_exit(w, signal.SIGKILL)  # a wait status: killed by SIGKILL
        return [reports[n].result() if reports[n].done() else None for n in (8, 9, 10)]

    ran, running, waiting = asyncio.run(scenario(stopping=False))
    assert ran == Outcome(
        TaskStatus.FAILED, error="worker killed by SIGKILL before reporting how this task ended"
    )
    assert running == Outcome(TaskStatus.FAILED, error="worker killed by SIGKILL")
    assert waiting is NOT_STARTED
    ran, running, waiting = asyncio.run(scenario(stopping=True))
    assert running is None and waiting is NOT_STARTED


async def read_reports(*chunks: bytes) -> tuple[list[dict[str, Any]], Exception | None]:
    """What the daemon's side of a worker channel handles of `chunks`, read one by one, and how the
    channel ended once the worker closed it after them."""
    handled: list[dict[str, Any]] = []
    reports = _Reports(handled.append)
    for chunk in chunks:
        reports.data_received(chunk)
    reports.eof_received()
    reports.connection_lost(None)
    return handled, await reports.ended


def test_reports_are_handled_in_order_however_they_are_cut():
    first, second = protocol.encode({"op": "ready", "pid": 7}), protocol.encode({"op": "done", "results": []})
    both = first + second
    handled, ended = asyncio.run(read_reports(both[:3], both[3:20], both[20:]))
    assert handled == [{"op": "ready", "pid": 7}, {"op": "done", "results": []}]
    assert ended is None


def test_a_channel_cut_inside_a_report_or_carrying_a_bad_frame_ends_broken():
    frame = protocol.encode({"op": "ready", "pid": 7})
    handled, ended = asyncio.run(read_reports(frame + frame[:6]))
    assert handled == [{"op": "ready", "pid": 7}]
    assert isinstance(ended, ProtocolError) and "inside a frame" in str(ended)
    after = protocol.encode({"op": "done", "results": []})
    handled, ended = asyncio.run(read_reports(frame, b"\xff\xff\xff\xff" + after))
    assert handled == [{"op": "ready", "pid": 7}]  # nothing after the bad frame is taken for a report
    assert isinstance(ended, ProtocolError) and "exceeds" in str(ended)
