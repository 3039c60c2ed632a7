"""Bad input of any kind on the socket gets an error answer or a closed connection, never a crash."""

from __future__ import annotations

import enum
import itertools
import os
import socket
import struct

import msgpack
import pytest

from msearchd import protocol
from msearchd.errors import InvalidArgument, ProtocolError


def raw(daemon) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(str(daemon.socket))
    return sock


def frame(obj) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


def answer(sock: socket.socket):
    return protocol.recv_frame(sock)


def hello(sock: socket.socket) -> None:
    sock.sendall(frame({"id": 0, "method": "hello", "params": {"protocol": protocol.PROTOCOL_VERSION}}))
    assert "result" in answer(sock)


def still_serving(daemon) -> None:
    with daemon.client() as c:
        assert c.status()["pid"] == daemon.proc.pid
    assert daemon.proc.poll() is None


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # length prefix decodes as ~1.2 GB: over the limit
        struct.pack(">I", protocol.MAX_FRAME + 1),
        struct.pack(">I", 3) + b"\xc1\xc1\xc1",  # 0xc1 is never valid msgpack
        frame([1, 2, 3]),  # not a map
    ],
    ids=["http", "huge", "undecodable", "not-a-map"],
)
def test_garbage_gets_an_error_then_a_closed_connection(daemon, payload):
    sock = raw(daemon)
    sock.sendall(payload)
    reply = answer(sock)
    assert reply["error"]["code"] == "protocol_error"
    assert answer(sock) is None  # closed
    sock.close()
    still_serving(daemon)


def test_truncated_frame_and_abrupt_close(daemon):
    sock = raw(daemon)
    sock.sendall(struct.pack(">I", 100) + b"\x81")
    sock.close()
    still_serving(daemon)


def test_requests_before_hello_are_refused(daemon):
    sock = raw(daemon)
    sock.sendall(frame({"id": 1, "method": "stats", "params": {}}))
    assert answer(sock)["error"] == {
        "code": "protocol_error",
        "message": "the first request on a connection must be hello",
    }
    hello(sock)
    sock.sendall(frame({"id": 2, "method": "stats", "params": {}}))
    assert "by_status" in answer(sock)["result"]


def test_wrong_protocol_version(daemon):
    sock = raw(daemon)
    sock.sendall(frame({"id": 1, "method": "hello", "params": {"protocol": 99}}))
    error = answer(sock)["error"]
    assert error["code"] == "protocol_error" and "99" in error["message"]


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        ({"id": 3, "method": "frobnicate", "params": {}}, "protocol_error", "unknown method 'frobnicate'"),
        ({"id": 3, "method": 42}, "protocol_error", "needs a method name"),
        ({"id": 3, "method": "get", "params": []}, "invalid_argument", "must be a map"),
        ({"id": 3, "method": "get", "params": {}}, "invalid_argument", "needs the parameter 'task_id'"),
        ({"id": 3, "method": "get", "params": {"task_id": 1.5}}, "invalid_argument", "must be str or int"),
        (
            {"id": 3, "method": "cancel", "params": {"task_id": 1, "running": "yes"}},
            "invalid_argument",
            "bool",
        ),
        (
            {"id": 3, "method": "set_priority", "params": {"task_id": 1, "priority": True}},
            "invalid_argument",
            "must be int",
        ),
        ({"id": 3, "method": "submit", "params": {"type": "x", "colour": 1}}, "invalid_argument", "'colour'"),
        (
            {"id": 3, "method": "submit", "params": {"type": "bad type!"}},
            "invalid_argument",
            "invalid task type",
        ),
        ({"id": 3, "method": "list", "params": {"limit": 0}}, "invalid_argument", "limit"),
        ({"id": 3, "method": "list", "params": {"status": "sleeping"}}, "invalid_argument", "unknown status"),
    ],
)
def test_bad_requests_get_error_answers_and_the_connection_goes_on(daemon, request_, code, fragment):
    sock = raw(daemon)
    hello(sock)
    sock.sendall(frame(request_))
    reply = answer(sock)
    assert reply["id"] == 3
    assert reply["error"]["code"] == code
    assert fragment in reply["error"]["message"]
    sock.sendall(frame({"id": 4, "method": "status", "params": {}}))
    assert answer(sock)["result"]["pid"] == daemon.proc.pid


def test_pipelined_requests_are_answered_in_order(daemon):
    sock = raw(daemon)
    hello(sock)
    sock.sendall(b"".join(frame({"id": i, "method": "count", "params": {}}) for i in range(1, 101)))
    assert [answer(sock)["id"] for _ in range(100)] == list(range(1, 101))


