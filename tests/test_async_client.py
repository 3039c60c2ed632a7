"""The asyncio client against a real daemon: a call given up before its answer (a timeout, a cancelled
task) leaves the connection to no later call."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from msearchd import protocol
from msearchd.client import AsyncClient
from msearchd.client.asynchronous import AsyncEventStream
from msearchd.errors import Unavailable


def cleaning_up(d: Any, fifo: Any, tmp_path: Path) -> tuple[dict[str, Any], Any, Any]:
    """A running `tidy` task whose clean-up after a cancel waits for a line on the gate: a cancel of it
    answers only once the test lets it. Returns the task, the fifo it says the cancel reached it on,
    and the gate."""
    started, told, gate = fifo("started"), fifo("told"), fifo("gate")
    data = {"started": str(started), "told": str(told), "gate": str(gate), "done": str(tmp_path / "done")}
    with d.client() as c:
        task = c.submit("tidy", {**data, "cooperative": True}, priority=0)
    started.read()
    return task, told, gate


def test_a_call_given_up_by_a_timeout_leaves_the_next_call_its_own_answer(make_daemon, fifo, tmp_path):
    d = make_daemon(workers=1, grace=60)
    task, told, gate = cleaning_up(d, fifo, tmp_path)

    async def scenario() -> tuple[bool, dict[str, Any], dict[str, Any]]:
        client = await AsyncClient.connect(d.socket)
        try:
            with pytest.raises(TimeoutError):  # the cancel cannot answer before the gate opens
                await asyncio.wait_for(client.cancel(task["id"], running=True), 0.2)
            given_up = client.closed
            await asyncio.to_thread(told.read)
            # The clean-up ends: the daemon answers the cancel given up on, and only then, on that
            # connection, the calls sent after it.
            await asyncio.to_thread(gate.write)
            return given_up, await client.wait([task["id"]]), await client.get(task["id"])
        finally:
            await client.close()

    given_up, waited, got = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert given_up
    assert [(t["id"], t["status"]) for t in waited["tasks"]] == [(task["id"], "cancelled")]
    assert (got["id"], got["status"]) == (task["id"], "cancelled")


def test_calls_waiting_beside_one_given_up_fail_as_unavailable(make_daemon, fifo, tmp_path):
    d = make_daemon(workers=1, grace=60)
    task, told, gate = cleaning_up(d, fifo, tmp_path)

    async def scenario() -> tuple[BaseException | None, dict[str, Any]]:
        client = await AsyncClient.connect(d.socket)
        try:
            waiting = asyncio.ensure_future(client.wait([task["id"]]))  # answers once the task ends
            cancel = asyncio.ensure_future(client.cancel(task["id"], running=True))
            await asyncio.to_thread(told.read)
            cancel.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancel
            beside = await asyncio.gather(waiting, return_exceptions=True)
            await asyncio.to_thread(gate.write)
            return beside[0], await client.wait([task["id"]])
        finally:
            await client.close()

    beside, waited = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert isinstance(beside, Unavailable)
    assert "given up" in beside.message
    assert [(t["id"], t["status"]) for t in waited["tasks"]] == [(task["id"], "cancelled")]


def test_an_event_stream_wait_given_up_inside_a_frame_takes_up_where_it_was():
    """A consumer that waits for the next event with a timeout may give up while a frame is half
    read: the next wait gets that event whole, then the next."""
    frames = [protocol.encode({"event": {"event": "progress", "task_id": f"task_{i}"}}) for i in (1, 2)]

    async def scenario() -> list[dict[str, Any]]:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        stream = AsyncEventStream(AsyncClient(Path("unused"), reader, writer))
        try:
            theirs.sendall(frames[0][:6])  # the header and a little of the body
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(stream), 0.05)
            theirs.sendall(frames[0][6:] + frames[1])
            return [await asyncio.wait_for(anext(stream), 10) for _ in frames]
        finally:
            await stream.close()
            theirs.close()

    assert asyncio.run(scenario()) == [{"event": "progress", "task_id": f"task_{i}"} for i in (1, 2)]
