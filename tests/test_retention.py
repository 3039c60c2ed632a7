"""Retention: finished tasks past the bounds go with their history and logs, never one that something
unfinished still needs; a running command's log is capped."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support import until as wait_until
from support import wait_started

from msearchd import config
from msearchd.errors import InvalidArgument, NotFound
from msearchd.model import TaskStatus, format_task_id
from msearchd.retention import cap_log
from msearchd.store import Store

DAY = 86400.0
DEADLINE = 30.0


def until(condition, what: str) -> None:
    wait_until(condition, what, DEADLINE, pause_s=0.05)  # a file the daemon changes in the background


def add(store: Store, status: TaskStatus, finished_at: float | None = None, **extra) -> int:
    """A task in `status`, as a daemon would have left it."""
    task_id = store.insert(
        task_type="file_scan", data={}, priority=6, status=TaskStatus.PENDING, created_at=1.0, **extra
    )
    if status is not TaskStatus.PENDING:
        store.update(task_id, status=status, finished_at=finished_at)
    return task_id


def seeded(make_daemon, settings: str = ""):
    daemon = make_daemon(settings=settings, start=False)
    daemon.state_dir.mkdir(parents=True)
    (daemon.state_dir / "logs").mkdir()
    return daemon, Store(daemon.state_dir / "tasks.db")


def gone(c, task_id: int) -> bool:
    try:
        c.get(task_id)
    except NotFound:
        return True
    return False


def test_finished_tasks_older_than_the_bound_go_unless_something_unfinished_needs_them(make_daemon):
    daemon, store = seeded(make_daemon)
    old = time.time() - 40 * DAY
    done = add(store, TaskStatus.COMPLETED, old)
    cancelled = add(store, TaskStatus.PENDING)
    store.add_events([(cancelled, old, "cancel_requested", {"by": "cancel"}, 0, 1)])
    # A cancel-all of long ago: one row, which the tasks it cancelled point at.
    request = store.add_bulk_request(old, "cancel_requested", {"by": "cancel-all"}, 0, 1)
    assert store.cancel_for_request([cancelled], old, request) == [cancelled]
    failed = add(store, TaskStatus.FAILED, old)
    holder = add(store, TaskStatus.BLOCKED)  # nothing unblocks it: the tasks below stay unfinished
    retry = add(store, TaskStatus.BLOCKED, retry_of=failed, depends_on=[holder])
    store.update(failed, retried_as=retry)
    needed = add(store, TaskStatus.COMPLETED, old)
    waiting = add(store, TaskStatus.BLOCKED, depends_on=[needed, retry])
    recent = add(store, TaskStatus.COMPLETED, time.time() - DAY)
    store.close()
    log = daemon.state_dir / "logs" / f"{format_task_id(done)}.log"
    log.write_text("output\n")
    daemon.start()
    daemon.wait_for_log("removed 2 finished task(s) past the retention bounds")
    with daemon.client() as c:
        assert gone(c, done) and gone(c, cancelled)
        for kept in (failed, retry, needed, waiting, recent):
            assert c.get(kept)["id"] == format_task_id(kept)
        assert c.get(failed)["retried_as"] == format_task_id(retry)
    assert not log.exists()
    store = Store(daemon.state_dir / "tasks.db")
    try:
        assert store.events(cancelled) == []
        assert store.bulk_requests("cancel_requested") == []  # nothing points at it any more
    finally:
        store.close()


def test_at_most_keep_tasks_finished_tasks_are_kept_the_newest(make_daemon):
    daemon, store = seeded(make_daemon, settings="keep_tasks = 10\n")
    now = time.time()
    finished = [add(store, TaskStatus.COMPLETED, now) for _ in range(25)]
    unfinished = add(store, TaskStatus.BLOCKED)  # nothing unblocks it: it stays unfinished
    store.close()
    daemon.start()
    daemon.wait_for_log("removed 15 finished task(s)")
    with daemon.client() as c:
        assert [t["id"] for t in c.list(limit=100)] == [
            format_task_id(i) for i in [*finished[15:], unfinished]
        ]


def test_a_running_commands_log_is_cut_to_its_last_half_beyond_the_cap(make_daemon, fifo):
    daemon = make_daemon(settings="log_max_mib = 0.0625\n")  # 64 KiB
    gate = fifo()
    script = f"head -c 1048576 /dev/zero | tr '\\0' x; echo; echo END-MARK; read line < {gate}"
    with daemon.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", script]})
        wait_started(c, task["id"])
        log = Path(daemon.state_dir / "logs" / f"{task['id']}.log")
        # Not before the command wrote all of it: an empty log, just made, is small too.
        until(
            lambda: log.stat().st_size < 64 * 1024 and log.read_bytes().endswith(b"\nEND-MARK\n"),
            "the cut of the log",
        )
        text = log.read_text()
        assert text.startswith("[msearchd: ") and "bytes of earlier output dropped" in text.splitlines()[0]
        assert text.endswith("\nEND-MARK\n")
        gate.write("go")
        assert c.wait([task["id"]], timeout=DEADLINE)["tasks"][0]["status"] == "completed"


def test_cap_log_keeps_the_tail(tmp_path: Path):
    path = tmp_path / "task_1.log"
    path.write_bytes(b"a" * 1000 + b"b" * 1000)
    assert cap_log(str(path), 3000) == 0
    assert cap_log(str(path), 1000) == 1500
    text = path.read_bytes()
    assert text.endswith(b"\n" + b"b" * 500)
    assert text.startswith(b"[msearchd: 1500 bytes of earlier output dropped")


@pytest.mark.parametrize(
    ("setting", "value"), [("keep_days", "-1"), ("keep_tasks", "-5"), ("log_max_mib", "nan")]
)
def test_retention_settings_are_checked(tmp_path: Path, setting, value):
    path = tmp_path / "msearchd.toml"
    path.write_text(f"{setting} = {value}\n")
    with pytest.raises(InvalidArgument, match=f"{setting} must be zero or more"):
        config.load(path, {})
    path.write_text("keep_days = 7\nkeep_tasks = 0\nlog_max_mib = 1\n")
    loaded = config.load(path, {})
    assert (loaded.keep_days, loaded.keep_tasks, loaded.log_max_mib) == (7.0, 0, 1.0)
