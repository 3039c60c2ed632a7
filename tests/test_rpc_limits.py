"""What one connection may cost the others: turns, read bounds, calls under way, descriptors, idleness."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import select
import socket
import struct
import threading

import msgpack
import pytest
from support import wait_started

from msearchd import protocol, rpc
from msearchd.client import AsyncClient, Client
from msearchd.errors import Unavailable


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


def connect(daemon, timeout: int = 20) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # A blocking connect waits while the daemon's backlog is full (a non-blocking one fails at once),
    # for SO_SNDTIMEO at most.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", timeout, 0))
    sock.connect(str(daemon.socket))
    sock.settimeout(timeout)
    return sock


def greeted(daemon) -> socket.socket:
    sock = connect(daemon)
    sock.sendall(frame({"id": 0, "method": "hello", "params": {"protocol": protocol.PROTOCOL_VERSION}}))
    assert "result" in protocol.recv_frame(sock)
    return sock


def gated_command(client: Client, gate) -> str:
    """A running command that ends once the test writes to `gate`."""
    task = client.submit("command", {"argv": ["sh", "-c", f"read line < {gate}"]}, priority=0)
    wait_started(client, task["id"])
    return task["id"]


def closed_by_daemon(sock: socket.socket, timeout: float) -> bool:
    """True once the daemon has closed `sock` (within `timeout`); answers before the end are skipped."""
    while select.select([sock], [], [], timeout)[0]:
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
    return False


def test_a_pipelining_client_does_not_hold_up_the_others(make_daemon, fifo):
    d = make_daemon(workers=1)
    with d.client() as c, d.client() as other:
        gated_command(c, fifo("gate"))  # the worker is busy: the queue stays as it is
        for _ in range(20):
            c.submit_many([{"type": "file_scan"}] * 1000)  # stats costs a ms or so with 20,000 tasks
        total = c.stats()["total"]
        pipeliner = greeted(d)
        n = 1000
        pipeliner.sendall(
            b"".join(frame({"id": i, "method": "stats", "params": {}}) for i in range(1, n + 1))
        )
        first = protocol.recv_frame(pipeliner)  # the daemon is working through the pipeline
        other.submit("file_scan")
        totals = [first["result"]["total"]] + [
            protocol.recv_frame(pipeliner)["result"]["total"] for _ in range(n - 1)
        ]
    # The other client's submit was served in the middle of the pipeline, not after its end.
    assert totals[0] == total
    assert totals[-1] == total + 1


def test_a_wait_does_not_hold_back_the_answers_behind_it(client, daemon, fifo):
    gate = fifo("gate")
    task_id = gated_command(client, gate)
    sock = greeted(daemon)
    sock.sendall(
        frame({"id": 1, "method": "wait", "params": {"task_ids": [task_id]}})
        + frame({"id": 2, "method": "get", "params": {"task_id": task_id}})
    )
    got = protocol.recv_frame(sock)
    assert got["id"] == 2 and got["result"]["status"] == "running"
    gate.write()
    waited = protocol.recv_frame(sock)
    assert waited["id"] == 1 and waited["result"]["tasks"][0]["status"] == "completed"


def test_async_client_calls_run_side_by_side(client, daemon, fifo):
    gate = fifo("gate")
    task_id = gated_command(client, gate)

    async def scenario() -> tuple[str, str]:
        ac = await AsyncClient.connect(daemon.socket)
        try:
            waiting = asyncio.ensure_future(ac.wait([task_id]))
            got = await asyncio.wait_for(ac.get(task_id), 20)  # answered while the wait is under way
            assert not waiting.done()
            await asyncio.to_thread(gate.write)
            waited = await asyncio.wait_for(waiting, 20)
            return got["status"], waited["tasks"][0]["status"]
        finally:
            await ac.close()

    assert asyncio.run(scenario()) == ("running", "completed")


def test_pipeline_results_stay_in_request_order_when_answers_do_not(client):
    client.pause()  # nothing starts: an idle worker would take the task before the cancel reaches it
    done = client.submit_many([{"type": "file_scan"}])["task_ids"][0]
    client.cancel(done)
    with client.pipeline() as p:
        p.wait([done])  # answered after the requests behind it
        p.get(done)
        p.count()
    waited, got, counted = p.results
    assert waited["tasks"][0]["id"] == done and waited["timed_out"] is False
    assert got["id"] == done and got["status"] == "cancelled"
    assert counted == 1


def test_requests_behind_a_held_call_are_not_read_without_bound(make_daemon, fifo):
    """A running-task cancel holds back the requests behind it; the daemon stops reading them once a
    bounded amount waits, instead of buffering whatever the client sends."""
    d = make_daemon(workers=1, grace=60)
    gate, started = fifo("gate"), fifo("started")
    with d.client() as c:
        script = f"trap 'read line < {gate}; exit 0' TERM; echo up > {started}; while :; do sleep 1; done"
        task = c.submit("command", {"argv": ["sh", "-c", script]}, priority=0)
        started.read()
    released = False
    try:
        sock = greeted(d)
        sock.sendall(frame({"id": 1, "method": "cancel", "params": {"task_id": task["id"], "running": True}}))

        first = 1 << 16  # ids from here to 2**32 are packed in as many bytes: every request has one size
        size = len(frame({"id": first, "method": "count", "params": {}}))

        def requests(start: int) -> bytes:
            return b"".join(
                frame({"id": first + i, "method": "count", "params": {}}) for i in range(start, start + 1000)
            )

        sock.setblocking(False)
        sent, made, pending = 0, 0, b""
        while sent < 64 * 1024 * 1024:
            if not pending:
                pending, made = requests(made), made + 1000
            try:
                n = sock.send(pending)
            except BlockingIOError:
                # Full: give the daemon a while to read more, as it would without a bound.
                if not select.select([], [sock], [], 2.0)[1]:
                    break
                continue
            sent, pending = sent + n, pending[n:]
        assert sent < 8 * 1024 * 1024, f"the daemon read {sent} bytes of requests held back behind a call"

        # Once the cancel ends, every request sent is answered, after it.
        whole, partial = divmod(sent, size)
        expected = 1 + whole + (1 if partial else 0)
        sock.setblocking(True)
        sock.settimeout(30)
        ids: list[int] = []
        reader = threading.Thread(
            target=lambda: ids.extend(protocol.recv_frame(sock)["id"] for _ in range(expected))
        )
        reader.start()
        gate.write()
        released = True
        if partial:
            sock.sendall(pending[: size - partial])
        reader.join(60)
    finally:
        if not released:  # the command waits for it to end
            gate.write()
    assert ids[0] == 1
    assert sorted(ids[1:]) == list(range(first, first + expected - 1))


def test_at_the_connection_limit_the_longest_idle_makes_room(make_daemon, fifo):
    d = make_daemon(workers=1, settings="max_connections = 3\n")
    with d.client() as c:
        task_id = gated_command(c, fifo("gate"))
        waiters = [greeted(d), greeted(d)]  # with `c`, the limit
        for i, sock in enumerate(waiters):
            sock.sendall(
                frame({"id": 1, "method": "wait", "params": {"task_ids": [task_id], "timeout": 60 + i}})
            )
        # Every connection has a call under way, or was used last: `c` is the one idle longest.
        with d.client() as newcomer:
            assert newcomer.status()["pid"] == d.proc.pid
        assert closed_by_daemon(c._sock, 20)
        # Now the waits are all there is, and a wait is not idle: a newcomer is refused, in a sentence.
        blocker = greeted(d)  # takes the place the newcomer left
        blocker.sendall(frame({"id": 1, "method": "wait", "params": {"task_ids": [task_id], "timeout": 62}}))
        with pytest.raises(Unavailable, match="already serves 3 connections, its limit"):
            Client(d.socket)
        for sock in (*waiters, blocker):
            assert not select.select([sock], [], [], 0)[0]  # still open, still waiting
        d.wait_for_log("3 connections, the limit")


def test_idle_connections_are_closed_but_not_waits_nor_subscriptions(make_daemon, fifo):
    d = make_daemon(workers=1, settings="idle_timeout = 0.5\n")
    gate = fifo("gate")
    with d.client() as c:
        task_id = gated_command(c, gate)
    waiting = greeted(d)
    waiting.sendall(frame({"id": 1, "method": "wait", "params": {"task_ids": [task_id]}}))
    with Client(d.socket) as c:
        stream = c.events(task_ids=[task_id])
        idle = greeted(d)  # opened last: closed last, if the others were idle too
        assert closed_by_daemon(idle, 20)
        assert not select.select([waiting], [], [], 0)[0]
        assert not stream.ready(0)
        # A client whose connection was closed while it asked nothing connects again by itself.
        assert closed_by_daemon_peek(c._sock, 20)
        assert c.get(task_id)["status"] == "running"
        gate.write()
        assert protocol.recv_frame(waiting)["result"]["tasks"][0]["status"] == "completed"
        assert any(e["status"] == "completed" for e in stream)
        stream.close()


def closed_by_daemon_peek(sock: socket.socket, timeout: float) -> bool:
    """True once the daemon has closed `sock`, reading nothing from it."""
    if not select.select([sock], [], [], timeout)[0]:
        return False
    return sock.recv(1, socket.MSG_PEEK) == b""


def test_idle_connections_cannot_use_up_the_daemons_descriptors(make_daemon, fifo):
    d = make_daemon(workers=1)
    with d.client() as c:
        task_id = gated_command(c, fifo("gate"))
    _, hard = resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (200, hard))  # as `ulimit -n 200`
    idle: list[socket.socket] = []
    try:
        for _ in range(400):  # twice the daemon's descriptors
            idle.append(connect(d, timeout=20))
        with d.client() as c:  # served: the idle longest made room
            assert c.status()["pid"] == d.proc.pid
            answer = c.cancel(task_id, running=True)  # needs descriptors of the daemon's own
            assert answer["task"]["status"] == "cancelled"
        still_open = [s for s in idle if not closed_by_daemon(s, 0)]
        assert 0 < len(still_open) < 200 - rpc.FD_RESERVE_BASE
        assert "Too many open files" not in d.log and "out of system resource" not in d.log
    finally:
        for sock in idle:
            sock.close()


def test_large_frames_of_many_connections_are_read_within_a_bound(daemon):
    """Each connection may send a frame of up to 16 MiB; the daemon reads at most rpc.LARGE_FRAMES of
    such frames at once, the others when there is room, instead of holding them all."""
    n, pad = 8, 12 * 1024 * 1024
    request = frame({"id": 1, "method": "count", "params": {}, "pad": b"x" * pad})
    socks = [greeted(daemon) for _ in range(n)]
    sent = [0] * n
    for sock in socks:
        sock.setblocking(False)
    while True:
        # All but the last byte: frames under way, which the daemon must hold until they end.
        unsent = [s for s, k in zip(socks, sent, strict=True) if k < len(request) - 1]
        _, writable, _ = select.select([], unsent, [], 2.0)
        if not writable:
            break  # none was read from for a while: the daemon holds what it can
        for sock in writable:
            i = socks.index(sock)
            with contextlib.suppress(BlockingIOError):
                sent[i] += sock.send(request[sent[i] : min(sent[i] + 1024 * 1024, len(request) - 1)])
    assert sum(sent) < rpc.LARGE_FRAMES + n * 2 * 1024 * 1024, f"the daemon read {sum(sent)} bytes"
    # As frames are answered, the room they had goes to the others: every one is answered.
    for sock in socks:
        sock.setblocking(True)
        sock.settimeout(60)
    threads = [
        threading.Thread(target=sock.sendall, args=(request[k:],))
        for sock, k in zip(socks, sent, strict=True)
    ]
    for t in threads:
        t.start()
    for sock in socks:
        assert protocol.recv_frame(sock) == {"id": 1, "result": 0}
    for t in threads:
        t.join(60)


class ScriptedServer:
    """A stand-in for the daemon on a socket of the test's own: it greets each client, answers as
    many requests on each connection as `answers` says (then, if `unanswered`, reads one more), and
    closes that connection. It records every request it read, by connection."""

    def __init__(self, path, answers: list[int], unanswered: bool = False) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.answers = answers
        self.unanswered = unanswered
        self.requests: list[list[str]] = []
        self.closed = [threading.Event() for _ in answers]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for answered, closed in zip(self.answers, self.closed, strict=True):
            sock, _ = self.listener.accept()
            seen: list[str] = []
            self.requests.append(seen)
            with sock:
                hello = protocol.recv_frame(sock)
                seen.append(hello["method"])
                sock.sendall(frame({"id": hello["id"], "result": {"protocol": protocol.PROTOCOL_VERSION}}))
                for _ in range(answered):
                    request = protocol.recv_frame(sock)
                    seen.append(request["method"])
                    sock.sendall(frame({"id": request["id"], "result": len(seen)}))
                if self.unanswered:
                    seen.append(protocol.recv_frame(sock)["method"])
            closed.set()

    def pending_connection(self) -> bool:
        return bool(select.select([self.listener], [], [], 0)[0])


def test_a_connection_closed_between_calls_is_opened_again_for_the_next(tmp_path):
    server = ScriptedServer(tmp_path / "sock", answers=[1, 1])
    with Client(tmp_path / "sock") as c:
        assert c.count() == 2
        assert server.closed[0].wait(20)  # as the daemon closes an idle connection
        assert c.count() == 2  # sent again, on a new connection: the first never got it
    server.thread.join(20)
    assert server.requests == [["hello", "count"], ["hello", "count"]]


def test_a_request_the_daemon_may_have_read_is_not_sent_again(tmp_path):
    server = ScriptedServer(tmp_path / "sock", answers=[0], unanswered=True)
    with Client(tmp_path / "sock") as c:
        with pytest.raises(Unavailable, match="closed the connection"):
            c.set_priority("task_1", 3)
        assert server.closed[0].wait(20)
        assert not server.pending_connection()
    assert server.requests == [["hello", "set_priority"]]