def test_a_stuck_client_does_not_block_others(daemon):
    stuck = raw(daemon)
    stuck.sendall(struct.pack(">I", 1000) + b"\x80")  # a frame that never completes
    still_serving(daemon)
    stuck.close()


def test_client_raises_typed_errors(client):
    with pytest.raises(InvalidArgument) as info:
        client.call("list", limit=-5)
    assert info.value.code == "invalid_argument"
    with pytest.raises(ProtocolError):
        client.call("no_such_method")


def _as_nobody(path: str, loosen: bool) -> int:
    """In a forked child as uid 65534: 0 refused as expected, 1 served, 2 setup failed."""
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(path)
            except PermissionError:
                code = 0 if not loosen else 2
            else:
                try:
                    s.sendall(frame({"id": 0, "method": "hello", "params": {"protocol": 1}}))
                    reply = s.recv(100)
                except (ConnectionResetError, BrokenPipeError):
                    reply = b""  # hung up on us
                code = 0 if reply == b"" else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_other_users_are_refused(daemon):
    # The socket folder is 0700: another uid cannot even reach the socket.
    assert _as_nobody(str(daemon.socket), loosen=False) == 0
    # Even with the permissions opened up, the daemon checks the peer's uid and hangs up.
    opened = [daemon.root, daemon.socket.parent, daemon.socket]
    modes = [p.stat().st_mode & 0o777 for p in opened]
    for path in opened:
        path.chmod(0o777)
    try:
        assert _as_nobody(str(daemon.socket), loosen=True) == 0
    finally:
        for path, mode in zip(opened, modes, strict=True):
            path.chmod(mode)
    daemon.wait_for_log("refused a connection from uid 65534")
    still_serving(daemon)


@pytest.mark.parametrize("bad_id", [None, "7", 1.0, -1, 2**63, True, [1]], ids=repr)
def test_a_request_id_must_be_an_integer_from_0_to_2_63(daemon, bad_id):
    sock = raw(daemon)
    hello(sock)
    sock.sendall(frame({"id": bad_id, "method": "submit", "params": {"type": "file_scan"}}))
    reply = answer(sock)
    assert reply["id"] is None
    assert reply["error"]["code"] == "protocol_error"
    assert "a request id must be an integer from 0 to 2**63 - 1" in reply["error"]["message"]
    sock.sendall(frame({"id": 2**63 - 1, "method": "count", "params": {}}))
    assert answer(sock) == {"id": 2**63 - 1, "result": 0}  # refused requests were not run


def test_an_id_in_use_by_a_request_not_yet_answered_is_refused(daemon, client, fifo):
    gate = fifo("gate")
    task = client.submit("command", {"argv": ["sh", "-c", f"read line < {gate}"]}, priority=0)
    sock = raw(daemon)
    hello(sock)
    sock.sendall(
        frame({"id": 5, "method": "wait", "params": {"task_ids": [task["id"]]}})
        + frame({"id": 5, "method": "submit", "params": {"type": "file_scan"}})
        + frame({"id": 6, "method": "count", "params": {"type": "file_scan"}})
    )
    refused = answer(sock)
    assert refused["id"] is None and refused["error"]["code"] == "protocol_error"
    assert "request id 5 is already used" in refused["error"]["message"]
    assert answer(sock) == {"id": 6, "result": 0}
    gate.write()
    waited = answer(sock)
    assert waited["id"] == 5 and waited["result"]["tasks"][0]["status"] == "completed"
    sock.sendall(frame({"id": 5, "method": "count", "params": {}}))  # answered: free again
    assert answer(sock) == {"id": 5, "result": 1}


def test_a_request_sent_behind_subscribe_is_answered_with_an_error(daemon):
    sock = raw(daemon)
    hello(sock)
    sock.sendall(
        frame({"id": 1, "method": "subscribe", "params": {}})
        + frame({"id": 2, "method": "stats", "params": {}})
    )
    assert answer(sock) == {"id": 1, "result": {"subscribed": True}}
    refused = answer(sock)
    assert refused["id"] == 2 and refused["error"]["code"] == "protocol_error"
    assert "carries the events of its subscription" in refused["error"]["message"]
    assert answer(sock) is None  # closed
    still_serving(daemon)


