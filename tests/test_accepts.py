"""What the daemon accepts: values it cannot store, show or look up are refused as invalid arguments, in
one sentence, and never become an internal error or a task that breaks every listing."""

from __future__ import annotations

import json
import math
import socket
import struct

import msgpack
import pytest
from test_cli import ok, refused
from test_wire import answer, frame, hello, raw

from msearchd.errors import InvalidArgument
from msearchd.model import DATA_BYTES_MAX, DATA_DEPTH_MAX

TOO_BIG = 2**63  # one past SQLite's largest integer


def nested(depth: int) -> bytes:
    """msgpack of {"a": {"a": ... {}}}, `depth` maps deep: deeper than msgpack's packer will write."""
    return b"\x81\xa1a" * (depth - 1) + b"\x80"


def submit_frame(req_id: int, data: bytes) -> bytes:
    """A submit request whose data is the msgpack bytes `data`, as written."""
    head = msgpack.packb({"id": req_id, "method": "submit"})
    params = msgpack.packb({"type": "file_scan"})
    # Add a third key to the request map and a second to params: "params": {"type": ..., "data": <data>}
    body = b"\x83" + head[1:] + msgpack.packb("params") + b"\x82" + params[1:] + msgpack.packb("data") + data
    return struct.pack(">I", len(body)) + body


def ask(sock: socket.socket, request: bytes) -> dict:
    sock.sendall(request)
    return answer(sock)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (msgpack.packb({"t": msgpack.Timestamp(0)}), "data.t holds a msgpack Timestamp"),
        (msgpack.packb({"x": [1, {"e": msgpack.ExtType(5, b"xy")}]}), "data.x[1].e holds a msgpack ExtType"),
        (nested(1000), "is nested too deep"),
        (nested(DATA_DEPTH_MAX + 1), f"at most {DATA_DEPTH_MAX} levels"),
        (msgpack.packb({"k": {b"raw": 1}}), "data.k has the key b'raw'"),
        (msgpack.packb({"f": math.nan}), "data.f is nan"),
        (msgpack.packb({"l": [0.5, -math.inf]}), "data.l[1] is -inf"),
        (msgpack.packb({"blob": "x" * (DATA_BYTES_MAX + 1)}), "task data exceeds 64 KiB"),
        (msgpack.packb({"many": list(range(DATA_BYTES_MAX + 1))}), "task data exceeds 64 KiB"),
    ],
    ids=["timestamp", "ext", "deep", "depth-bound", "bytes-key", "nan", "inf", "size", "size-items"],
)
def test_data_without_a_json_form_is_refused_at_submit(daemon, data, fragment):
    sock = raw(daemon)
    hello(sock)
    reply = ask(sock, submit_frame(1, data))
    assert reply["id"] == 1
    assert reply["error"]["code"] == "invalid_argument"
    assert fragment in reply["error"]["message"]
    assert len(reply["error"]["message"].splitlines()) == 1
    # Nothing was queued, and listing still works, from the CLI as from the RPC.
    assert json.loads(ok(daemon.ctl("tasks", "list", "--json"))) == []
    assert "Traceback" not in daemon.log


def test_refused_data_is_refused_in_every_submit_path(client):
    bad = {"when": msgpack.Timestamp(1)}
    with pytest.raises(InvalidArgument, match=r"data\.when holds a msgpack Timestamp"):
        client.call("submit", type="file_scan", data=bad)
    first = client.submit("file_scan")
    with pytest.raises(InvalidArgument, match=r"data\.when holds a msgpack Timestamp"):
        client.call("submit", type="file_scan", data=bad, depends_on=[first["id"]])
    with pytest.raises(InvalidArgument, match=r"tasks\[1\]: data\.when holds a msgpack Timestamp"):
        client.call("submit_many", tasks=[{"type": "file_scan"}, {"type": "file_scan", "data": bad}])
    with client.pipeline() as p:
        p.submit("file_scan", {"ok": 1})
        p.call("submit", type="file_scan", data=bad)
        p.submit("file_scan", {"ok": 2})
    good, refused_, later = p.results
    assert isinstance(refused_, InvalidArgument)
    assert good["data"] == {"ok": 1} and later["data"] == {"ok": 2}
    assert client.count() == 3


def test_data_at_the_bounds_is_accepted_and_shown(daemon):
    deep: dict = {}
    for _ in range(DATA_DEPTH_MAX - 2):  # with `data` itself, DATA_DEPTH_MAX levels
        deep = {"a": deep}
    with daemon.client() as c:
        c.submit("file_scan", {"deep": deep, "blob": b"bytes stay", "n": 2**64 - 1, "f": 1e308})
    listed = json.loads(ok(daemon.ctl("tasks", "list", "--json")))
    assert listed[0]["data"]["blob"] == "bytes stay"
    assert listed[0]["data"]["n"] == 2**64 - 1


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("get", {"task_id": TOO_BIG}),
        ("get", {"task_id": 2**64 - 1}),
        ("cancel", {"task_id": TOO_BIG}),
        ("cancel", {"task_id": TOO_BIG, "running": True}),
        ("history", {"task_id": TOO_BIG}),
        ("retry", {"task_id": TOO_BIG}),
        ("set_priority", {"task_id": TOO_BIG, "priority": 1}),
        ("wait", {"task_ids": [TOO_BIG], "timeout": 1}),
        ("submit", {"type": "file_scan", "depends_on": [TOO_BIG]}),
        ("list", {"offset": TOO_BIG}),
        ("list", {"offset": 2**64 - 1}),
        ("list", {"limit": TOO_BIG}),
        ("subscribe", {"task_ids": [TOO_BIG]}),
    ],
)
def test_integers_beyond_64_bits_are_invalid_arguments(daemon, method, params):
    sock = raw(daemon)
    hello(sock)
    reply = ask(sock, frame({"id": 7, "method": method, "params": params}))
    assert reply["id"] == 7
    assert reply["error"]["code"] == "invalid_argument", reply
    assert "Traceback" not in daemon.log
    assert ask(sock, frame({"id": 8, "method": "count", "params": {}}))["result"] == 0


@pytest.mark.parametrize("item", [{"id": 1}, [1, 2], None, 1.5], ids=["map", "list", "null", "float"])
def test_a_dependency_that_is_not_an_id_is_an_invalid_argument(daemon, item):
    sock = raw(daemon)
    hello(sock)
    reply = ask(sock, frame({"id": 3, "method": "submit", "params": {"type": "x", "depends_on": [1, item]}}))
    assert reply["error"]["code"] == "invalid_argument", reply
    assert "invalid task id" in reply["error"]["message"]
    assert "Traceback" not in daemon.log


def test_cli_offsets_and_ids_beyond_64_bits_are_refused_in_one_sentence(daemon):
    refused(daemon.ctl("tasks", "list", "--offset", str(TOO_BIG)), "offset must be from 0 to")
    refused(daemon.ctl("tasks", "list", "--offset", str(2**64)), "out of range")  # msgpack cannot carry it
    big = str(TOO_BIG)
    for args in (
        ("show", big),
        ("cancel", big),
        ("cancel", "--running", big),
        ("history", big),
        ("retry", big),
        ("wait", big),
        ("log", big),
        ("priority", big, "3"),
        ("add", "file_scan", "--depends-on", big),
    ):
        result = daemon.ctl("tasks", *args)
        assert result.returncode in (1, 2), (args, result)
        assert "Traceback" not in result.stderr
        assert "invalid task id" in result.stderr
    assert "Traceback" not in daemon.log
