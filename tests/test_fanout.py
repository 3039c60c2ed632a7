"""A task with tens of thousands of dependents: cancelling, completing or retrying it settles them in
chunks, answering other clients in between, and a stop in the middle loses none of it."""

from __future__ import annotations

import select

from support import until as wait_until
from support import wait_started
from test_wire import answer, frame, hello, raw

from msearchd.model import TaskStatus, format_task_id
from msearchd.store import Store

FAN = 40_000
DEADLINE = 120.0


def add_dependents(c, root: str, n: int = FAN) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 10_000):
        batch = [{"type": "file_scan", "depends_on": [root]} for _ in range(min(10_000, n - start))]
        ids += c.submit_many(batch)["task_ids"]
    return ids


def hold_worker(c) -> None:
    """Keep the only worker busy: nothing else starts."""
    held = c.submit("command", {"argv": ["sleep", "600"]}, priority=0)
    wait_started(c, held["id"])


def until(condition, what: str) -> None:
    wait_until(condition, what, DEADLINE)


def answered_midway(daemon, request: dict, started, last: str, unsettled) -> dict:
    """Send `request` on a connection of its own; on another, once `started()` says it is under way,
    check that the task `last` (settled last) is not settled yet and that `status` is answered, all
    before `request` is. Returns its answer."""
    sock = raw(daemon)
    hello(sock)
    with daemon.client() as other:
        sock.sendall(frame(request))
        until(lambda: started(other), "the start of the operation")
        assert unsettled(other.get(last)), "the whole fan-out went through before another client got in"
        assert other.status()["pid"] == daemon.proc.pid
        assert select.select([sock], [], [], 0)[0] == [], "answered before the other client"
    sock.settimeout(DEADLINE)
    reply = answer(sock)
    sock.close()
    assert "result" in reply, reply
    return reply["result"]