def test_a_request_sent_later_on_a_subscribed_connection_is_answered_with_an_error(daemon):
    sock = raw(daemon)
    hello(sock)
    sock.sendall(frame({"id": 1, "method": "subscribe", "params": {}}))
    assert answer(sock) == {"id": 1, "result": {"subscribed": True}}
    sock.sendall(frame({"id": 2, "method": "count", "params": {}}))
    refused = answer(sock)
    assert refused["id"] == 2 and "carries the events" in refused["error"]["message"]
    assert answer(sock) is None


# One value of each kind a parameter may be sent as.
SAMPLES: dict[type, object] = {
    str: "x",
    int: 7,
    float: 1.5,
    bool: True,
    list: [],
    dict: {},
    type(None): None,
}


def kinds_named(kinds: tuple[type, ...]) -> str:
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def fitting(spec: tuple[protocol.Param, ...]) -> dict[str, object]:
    """Every parameter of a method, each with a value of its first kind."""
    return {p.name: SAMPLES[p.kinds[0]] for p in spec}


@pytest.mark.parametrize("method", sorted(protocol.METHODS))
def test_params_are_checked_alike_for_every_method(method):
    """Each method's params: what fits comes back as sent, and each misfit is named in one sentence,
    an unknown name before the rest and the parameters in the schema's order."""
    spec = protocol.METHODS[method]
    every = fitting(spec)
    assert protocol.check_params(method, every) == every
    required = {p.name: every[p.name] for p in spec if p.required}
    assert protocol.check_params(method, dict(required)) == required
    assert protocol.check_params(method, required or None) == required
    with pytest.raises(InvalidArgument, match=f"^{method} takes no parameter 'colour'$"):
        protocol.check_params(method, {"colour": 1, **every})
    with pytest.raises(InvalidArgument, match=f"^params of {method} must be a map$"):
        protocol.check_params(method, [every])
    for p in spec:
        for kind, value in SAMPLES.items():
            fits = kind in p.kinds or (kind is not bool and any(issubclass(kind, k) for k in p.kinds))
            sent = {**every, p.name: value}
            if fits:
                assert protocol.check_params(method, sent) == sent
                continue
            message = f"parameter '{p.name}' of {method} must be {kinds_named(p.kinds)}, got {value!r}"
            with pytest.raises(InvalidArgument) as caught:
                protocol.check_params(method, sent)
            assert caught.value.message == message
            with pytest.raises(InvalidArgument, match="takes no parameter 'colour'"):
                protocol.check_params(method, {**sent, "colour": 1})
        if p.required:
            with pytest.raises(InvalidArgument) as caught:
                protocol.check_params(method, {n: v for n, v in every.items() if n != p.name})
            assert caught.value.message == f"{method} needs the parameter '{p.name}'"
    # Two misfits: the one first in the schema is named, whatever order they were sent in.
    for first, second in itertools.pairwise(spec):
        bad = {k: v for k, v in SAMPLES.items() if k not in first.kinds and k is not bool}
        kind, value = next(iter(bad.items()))
        later = {n: v for n, v in every.items() if n != second.name or not second.required}
        if not second.required:
            later[second.name] = next(v for k, v in SAMPLES.items() if k not in second.kinds)
        sent = {**{n: v for n, v in later.items() if n != first.name}, first.name: value}
        with pytest.raises(InvalidArgument) as caught:
            protocol.check_params(method, sent)
        assert f"'{first.name}'" in caught.value.message, (kind, caught.value.message)


def test_values_of_a_subclass_of_a_kind_fit_as_the_kind_does():
    """What msgpack decodes is always of a kind's exact type; a caller in process may send a subclass
    (an IntEnum, a str subclass): it fits where its base does, except bool where bool is not asked for."""

    class Level(enum.IntEnum):
        LOW = 3

    class Name(str):
        pass

    sent = {"task_id": Name("task_4"), "priority": Level.LOW}
    assert protocol.check_params("set_priority", sent) == sent
    assert protocol.check_params("cancel", {"task_id": 4, "running": True}) == {"task_id": 4, "running": True}
    with pytest.raises(InvalidArgument, match="parameter 'priority' of set_priority must be int, got True"):
        protocol.check_params("set_priority", {"task_id": 4, "priority": True})
    with pytest.raises(InvalidArgument, match="parameter 'running' of cancel must be bool, got 1"):
        protocol.check_params("cancel", {"task_id": 4, "running": 1})


