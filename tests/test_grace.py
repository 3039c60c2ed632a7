"""The grace period between SIGTERM and SIGKILL: who it spares, how long it lasts, and a cancel that a
daemon stop or kill -9 overtakes. Durations are compared by order only: what a handler managed to
write, by its own clock, before the SIGKILL came."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from support import dead

from msearchd.client import Client
from msearchd.errors import MsearchError
from msearchd.store import Store


class Cancel(threading.Thread):
    """`cancel --running` of one task from a thread of its own: it answers only once the task ended."""

    def __init__(self, daemon: Any, task_id: str) -> None:
        super().__init__(daemon=True)
        self.socket, self.task_id = daemon.socket, task_id
        self.answer: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            with Client(self.socket) as c:
                self.answer = c.cancel(self.task_id, running=True)
        except BaseException as exc:
            self.error = exc

    def result(self, timeout: float = 60.0) -> Any:
        self.join(timeout)
        assert not self.is_alive(), f"the cancel of {self.task_id} did not answer within {timeout} s"
        if self.error is not None:
            raise self.error
        return self.answer


@pytest.mark.parametrize(("cooperative", "stop_reason"), [(True, "cooperative"), (False, "sigterm")])
def test_a_handler_that_cleans_up_within_the_grace_period_is_spared(
    make_daemon, fifo, tmp_path, cooperative, stop_reason
):
    d = make_daemon(workers=1, grace=60)
    started = fifo("started")
    done = tmp_path / "done"
    # Its clean-up takes a second by its own clock, well inside the grace period.
    data = {"started": str(started), "cleanup": 1.0, "done": str(done), "cooperative": cooperative}
    with d.client() as c:
        task = c.submit("tidy", data)
        started.read()
        answer = c.cancel(task["id"], running=True)
        assert answer["task"]["stop_reason"] == stop_reason
        assert done.read_text() == "cleaned up\n"  # written before the answer: it was not killed
        assert c.get(task["id"])["status"] == "cancelled"


@pytest.mark.parametrize(
    ("grace", "settings", "marks", "reached"),
    [
        # The flag wins over the file: alive 1 s after the cancel, killed well before 30 s.
        (2.0, "grace = 0.2\n", [1, 30], ["1"]),
        # The file's grace when no flag is given: killed before the 2 s mark.
        (None, "grace = 0.3\n", [2], []),
        # Neither: the default of 5 s. Alive after 1 s and 3.5 s, killed before 30 s.
        (None, "", [1, 3.5, 30], ["1", "3.5"]),
    ],
    ids=["flag", "config-file", "default"],
)
def test_a_handler_that_ignores_sigterm_is_killed_when_the_grace_period_ends(
    make_daemon, fifo, tmp_path, grace, settings, marks, reached
):
    d = make_daemon(workers=1, grace=grace, settings=settings)
    started = fifo("started")
    record = tmp_path / "marks"
    record.touch()
    with d.client() as c:
        task = c.submit("dawdler", {"started": str(started), "marks": marks, "record": str(record)})
        started.read()
        answer = Cancel(d, task["id"]).result(timeout=90)
    assert answer["task"]["stop_reason"] == "killed"
    assert record.read_text().split() == reached


def cancel_under_way(d: Any, fifo: Any, done: Path) -> tuple[str, int, Cancel, Any]:
    """A `tidy` task whose cancel has reached it and waits for its clean-up, which waits for a line on
    the gate returned; also returns its id, its worker's pid and the cancel."""
    started, told, gate = fifo("started"), fifo("told"), fifo("gate")
    data = {"started": str(started), "told": str(told), "gate": str(gate), "done": str(done)}
    with d.client() as c:
        task = c.submit("tidy", {**data, "cooperative": True}, priority=0)
        started.read()
        pid = c.get(task["id"])["worker_pid"]
    cancel = Cancel(d, task["id"])
    told.read()
    return task["id"], pid, cancel, gate


def stored(d: Any, task_id: str) -> Any:
    store = Store(d.state_dir / "tasks.db")
    try:
        return store.get(int(task_id.removeprefix("task_")))
    finally:
        store.close()


def test_a_cancel_under_way_when_the_daemon_stops_ends_cancelled(make_daemon, fifo, tmp_path):
    d = make_daemon(workers=1, grace=60)
    done = tmp_path / "done"
    task_id, pid, cancel, gate = cancel_under_way(d, fifo, done)
    assert d.proc is not None
    d.proc.terminate()
    d.wait_for_log("stopping: running tasks go back to pending")
    gate.write()  # the clean-up ends, and with it the task
    assert d.proc.wait(timeout=60) == 0
    assert dead(pid) and done.exists()
    try:
        answer = cancel.result()
    except MsearchError:  # the daemon may close the connection before it answers: it stops
        answer = None
    if answer is not None:
        assert answer["task"]["status"] == "cancelled"
    saved = stored(d, task_id)
    assert saved is not None
    assert str(saved.status) == "cancelled"  # not back to pending
    d.start()
    with d.client() as c:
        again = c.get(task_id)
        assert (again["status"], again["attempts"]) == ("cancelled", 1)


def test_a_cancel_overtaken_by_a_daemon_stop_keeps_its_honest_stop_reason(make_daemon, fifo, tmp_path):
    d = make_daemon(workers=1, grace=60)
    task_id, _, cancel, gate = cancel_under_way(d, fifo, tmp_path / "done")
    assert d.proc is not None
    d.proc.terminate()
    d.wait_for_log("stopping: running tasks go back to pending")
    gate.write()
    assert d.proc.wait(timeout=60) == 0
    cancel.join(60)
    saved = stored(d, task_id)
    assert saved is not None and str(saved.stop_reason) == "cooperative"  # its handler returned by itself


def test_a_cancel_under_way_when_the_daemon_is_killed_ends_cancelled_at_restart(make_daemon, fifo, tmp_path):
    d = make_daemon(workers=1, grace=60)
    done = tmp_path / "done"
    task_id, pid, cancel, _ = cancel_under_way(d, fifo, done)
    d.kill9()
    with pytest.raises(MsearchError):
        cancel.result()  # its connection died with the daemon
    d.start()
    assert task_id in d.wait_for_log("its cancel was under way when the daemon stopped; now cancelled")
    assert dead(pid) and not done.exists()
    with d.client() as c:
        after = c.get(task_id)
        assert (after["status"], after["stop_reason"], after["attempts"]) == ("cancelled", "killed", 1)
        assert [e["event"] for e in c.history(task_id)][-2:] == ["cancel_requested", "cancelled"]


def test_a_daemon_stop_spares_a_handler_that_cleans_up_within_the_grace_period(make_daemon, fifo, tmp_path):
    """A daemon stop ends running tasks as a cancel does, then puts them back in the queue."""
    d = make_daemon(workers=1, grace=60)
    started = fifo("started")
    done = tmp_path / "done"
    with d.client() as c:
        task = c.submit("tidy", {"started": str(started), "cleanup": 1.0, "done": str(done)})
    started.read()
    assert d.stop() == 0
    assert done.read_text() == "cleaned up\n"
    saved = stored(d, task["id"])
    assert saved is not None and (str(saved.status), saved.attempts) == ("pending", 1)