def test_a_retry_hands_over_a_large_fan_out_in_chunks(make_daemon):
    daemon = make_daemon(workers=1)
    with daemon.client() as c:
        root = c.submit("fail")["id"]
        assert c.wait([root], timeout=DEADLINE)["tasks"][0]["status"] == "failed"
        hold_worker(c)
        dependents = add_dependents(c, root)
        result = answered_midway(
            daemon,
            {"id": 9, "method": "retry", "params": {"task_id": root}},
            lambda other: other.get(root)["retried_as"] is not None,
            dependents[-1],
            lambda task: task["depends_on"] == [root],
        )
        new = result["new_task_id"]
        assert result["handed_over"] == dependents
        for ref in (dependents[0], dependents[FAN // 2], dependents[-1]):
            task = c.get(ref)
            assert (task["depends_on"], task["blocked_reason"]) == ([new], f"waiting for {new}")
        assert c.count(status="blocked") == FAN


def test_a_retry_of_a_selection_hands_over_a_fan_out_too_large_for_one_commit(make_daemon):
    from msearchd.service import FANOUT_CHUNK

    daemon = make_daemon(workers=1)
    with daemon.client() as c:
        roots = [c.submit("fail")["id"], c.submit("fail")["id"]]
        assert {t["status"] for t in c.wait(roots, timeout=DEADLINE)["tasks"]} == {"failed"}
        hold_worker(c)
        dependents = add_dependents(c, roots[0], 3 * FANOUT_CHUNK)
        result = c.call("retry", task_ids=roots)
        assert (result["succeeded"], result["failed"]) == (2, 0), result
        assert [r["task_id"] for r in result["results"]] == roots
        new = result["results"][0]["new_task_id"]
        for ref in (dependents[0], dependents[-1]):
            task = c.get(ref)
            assert (task["depends_on"], task["blocked_reason"]) == ([new], f"waiting for {new}")
        assert c.count(status="blocked") == len(dependents)


def test_completing_a_task_unblocks_a_large_fan_out_in_chunks(make_daemon, fifo):
    daemon = make_daemon(workers=1)
    gate = fifo()
    with daemon.client() as c:
        root = c.submit("quick", {"fifo": str(gate)})["id"]
        until(lambda: c.get(root)["status"] == "running", "the start of the root")
        dependents = add_dependents(c, root)
        gate.write("go")
        until(lambda: c.get(root)["status"] == "completed", "the end of the root")
        # Its dependents are settled in chunks after it: the last, not yet.
        assert c.get(dependents[-1])["status"] == "blocked"
        assert c.status()["pid"] == daemon.proc.pid
        until(lambda: c.count(status="blocked") == 0, "the unblocking of every dependent")
        assert c.get(dependents[-1])["blocked_reason"] is None


def test_cancelling_a_task_cancels_a_large_fan_out_in_chunks(make_daemon):
    daemon = make_daemon(workers=1)
    with daemon.client() as c:
        hold_worker(c)
        root = c.submit("file_scan", priority=11)["id"]
        dependents = add_dependents(c, root)
        result = answered_midway(
            daemon,
            {"id": 5, "method": "cancel", "params": {"task_id": root}},
            lambda other: other.get(root)["status"] == "cancelled",
            dependents[-1],
            lambda task: task["status"] == "blocked",
        )
        assert result["cancelled_dependents"] == FAN
        assert c.count(status="cancelled") == FAN + 1
        assert c.get(dependents[-1])["error"] == f"dependency {root} was cancelled"


def test_cancelling_a_running_task_cancels_a_large_fan_out_in_chunks(make_daemon):
    daemon = make_daemon(workers=1)
    with daemon.client() as c:
        root = c.submit("command", {"argv": ["sleep", "600"]})["id"]
        wait_started(c, root)
        dependents = add_dependents(c, root)
        result = answered_midway(
            daemon,
            {"id": 6, "method": "cancel", "params": {"task_id": root, "running": True}},
            lambda other: other.get(root)["status"] == "cancelled",
            dependents[-1],
            lambda task: task["status"] == "blocked",
        )
        assert result["cancelled_dependents"] == FAN
        assert result["task"]["stop_reason"] in ("sigterm", "killed")
        assert c.count(status="blocked") == 0


def test_dependents_left_unsettled_by_a_stop_are_settled_at_the_next_start(make_daemon):
    daemon = make_daemon(start=False)
    daemon.state_dir.mkdir(parents=True)
    store = Store(daemon.state_dir / "tasks.db")
    cancelled = store.insert(
        task_type="file_scan", data={}, priority=6, status=TaskStatus.PENDING, created_at=1.0
    )
    store.cancel_waiting([cancelled], 2.0)
    done = store.insert(task_type="file_scan", data={}, priority=6, status=TaskStatus.PENDING, created_at=1.0)
    store.update(done, status=TaskStatus.COMPLETED, finished_at=2.0)
    orphans = {
        root: [
            store.insert(
                task_type="file_scan",
                data={},
                priority=6,
                status=TaskStatus.BLOCKED,
                depends_on=[root],
                blocked_reason=f"waiting for {format_task_id(root)}",
                created_at=1.0,
            )
            for _ in range(2500)
        ]
        for root in (cancelled, done)
    }
    # What a daemon stopped in the middle of settling them leaves: the marks of the work under way.
    for root in orphans:
        store.add_bulk_request(2.0, "dependents_pending", {"task": root}, None, None)
    store.close()
    daemon.start()
    daemon.wait_for_log("settling the dependents of 2 task(s)")
    with daemon.client() as c:
        until(lambda: c.count(status="blocked") == 0, "the settling of the dependents")
        assert c.count(status="cancelled") == 2501
        assert (
            c.get(orphans[cancelled][-1])["error"] == f"dependency {format_task_id(cancelled)} was cancelled"
        )
        assert c.get(orphans[done][-1])["status"] in ("pending", "running", "failed")


def test_a_stop_during_a_bulk_cancel_answers_it_with_what_was_done(make_daemon):
    daemon = make_daemon(workers=1)
    with daemon.client() as c:
        hold_worker(c)
        for _ in range(10):
            c.submit_many([{"type": "file_scan", "priority": 11} for _ in range(10_000)])
        sock = raw(daemon)
        hello(sock)
        sock.sendall(frame({"id": 4, "method": "cancel_all", "params": {}}))
        until(lambda: c.count(status="cancelled") > 0, "the start of the bulk cancel")
        daemon.proc.terminate()
    sock.settimeout(DEADLINE)
    reply = answer(sock)
    assert reply is not None and reply["id"] == 4, reply
    assert reply["error"]["code"] == "unavailable", reply
    message = reply["error"]["message"]
    assert message.startswith("msearchd is stopping; "), message
    assert message.endswith(" tasks were cancelled before it stopped, the others were not"), message
    done = int(message.split("; ")[1].split()[0])
    assert 0 < done < 100_000
    assert daemon.proc.wait(timeout=DEADLINE) == 0
    assert "Traceback" not in daemon.log
    assert "ProgrammingError" not in daemon.log
    daemon.start()
    with daemon.client() as c:
        assert c.count(status="cancelled") == done
        assert c.count(status="pending") == 100_000 - done + 1  # the held task went back to the queue


def test_one_commit_settles_at_most_a_chunk_of_dependents_however_many_tasks_it_finishes(tmp_path):
    import asyncio

    from msearchd.config import Settings
    from msearchd.service import FANOUT_CHUNK, TaskService
    from msearchd.workers import Outcome

    store = Store(tmp_path / "tasks.db")
    service = TaskService(store, Settings(state_dir=tmp_path))
    per_root = FANOUT_CHUNK * 3 // 4

    async def scenario() -> None:
        roots = [service.submit("quick")["id"] for _ in range(2)]
        for root in roots:
            service.submit_many([{"type": "file_scan", "depends_on": [root]} for _ in range(per_root)])
        for _ in roots:  # as the dispatcher hands them to workers
            task = store.claim_next([], 1.0, 4242)
            assert task is not None
            service.task_finished(task, Outcome(TaskStatus.COMPLETED, started_at=1.0, finished_at=2.0))
        service._dispatch_ready()  # both outcomes in one transaction
        assert store.count(["pending"]) == FANOUT_CHUNK
        await asyncio.wait(set(service._fanouts))  # the rest, in chunks of their own
        assert store.count(["pending"]) == 2 * per_root
        assert store.count(["blocked"]) == 0

    asyncio.run(scenario())
    store.close()