def test_old_parameter_names_still_work():
    assert protocol.check_params("cancel_by_type", {"task_type": "x"}) == {"type": "x"}
    assert protocol.check_params("retry_failed", {"task_type": None}) == {"type": None}
    assert protocol.check_params("retry_failed", {}) == {}
    with pytest.raises(InvalidArgument, match="takes 'type' or its old name 'task_type', not both"):
        protocol.check_params("cancel_by_type", {"task_type": "x", "type": "y"})
    with pytest.raises(InvalidArgument, match="parameter 'type' of cancel_by_type must be str"):
        protocol.check_params("cancel_by_type", {"task_type": 3})
    with pytest.raises(InvalidArgument, match="cancel_by_type needs the parameter 'type'"):
        protocol.check_params("cancel_by_type", {"running": True})


def test_frames_small_and_large_are_cut_alike_however_the_bytes_arrive():
    """Small frames are copied out of the read buffer, larger ones viewed in it: both come out whole,
    in order, whether their bytes arrive at once, in pieces, or with the next frame's first bytes."""
    sizes = [0, 1, protocol.SMALL_FRAME - 40, protocol.SMALL_FRAME + 40, 300_000, 5]
    messages = [{"id": i, "method": "submit", "params": {"pad": "x" * n}} for i, n in enumerate(sizes)]
    stream = b"".join(protocol.encode(m) for m in messages)
    assert any(len(protocol.encode(m)) - 4 <= protocol.SMALL_FRAME for m in messages)
    assert any(len(protocol.encode(m)) - 4 > protocol.SMALL_FRAME for m in messages)
    for piece in (len(stream), 4096, 7, 1):
        frames = protocol.FrameBuffer()
        got = []
        for start in range(0, len(stream), piece):
            frames.feed(stream[start : start + piece])
            while (message := frames.next()) is not None:
                got.append(message)
        assert got == messages, piece
        assert frames.taken == len(messages) and not frames.pending()


def test_a_frame_that_arrives_alone_is_taken_whole_and_any_other_goes_through_the_buffer():
    """What the daemon and the client do with each read: a small frame that came by itself, with
    nothing buffered before it, is decoded where it lies; anything else is fed to the buffer, and comes
    out of it the same."""
    sizes = [0, protocol.SMALL_FRAME - 40, protocol.SMALL_FRAME + 40, 3]
    messages = [{"id": i, "method": "submit", "params": {"pad": "x" * n}} for i, n in enumerate(sizes)]
    encoded = [protocol.encode(m) for m in messages]
    whole = [len(e) - 4 <= protocol.SMALL_FRAME for e in encoded]
    assert whole == [True, True, False, True]
    for reads, expect_whole in (
        (encoded, 3),  # one frame a read: the small ones are taken whole
        ([encoded[0][:3], encoded[0][3:], *encoded[1:]], 2),  # the first split: through the buffer
        ([encoded[0] + encoded[1], *encoded[2:]], 1),  # two in one read: both through the buffer
    ):
        frames = protocol.FrameBuffer()
        got, taken_whole = [], 0
        for data in reads:
            message = frames.take_whole(data)
            if message is not None:
                got.append(message)
                taken_whole += 1
                continue
            frames.feed(data)
            while (message := frames.next()) is not None:
                got.append(message)
        assert got == messages
        assert frames.taken == len(messages) and not frames.pending()
        assert taken_whole == expect_whole
    buffered = protocol.FrameBuffer()
    buffered.feed(encoded[0][:2])  # a frame's first bytes wait: the next read is not a frame by itself
    assert buffered.take_whole(encoded[1]) is None and buffered.taken == 0
    bad = struct.pack(">I", 3) + b"\xc1\xc1\xc1"
    assert protocol.FrameBuffer().take_whole(bad) is None  # left for `next` to report


def test_a_client_takes_an_answer_only_as_the_answer_to_its_request():
    """A success under the request's id is its result; an error under it is raised as the error; an
    answer under another id is refused; an error without an id (about the connection) is raised."""
    from msearchd.client.checks import answer_result
    from msearchd.errors import NotFound, Unavailable

    assert answer_result({"id": 3, "result": {"a": 1}}, 3) == {"a": 1}
    assert answer_result({"id": 3, "result": None}, 3) is None
    with pytest.raises(NotFound, match=r"^task_9 does not exist$"):
        answer_result({"id": 3, "error": NotFound("task_9 does not exist").to_wire()}, 3)
    with pytest.raises(ProtocolError, match="answer for request 4, which is not waiting for one"):
        answer_result({"id": 4, "result": {"a": 1}}, 3)
    with pytest.raises(ProtocolError, match=r"^a frame must hold a msgpack map$"):
        answer_result({"id": None, "error": ProtocolError("a frame must hold a msgpack map").to_wire()}, 3)
    with pytest.raises(Unavailable, match="closed the connection"):
        answer_result(None, 3)
