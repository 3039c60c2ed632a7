"""`wait` on many tasks at once: each answered as it ended, nothing left behind, durable once heard."""

from __future__ import annotations

import select
import socket
import threading

import pytest

from msearchd import protocol
from msearchd.errors import InvalidArgument, NotFound, TooLarge


def greeted(d) -> socket.socket:
    """A connection of its own to the daemon, past hello: for requests sent together, in one write."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(str(d.socket))
    sock.sendall(protocol.encode(protocol.request(0, "hello", {"protocol": protocol.PROTOCOL_VERSION})))
    assert "result" in protocol.recv_frame(sock)
    return sock


def test_a_wait_on_hundreds_of_tasks_sees_each_end_as_it_was(make_daemon):
    d = make_daemon(workers=2)
    with d.client() as c:
        before = c.submit("noop")["id"]
        c.wait([before])  # ended before the wait below begins
        specs = [{"type": "fail"} if i % 7 == 0 else {"type": "noop"} for i in range(300)]
        ids = c.submit_many(specs)["task_ids"]
        asked = [before, *ids, ids[0], int(ids[1].removeprefix("task_"))]  # repeats count once
        result = c.wait(asked, timeout=60)
    assert not result["timed_out"]
    assert [t["id"] for t in result["tasks"]] == [before, *ids]
    expected = ["completed"] + ["failed" if i % 7 == 0 else "completed" for i in range(300)]
    assert [t["status"] for t in result["tasks"]] == expected
    assert all(t["finished_at"] is not None for t in result["tasks"])


def test_a_wait_that_times_out_leaves_nothing_behind(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate = fifo("gate")
    started = fifo("started")
    with d.client() as c:
        held = c.submit("quick", {"fifo": str(gate), "started": str(started)})["id"]
        started.read()
        queued = c.submit("noop")["id"]
        first = c.wait([held, queued], timeout=0.2)
        assert first["timed_out"]
        assert [t["status"] for t in first["tasks"]] == ["running", "pending"]
        # A wait for another state, on another connection: the queued task starts once released.
        answers: list[dict] = []
        with d.client() as other:
            wanted = ["running", "completed"]
            waiter = threading.Thread(
                target=lambda: answers.append(other.wait([queued], statuses=wanted, timeout=60))
            )
            waiter.start()
            gate.write()
            waiter.join(timeout=60)
        assert not answers[0]["timed_out"]
        assert answers[0]["tasks"][0]["status"] in ("running", "completed")
        again = c.wait([held, queued], timeout=60)
    assert not again["timed_out"]
    assert [t["status"] for t in again["tasks"]] == ["completed", "completed"]


def test_waiters_and_a_watcher_both_hear_of_each_end(make_daemon):
    d = make_daemon(workers=2)
    with d.client() as c, d.client() as watcher:
        ids = c.submit_many([{"type": "noop"} for _ in range(50)])["task_ids"]
        with watcher.events(task_ids=ids) as stream:
            result = c.wait(ids, timeout=60)
            heard: set[str] = set()
            while heard != set(ids):
                event = next(stream)
                if event.get("event") == "completed":
                    heard.add(event["task_id"])
    assert not result["timed_out"]
    assert {t["status"] for t in result["tasks"]} == {"completed"}


def test_an_end_a_waiter_heard_of_survives_kill9(make_daemon):
    d = make_daemon(workers=2)
    with d.client() as c:
        ids = c.submit_many([{"type": "noop"} for _ in range(100)])["task_ids"]
        heard = c.wait(ids, timeout=60)
    assert {t["status"] for t in heard["tasks"]} == {"completed"}
    d.kill9()
    d.start()
    with d.client() as c:
        after = c.wait(ids, timeout=0)
    assert [(t["id"], t["status"], t["finished_at"]) for t in after["tasks"]] == [
        (t["id"], t["status"], t["finished_at"]) for t in heard["tasks"]
    ]


def test_a_wait_for_running_hears_of_a_start_that_comes_after_it(make_daemon, fifo):
    """Starts are told only to those who may hear of them; a wait for `running` is one of them."""
    d = make_daemon(workers=1)
    first_gate, first_started, second_gate = fifo("first"), fifo("first-started"), fifo("second")
    with d.client() as c:
        first = c.submit("quick", {"fifo": str(first_gate), "started": str(first_started)})["id"]
        first_started.read()
        second = c.submit("quick", {"fifo": str(second_gate)})["id"]
        with greeted(d) as sock:
            # In one turn: the wait is under way before anything the daemon does after the answer to
            # `get` (the loop runs what a turn started before what comes in next).
            wait = {"task_ids": [second], "statuses": ["running"], "timeout": 30}
            sock.sendall(
                protocol.encode(protocol.request(1, "wait", wait))
                + protocol.encode(protocol.request(2, "get", {"task_id": second}))
            )
            got = protocol.recv_frame(sock)
            assert got["id"] == 2 and got["result"]["status"] == "pending"
            first_gate.write()
            waited = protocol.recv_frame(sock)
        assert waited["id"] == 1 and not waited["result"]["timed_out"]
        assert waited["result"]["tasks"][0]["status"] == "running"
        second_gate.write()
        ended = c.wait([first, second], timeout=30)["tasks"]
    assert [t["status"] for t in ended] == ["completed", "completed"]


def test_a_wait_naming_a_task_that_does_not_exist_names_it_and_waits_for_none(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        ids = c.submit_many([{"type": "noop"}] * 1000)["task_ids"]
        missing = f"task_{int(ids[-1].removeprefix('task_')) + 5}"
        with pytest.raises(NotFound, match=f"{missing} does not exist"):
            c.wait([*ids[:950], missing, *ids[950:]], timeout=60)
        result = c.wait(ids, timeout=60)  # the refused wait left nothing behind that holds this one
    assert not result["timed_out"]
    assert {t["status"] for t in result["tasks"]} == {"completed"}


def test_a_wait_on_tasks_that_have_all_ended_is_answered_in_its_turn(make_daemon):
    """No later turn of the daemon's loop for it: the answer comes in order with the requests sent with
    it, before the answer of the request behind it."""
    d = make_daemon(workers=1)
    with d.client() as c:
        done = c.submit("noop")["id"]
        c.wait([done], timeout=60)
        with greeted(d) as sock:
            sock.sendall(
                protocol.encode(protocol.request(1, "wait", {"task_ids": [done, done], "timeout": 30}))
                + protocol.encode(protocol.request(2, "get", {"task_id": done}))
            )
            answers = [protocol.recv_frame(sock), protocol.recv_frame(sock)]
    assert [a["id"] for a in answers] == [1, 2]
    assert [t["id"] for t in answers[0]["result"]["tasks"]] == [done]
    assert answers[0]["result"]["tasks"][0]["status"] == "completed" and not answers[0]["result"]["timed_out"]
    with d.client() as c, pytest.raises(NotFound, match="task_999 does not exist"):
        c.wait([done, "task_999"], timeout=30)


def test_a_wait_on_more_tasks_than_one_answer_carries_is_answered_whole(make_daemon):
    """70,000 tasks of a few hundred bytes are more than one frame holds (16 MiB): both clients ask
    in parts, and answer as one wait would, in order. A task that does not exist is refused at once,
    and a timeout counts for the whole wait."""
    import asyncio

    from msearchd.client import AsyncClient

    d = make_daemon(workers=1)
    with d.client() as c:
        c.pause()  # they stay pending
        ids: list[str] = []
        task = {"type": "noop", "data": {"path": "/photos/" + "x" * 240}}
        for _ in range(7):
            ids += c.submit_many([task] * 10_000)["task_ids"]
        with pytest.raises(TooLarge, match="more than 16,777,216 bytes"):
            c.call("wait", task_ids=ids, statuses=["pending"], timeout=0)  # one request: too much
        pending = c.wait(ids, statuses=["pending"], timeout=30)
        assert not pending["timed_out"]
        assert [(t["id"], t["status"]) for t in pending["tasks"]] == [(i, "pending") for i in ids]
        with pytest.raises(NotFound, match="task_99999999 does not exist"):
            c.wait([*ids, "task_99999999"])  # none ends: it would wait for ever if not refused first
        ended = c.wait(ids, timeout=0.2)
        assert ended["timed_out"] and len(ended["tasks"]) == len(ids)

    async def from_asyncio() -> dict:
        client = await AsyncClient.connect(d.socket)
        try:
            return await client.wait(ids, statuses=["pending"], timeout=30)
        finally:
            await client.close()

    answer = asyncio.run(from_asyncio())
    assert not answer["timed_out"] and [t["id"] for t in answer["tasks"]] == ids


def test_tasks_too_large_for_one_answer_are_listed_and_waited_on_whole(make_daemon):
    """600 tasks of 60 KB of data each are more than one frame holds (16 MiB): the daemon refuses
    such an answer with `too_large`, saying how many fit. Both clients, msearchctl and the HTTP shim
    ask in parts of that size, and answer as one call would, in order."""
    import asyncio
    import http.client
    import json
    import re

    from msearchd.client import AsyncClient

    d = make_daemon(workers=1, extra_args=("--http", "127.0.0.1:0"))
    with d.client() as c:
        c.pause()  # they stay pending
        ids: list[str] = []
        for n in range(6):
            batch = [{"type": "noop", "data": {"n": n * 100 + i, "blob": "x" * 60_000}} for i in range(100)]
            ids += c.submit_many(batch)["task_ids"]
        refusal = r"more than 16,777,216 bytes of data and results \(with 512 for each task's other fields\)"
        with pytest.raises(TooLarge, match=refusal + r".*\(277 fit\)") as listed:
            c.call("list", limit=600)
        assert listed.value.fits == 277
        with pytest.raises(TooLarge) as waited:
            c.call("wait", task_ids=ids, timeout=0)
        assert waited.value.fits == 277
        asked: list[tuple[str, int]] = []
        call = c.call

        def counted(method: str, **params: object) -> object:
            size = params["limit"] if method == "list" else len(params["task_ids"])  # type: ignore[arg-type]
            asked.append((method, size))
            return call(method, **params)

        c.call = counted  # type: ignore[method-assign]
        assert [(t["id"], t["data"]["n"]) for t in c.list(limit=600)] == list(
            zip(ids, range(600), strict=True)
        )
        waited = c.wait(ids, statuses=["pending"], timeout=30)
        assert not waited["timed_out"] and [t["id"] for t in waited["tasks"]] == ids
        # 277 fit: 16 MiB over 60,013 bytes of data each and 512 for the rest of a task.
        parts = [600, 277, 277, 46]
        assert asked == [("list", n) for n in parts] + [("wait", n) for n in parts]
        del c.call
        assert [t["id"] for t in c.list(limit=600, offset=120)] == ids[120:]  # ends before the limit
        assert [t["id"] for t in c.list(limit=600, order="newest")] == ids[::-1]
        ended = c.wait(ids, timeout=0.2)  # they stay pending: timed out, every task said
        assert ended["timed_out"] and [t["status"] for t in ended["tasks"]] == ["pending"] * 600

    async def from_asyncio() -> tuple[list, dict]:
        client = await AsyncClient.connect(d.socket)
        try:
            return await client.list(limit=600), await client.wait(ids, statuses=["pending"], timeout=30)
        finally:
            await client.close()

    listed, waited = asyncio.run(from_asyncio())
    assert [t["id"] for t in listed] == ids and [t["id"] for t in waited["tasks"]] == ids

    run = d.ctl("tasks", "list", "--limit", "600", "--json")
    assert run.returncode == 0, run.stderr
    assert [t["id"] for t in json.loads(run.stdout)] == ids

    match = re.search(r"http://127\.0\.0\.1:(\d+)", d.wait_for_log("http shim listening on"))
    assert match is not None
    conn = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=60)
    try:
        conn.request("GET", "/api/v1/tasks?limit=600")
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200, body
    assert body["total"] == 600 and [t["id"] for t in body["tasks"]] == ids


# --- a submit that waits: one request where a client would submit, then wait --------------------


def test_a_submit_that_waits_answers_once_its_task_ended_and_holds_back_nothing(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate, started = fifo("gate"), fifo("started")
    params = {"type": "quick", "data": {"fifo": str(gate), "started": str(started)}, "wait": True}
    with greeted(d) as sock:
        sock.sendall(
            protocol.encode(protocol.request(1, "submit", params))
            + protocol.encode(protocol.request(2, "count", {"status": "running"}))
        )
        started.read()
        behind = protocol.recv_frame(sock)
        assert behind["id"] == 2 and "result" in behind  # answered while the submit still waits
        assert select.select([sock], [], [], 0)[0] == []  # and nothing else: its task is held
        with d.client() as c:
            (running,) = c.list(status="running")
            assert running["type"] == "quick"
        gate.write()
        answer = protocol.recv_frame(sock)
    assert answer["id"] == 1
    task = answer["result"]
    assert task["id"] == running["id"]
    assert task["status"] == "completed" and task["finished_at"] is not None
    assert task["timed_out"] is False
    with d.client() as c:
        assert {**c.get(task["id"]), "timed_out": False} == task


def test_a_submit_that_waits_past_its_timeout_answers_with_the_task_as_it_is(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate, started = fifo("gate"), fifo("started")
    with d.client() as c:
        held = c.submit("quick", {"fifo": str(gate), "started": str(started)})["id"]
        started.read()
        queued = c.submit("noop", wait=True, timeout=0.2)
        assert (queued["status"], queued["timed_out"]) == ("pending", True)
        gate.write()
        done = c.wait([held, queued["id"]], timeout=60)
    assert [t["status"] for t in done["tasks"]] == ["completed", "completed"]


def test_a_submit_that_waits_refuses_a_bad_timeout_before_it_queues_anything(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        for params, message in [
            ({"wait": True, "timeout": -1}, "timeout must be 0 or more seconds, got -1"),
            ({"timeout": 5}, "timeout goes with wait=true"),
        ]:
            with pytest.raises(InvalidArgument) as refused:
                c.call("submit", type="noop", **params)
            assert refused.value.message == message
        with pytest.raises(InvalidArgument) as refused:
            c.submit_many([{"type": "noop"}, {"type": "noop", "wait": True}])
        assert refused.value.message == "tasks[1]: submit_many does not wait; wait on its task_ids"
        assert c.count() == 0


def test_a_submit_whose_client_stops_waiting_still_runs_its_task(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate, started = fifo("gate"), fifo("started")
    params = {"type": "quick", "data": {"fifo": str(gate), "started": str(started)}, "wait": True}
    with greeted(d) as sock:
        sock.sendall(protocol.encode(protocol.request(1, "submit", params)))
        started.read()
    with d.client() as c:
        (task,) = c.list(status="running")
        gate.write()
        assert c.wait([task["id"]], timeout=60)["tasks"][0]["status"] == "completed"


def test_a_keyed_submit_that_waits_says_whose_task_it_waited_for(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate, started = fifo("gate"), fifo("started")
    with d.client() as c:
        holder = c.submit("quick", {"fifo": str(gate), "started": str(started)}, key="k")["id"]
        started.read()
        kept = c.submit("noop", key="k", wait=True, timeout=0.2)
        assert (kept["id"], kept["key_outcome"]) == (holder, "kept")
        assert (kept["status"], kept["timed_out"]) == ("running", True)
        gate.write()
        assert c.wait([holder], timeout=60)["tasks"][0]["status"] == "completed"
        created = c.submit("noop", key="k", wait=True, timeout=60)
    assert (created["key_outcome"], created["status"], created["timed_out"]) == (
        "created",
        "completed",
        False,
    )
    assert created["id"] != holder


def test_a_follow_up_may_neither_wait_nor_stop_a_running_task(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        for follow_up, refusal in [
            ({"type": "quick", "wait": True}, "a follow-up cannot wait"),
            (
                {"type": "quick", "key": "k", "on_conflict": "replace", "running": True},
                "a follow-up cannot stop",
            ),
        ]:
            parent = c.submit("batcher", {"tasks": [{"type": "quick"}, follow_up]})
            (done,) = c.wait([parent["id"]], timeout=20)["tasks"]
            assert done["status"] == "failed"
            assert done["error"].startswith(f"follow-up tasks refused: tasks[1]: {refusal}")
        assert c.count(task_type="quick") == 0
