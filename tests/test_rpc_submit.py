"""A submit is answered alike whether it comes alone or among others pipelined behind it."""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgpack
import pytest

from msearchd import protocol

VARYING = ("id", "created_at")  # differ from one task to the next
NESTED: list[Any] = []
for _ in range(70):  # deeper than task data may be (64 levels)
    NESTED = [NESTED]

SUBMITS: list[dict[str, Any]] = [
    {"type": "x.alone", "data": {"n": 1, "s": "é", "b": b"\x00", "l": [1.5, None, True]}},
    {"type": "x.alone", "data": {}, "priority": 3, "depends_on": []},
    {"type": "x.alone", "priority": None, "key": None},
    {"type": "bad type!"},
    {"type": "x.alone", "priority": 99},
    {"type": "x.alone", "priority": True},
    {"type": "x.alone", "data": "not a map"},
    {"type": "x.alone", "data": {"f": float("nan")}},
    {"type": "x.alone", "data": {"deep": NESTED}},
    {"type": "x.alone", "colour": 1},
    {"data": {}},
    {"type": "command", "data": {"argv": "not a list"}},
]


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def greeted(daemon) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(str(daemon.socket))
    sock.sendall(frame({"id": 0, "method": "hello", "params": {"protocol": protocol.PROTOCOL_VERSION}}))
    assert "result" in protocol.recv_frame(sock)
    return sock


def shape(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without what differs between two tasks submitted alike."""
    if "error" in answer:
        return {"error": answer["error"]}
    return {"result": {k: v for k, v in answer["result"].items() if k not in VARYING}}


@pytest.mark.parametrize("params", SUBMITS)
def test_a_lone_submit_is_answered_as_one_among_others(daemon, client, params):
    sock = greeted(daemon)
    sock.sendall(frame({"id": 1, "method": "submit", "params": params}))
    alone = protocol.recv_frame(sock)
    assert alone is not None and alone["id"] == 1
    # The same request three times in one write: the daemon reads them together, as one run.
    sock.sendall(b"".join(frame({"id": i, "method": "submit", "params": params}) for i in (2, 3, 4)))
    together = [protocol.recv_frame(sock) for _ in range(3)]
    assert [a["id"] for a in together] == [2, 3, 4]
    assert all(shape(a) == shape(alone) for a in together), (alone, together)
    if "result" in alone:
        ids = [alone["result"]["id"], *(a["result"]["id"] for a in together)]
        assert len(set(ids)) == 4
        for task_id, answer in zip(ids, [alone, *together], strict=True):
            assert client.get(task_id) == answer["result"]  # written as answered
    else:
        assert alone["error"]["code"] == "invalid_argument", alone
    sock.close()


def test_a_lone_submit_with_an_id_in_use_is_refused_and_nothing_is_written(daemon, client):
    sock = greeted(daemon)
    before = client.count()
    sock.sendall(
        frame({"id": 5, "method": "wait", "params": {"task_ids": ["task_999999"], "timeout": 30}})
        + frame({"id": 5, "method": "submit", "params": {"type": "x.alone"}})
    )
    answer = protocol.recv_frame(sock)
    assert answer["id"] is None and answer["error"]["code"] == "protocol_error", answer
    assert "already used" in answer["error"]["message"]
    assert client.count() == before
    sock.close()
