"""Queue order and priorities, through the Python client and a real daemon."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from support import wait_started

from msearchd.errors import InvalidArgument, InvalidState, NotFound, Unavailable


def gate_task(client, fifo):
    """A command that holds the only worker until the test writes to the pipe."""
    task = client.submit("command", {"argv": ["sh", "-c", f"read line < {fifo}"]}, priority=0)
    wait_started(client, task["id"])
    return task


def recorder(client, out: Path, name: str, priority: int | None):
    return client.submit("command", {"argv": ["sh", "-c", f"echo {name} >> {out}"]}, priority=priority)


@pytest.mark.parametrize("workers", [1])
def test_lower_priority_runs_first_and_fifo_within_a_priority(make_daemon, fifo, tmp_path, workers):
    d = make_daemon(workers=workers)
    out = tmp_path / "order.txt"
    gate = fifo("gate")
    with d.client() as c:
        held = gate_task(c, gate)
        plan = [("a9", 9), ("b3", 3), ("c9", 9), ("d0", 0), ("e3", 3), ("f11", 11), ("g0", 0)]
        ids = [recorder(c, out, name, p)["id"] for name, p in plan]
        gate.write()
        result = c.wait([held["id"], *ids], timeout=30)
        assert not result["timed_out"]
        assert {t["status"] for t in result["tasks"]} == {"completed"}
    assert out.read_text().split() == ["d0", "g0", "b3", "e3", "a9", "c9", "f11"]


def test_priority_change_reorders_the_queue(make_daemon, fifo, tmp_path):
    d = make_daemon(workers=1)
    out = tmp_path / "order.txt"
    gate = fifo("gate")
    with d.client() as c:
        held = gate_task(c, gate)
        first = recorder(c, out, "first", 5)
        last = recorder(c, out, "last", 5)
        changed = c.set_priority(last["id"], 1)
        assert changed["priority"] == 1
        assert c.get(last["id"])["priority"] == 1
        gate.write()
        c.wait([held["id"], first["id"], last["id"]], timeout=30)
    assert out.read_text().split() == ["last", "first"]


def test_default_priorities_follow_the_type(client):
    expected = {
        "file_embed_video": 3,
        "file_embed_image": 3,
        "image_preprocess": 7,
        "video_preprocess": 7,
        "thumbnail_generate": 9,
        "preview_generate": 10,
        "file_scan": 6,
    }
    for task_type, priority in expected.items():
        task = client.submit(task_type, {})
        assert task["priority"] == priority, task_type
    assert client.submit("command", {"argv": ["true"]})["priority"] == 6


def test_configured_default_priority_wins(make_daemon):
    d = make_daemon(config_extra='\n[priorities]\nthumbnail_generate = 2\n"file_embed_*" = 5\n')
    with d.client() as c:
        assert c.submit("thumbnail_generate")["priority"] == 2
        assert c.submit("file_embed_audio")["priority"] == 5
        assert c.submit("image_preprocess")["priority"] == 7


@pytest.mark.parametrize("bad", [-1, 12, 100])
def test_out_of_range_priority_is_refused(client, bad):
    with pytest.raises(InvalidArgument, match="0 to 11"):
        client.submit("command", {"argv": ["true"]}, priority=bad)
    task = client.submit("file_scan")
    with pytest.raises(InvalidArgument, match="0 to 11"):
        client.set_priority(task["id"], bad)
    assert client.get(task["id"])["priority"] == 6


def test_priority_of_unknown_or_finished_task_is_refused(client):
    with pytest.raises(NotFound, match="task_999 does not exist"):
        client.set_priority("task_999", 1)
    done = client.submit("command", {"argv": ["true"]})
    client.wait([done["id"]], timeout=20)
    with pytest.raises(InvalidState, match="only a pending or blocked"):
        client.set_priority(done["id"], 1)


def test_bare_numbers_and_task_ids_name_the_same_task(client):
    task = client.submit("file_scan", {"path": "/srv/photos"})
    number = int(task["id"].removeprefix("task_"))
    assert client.get(number)["id"] == task["id"]
    assert client.get(str(number))["data"] == {"path": "/srv/photos"}
    with pytest.raises(InvalidArgument, match="expected task_<n> or <n>"):
        client.get("task_x")


def test_type_limit_lets_other_types_pass(make_daemon, fifo):
    # "heavy" runs commands under another type name (see conftest), limited to one at a time.
    d = make_daemon(workers=2, config_extra="\n[type_limits]\nheavy = 1\n")
    gate = fifo("gate")
    with d.client() as c:
        first = c.submit("heavy", {"argv": ["sh", "-c", f"read line < {gate}"]}, priority=0)
        c.wait([first["id"]], statuses=["running"], timeout=20)
        second = c.submit("heavy", {"argv": ["true"]}, priority=0)
        other = c.submit("command", {"argv": ["true"]}, priority=5)
        assert c.wait([other["id"]], timeout=20)["tasks"][0]["status"] == "completed"
        assert c.get(second["id"])["status"] == "pending"
        gate.write()
        assert c.wait([first["id"], second["id"]], timeout=20)["timed_out"] is False


def test_a_task_of_a_lease_is_seen_to_end_while_the_next_one_still_runs(make_daemon, fifo):
    """Short tasks go to a worker together and their ends are reported together, but never held
    back for long by a task after them that turns out to be slow."""
    with make_daemon(workers=1).client() as c:
        for _ in range(5):  # quick tasks are short: they go out several at a time from now on
            c.wait([c.submit("quick")["id"]], timeout=20)
        gate, hold = fifo("gate"), fifo("hold")
        c.submit("stepper", {"fifo": str(gate), "steps": 1}, priority=0)
        first = c.submit("quick")
        slow = c.submit("quick", {"fifo": str(hold)})
        gate.write()  # the worker now gets both, in one lease
        ended = c.wait([first["id"]], timeout=10)
        assert not ended["timed_out"] and ended["tasks"][0]["status"] == "completed"
        assert c.get(slow["id"])["status"] == "running"
        hold.write()
        assert c.wait([slow["id"]], timeout=20)["tasks"][0]["status"] == "completed"


def test_tasks_stuck_behind_a_slow_one_of_their_lease_go_to_a_free_worker(make_daemon, fifo):
    """A lease is sized by how long its tasks usually take. When one of them runs far longer, those
    after it go back to the queue instead of waiting for it, and the idle worker runs them."""
    d = make_daemon(workers=2)
    with d.client() as c, c.events(types=["quick"]) as stream:
        for _ in range(5):  # quick tasks are short: they go out several at a time from now on
            c.wait([c.submit("quick")["id"]], timeout=20)
        hold = fifo("hold")
        slow_one = {"type": "quick", "data": {"fifo": str(hold)}, "priority": 0}
        slow, *after = c.submit_many([slow_one, *[{"type": "quick", "priority": 0}] * 3])["task_ids"]
        d.wait_for_log("3 task(s) after it go back to the queue")  # all four went to one worker
        done = c.wait(after, timeout=20)
        assert not done["timed_out"]
        assert {(t["status"], t["attempts"]) for t in done["tasks"]} == {("completed", 1)}
        assert {t["worker_pid"] for t in done["tasks"]} != {c.get(slow)["worker_pid"]}
        assert c.get(slow)["status"] == "running"
        # Watchers were told each went back to the queue between its two starts.
        seen: dict[str, list[tuple[str, str]]] = {task_id: [] for task_id in after}
        while any(steps[-1:] != [("completed", "completed")] for steps in seen.values()):
            assert stream.ready(timeout=20), f"events stopped: {seen}"
            event = next(stream)
            if event.get("task_id") in seen:
                seen[event["task_id"]].append((event["event"], event["status"]))
        for steps in seen.values():
            assert steps[-4:] == [
                ("started", "running"),
                ("requeued", "pending"),
                ("started", "running"),
                ("completed", "completed"),
            ]
        hold.write()
        assert c.wait([slow], timeout=20)["tasks"][0]["status"] == "completed"


def test_hundreds_of_short_commands_all_complete(make_daemon):
    """A soak of leases, batched reports and the report timer: every task ends, each run once."""
    with make_daemon(workers=1).client() as c:
        ids = c.submit_many([{"type": "command", "data": {"argv": ["true"]}}] * 400)["task_ids"]
        done = c.wait(ids, timeout=120)
        assert not done["timed_out"]
        assert {(t["status"], t["attempts"]) for t in done["tasks"]} == {("completed", 1)}


def test_a_database_locked_by_another_process_refuses_writes_and_answers_reads(daemon, fifo):
    with daemon.client() as c:
        gate = c.submit("command", {"argv": ["sh", "-c", f"read line < {fifo('gate')}"]})
        kept = c.submit("noop", priority=11, depends_on=[gate["id"]])  # blocked: no worker takes it
        other = sqlite3.connect(daemon.state_dir / "tasks.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # as sqlite3 run by hand would
        try:
            with pytest.raises(Unavailable, match="is locked by another process"):
                c.submit("file_scan")
            with pytest.raises(Unavailable, match="is locked by another process"):
                c.set_priority(kept["id"], 3)
            with c.pipeline() as p:
                p.submit("file_scan")
                p.submit("file_scan")
                p.status()
            assert [type(r) for r in p.results[:2]] == [Unavailable, Unavailable]
            assert p.results[2]["pid"] == daemon.proc.pid  # the connection goes on, reads are answered
            assert c.get(kept["id"])["priority"] == 11
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert c.submit("file_scan")["status"] == "pending"
        assert c.set_priority(kept["id"], 3)["priority"] == 3
