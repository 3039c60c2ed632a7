"""Pipelined requests: each answered on its own, in order, only once durable; together in one commit."""

from __future__ import annotations

import socket
import struct

import msgpack
import pytest
from support import wait_started

from msearchd import protocol
from msearchd.client import Pipeline
from msearchd.errors import InvalidArgument, InvalidState, NotFound, ProtocolError


def hold_the_worker(client, fifo) -> None:
    """Keep the only worker busy, so that the tasks of the test stay pending."""
    gate = fifo("gate")
    busy = client.submit("command", {"argv": ["sh", "-c", f"read line < {gate}"]}, priority=0)
    wait_started(client, busy["id"])


def test_each_request_of_a_pipeline_gets_its_own_answer_in_order(make_daemon, fifo):
    with make_daemon(workers=1).client() as client:
        hold_the_worker(client, fifo)
        answers_in_order(client)


def answers_in_order(client) -> None:
    first = client.submit("file_scan", {"n": 0})
    with client.pipeline() as p:
        p.submit("file_scan", {"n": 1})
        p.submit("file_scan", {"n": 2}, priority=99)  # refused: out of range
        p.get("task_999999")  # refused: no such task
        p.set_priority(first["id"], 0)
        p.submit("noop", depends_on=[first["id"]])
        p.cancel(first["id"])
        p.set_priority(first["id"], 1)  # refused: cancelled by the request before it
        p.submit("file_scan", {"n": 3})
    r = p.results
    assert len(r) == 8
    assert r[0]["data"] == {"n": 1} and r[0]["status"] == "pending"
    assert isinstance(r[1], InvalidArgument) and "priority" in r[1].message
    assert isinstance(r[2], NotFound)
    assert r[3]["priority"] == 0
    assert r[4]["status"] == "blocked" and r[4]["depends_on"] == [first["id"]]
    assert r[5]["task"]["status"] == "cancelled" and r[5]["cancelled_dependents"] == 1
    assert isinstance(r[6], InvalidState)
    assert r[7]["data"] == {"n": 3}
    ids = [int(t["id"].removeprefix("task_")) for t in (r[0], r[4], r[7])]
    assert ids == sorted(ids)  # written in the order they were sent
    # The failures changed nothing; what succeeded is there, as answered.
    assert client.get(first["id"])["priority"] == 0
    assert client.get(r[4]["id"])["status"] == "cancelled"
    assert client.count(task_type="file_scan") == 3


def test_a_large_pipeline_needs_no_reader_thread(client):
    """More requests than fit in the socket buffers: the client reads answers as it goes."""
    n = 3 * Pipeline.WINDOW + 17
    with client.pipeline() as p:
        for i in range(n):
            p.submit("file_scan", {"i": i, "pad": "x" * 200})
    assert [t["data"]["i"] for t in p.results] == list(range(n))
    assert client.count(task_type="file_scan") == n


def test_a_request_that_must_wait_holds_back_the_answers_after_it(client, fifo):
    gate = fifo("gate")
    running = client.submit("command", {"argv": ["sh", "-c", f"read line < {gate}"]}, priority=0)
    client.wait([running["id"]], statuses=["running"], timeout=20)
    with client.pipeline() as p:
        p.cancel(running["id"], running=True)  # answered once the command is gone
        p.get(running["id"])
    cancelled, got = p.results
    assert cancelled["task"]["status"] == "cancelled"
    assert got["status"] == "cancelled"  # not "running": it was answered after the cancel


def test_acknowledged_pipelined_submits_survive_kill9(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        with c.pipeline() as p:
            for i in range(2000):
                p.submit("file_scan", {"i": i})
        acked = {t["id"]: t["data"] for t in p.results}
    d.kill9()
    d.start()
    with d.client() as c:
        stored = {t["id"]: t["data"] for t in c.list(task_type="file_scan", limit=5000)}
    assert stored == acked


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


def test_requests_before_a_bad_frame_in_the_same_write_are_answered_and_kept(daemon):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(str(daemon.socket))
    hello = {"id": 1, "method": "hello", "params": {"protocol": protocol.PROTOCOL_VERSION}}
    submit = {"id": 2, "method": "submit", "params": {"type": "file_scan", "data": {"kept": True}}}
    sock.sendall(frame(hello) + frame(submit) + struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    assert "result" in protocol.recv_frame(sock)
    answer = protocol.recv_frame(sock)
    assert answer["id"] == 2 and answer["result"]["data"] == {"kept": True}
    assert protocol.recv_frame(sock)["error"]["code"] == "protocol_error"
    assert protocol.recv_frame(sock) is None  # closed
    sock.close()
    with daemon.client() as c:
        assert c.get(answer["result"]["id"])["data"] == {"kept": True}


def test_the_client_is_usable_again_after_a_pipeline_ends_or_fails(client):
    with client.pipeline() as p:
        p.submit("file_scan", {"n": 1})
        with pytest.raises(ProtocolError, match="pipeline open"):
            client.get("task_1")  # its answer would land among the pipeline's
    with pytest.raises(RuntimeError), client.pipeline() as p:
        for i in range(Pipeline.WINDOW + 5):  # one window sent: those requests take effect
            p.submit("file_scan", {"n": 2 + i})
        raise RuntimeError("the caller gave up")
    with pytest.raises(ProtocolError, match="ended"):
        p.submit("file_scan")
    sent = Pipeline.WINDOW  # the requests of the window sent; the 5 after it never left
    assert client.count(task_type="file_scan") == 1 + sent
