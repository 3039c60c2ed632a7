"""A full disk under the state folder: each request is told in one sentence, the daemon logs it once."""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
from pathlib import Path

import msgpack
import pytest
from conftest import MSEARCHD
from support import wait_started

from msearchd import protocol
from msearchd.errors import Unavailable

pytestmark = pytest.mark.skipif(
    os.getuid() != 0 and os.environ.get("CI") != "true",
    reason="needs root, to mount a small tmpfs as the state folder",
)


@pytest.fixture
def small_disk(make_daemon):
    """Factory: a daemon, not started, whose state folder is a tmpfs of a few MB."""
    mounted = []

    def factory(**kwargs):
        d = make_daemon(start=False, **kwargs)
        d.state_dir.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(d.state_dir)], check=True
        )
        mounted.append(d)
        return d

    yield factory
    for d in mounted:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
        subprocess.run(["umount", "-l", str(d.state_dir)], check=True)


def fill(folder: Path) -> Path:
    """Take every free block of the disk holding `folder`; returns the file that holds them."""
    path = folder / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return path


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


def test_each_refused_request_gets_its_own_answer_and_the_connection_stays_open(small_disk):
    d = small_disk(workers=1).start()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(str(d.socket))
    sock.sendall(frame({"id": 0, "method": "hello", "params": {"protocol": protocol.PROTOCOL_VERSION}}))
    assert "result" in protocol.recv_frame(sock)
    sock.sendall(frame({"id": 1, "method": "submit", "params": {"type": "file_scan"}}))
    assert protocol.recv_frame(sock)["result"]["status"] == "pending"
    filler = fill(d.state_dir)

    # Requests that arrive together share a commit: it fails, and each is told under its own id.
    sock.sendall(
        b"".join(frame({"id": i, "method": "submit", "params": {"type": "file_scan"}}) for i in (2, 3, 4))
    )
    answers = {a["id"]: a for a in (protocol.recv_frame(sock) for _ in range(3))}
    assert set(answers) == {2, 3, 4}
    for a in answers.values():
        assert a["error"]["code"] == "unavailable"
        assert a["error"]["message"].startswith(f"the disk holding {d.state_dir} is full: ")
    sock.sendall(frame({"id": 5, "method": "count", "params": {}}))
    assert protocol.recv_frame(sock) == {"id": 5, "result": 1}  # still open; reads work

    added = d.ctl("tasks", "add", "noop")
    assert added.returncode == 3
    assert added.stderr.startswith(f"msearchctl: the disk holding {d.state_dir} is full")
    assert len(added.stderr.splitlines()) == 1
    with d.client() as c, pytest.raises(Unavailable, match="is full"):
        c.submit("file_scan")

    # One line in the log for all of them, and no traceback.
    assert sum("ERROR msearchd.rpc" in ln for ln in d.lines) == 1, d.log
    assert "Traceback" not in d.log

    filler.unlink()
    sock.sendall(frame({"id": 6, "method": "submit", "params": {"type": "file_scan"}}))
    assert protocol.recv_frame(sock)["result"]["status"] == "pending"


def test_the_dispatcher_reports_a_full_disk_once_and_goes_on_when_there_is_room(small_disk, fifo):
    d = small_disk(workers=1).start()
    gate = fifo("gate")
    with d.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", f"read line < {gate}"]}, priority=0)
        wait_started(c, task["id"])
        filler = fill(d.state_dir)
        gate.write()  # the task ends: its outcome cannot be written
        d.wait_for_log("cannot record outcomes nor start tasks: the disk holding")
        d.wait_for_log("dispatching still fails (attempt 2)")
        assert sum("ERROR msearchd.service" in ln for ln in d.lines) == 1
        assert "Traceback" not in d.log
        filler.unlink()
        d.wait_for_log("dispatching works again")
        assert c.wait([task["id"]], timeout=20)["tasks"][0]["status"] == "completed"


def run_daemon(d) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MSEARCHD, "--workers", "1", "--config", str(d.config)],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_daemon_started_on_a_full_disk_serves_reads_when_it_need_not_write(small_disk):
    d = small_disk(workers=1).start()
    with d.client() as c:
        task = c.submit("file_scan")  # no handler: it fails at once
        assert c.wait([task["id"]], timeout=20)["tasks"][0]["status"] == "failed"
    d.kill9()  # nothing to settle; the store's files stay as they were
    fill(d.state_dir)
    d.start()
    with d.client() as c:
        assert c.get(task["id"])["status"] == "failed"
        with pytest.raises(Unavailable, match="is full"):
            c.submit("file_scan")
    assert "Traceback" not in d.log


def test_a_daemon_that_cannot_open_its_store_on_a_full_disk_exits_with_one_sentence(small_disk):
    d = small_disk(workers=1).start()
    with d.client() as c:
        c.submit("file_scan")
    assert d.stop() == 0  # a clean stop removes the files SQLite must make again to open the store
    fill(d.state_dir)
    proc = run_daemon(d)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith(f"msearchd: the disk holding {d.state_dir} is full (")
    assert proc.stderr.splitlines()[-1].endswith(
        "cannot open the task store; free some space and start msearchd again"
    )
    assert "Traceback" not in proc.stderr


def test_a_daemon_that_must_write_at_start_on_a_full_disk_exits_with_one_sentence(small_disk, fifo):
    d = small_disk(workers=1).start()
    gate = fifo("gate")
    with d.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", f"read line < {gate}"]}, priority=0)
        wait_started(c, task["id"])
    d.kill9()  # the running task is left for the next daemon to settle
    fill(d.state_dir)
    proc = run_daemon(d)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        f"msearchd: the disk holding {d.state_dir} is full (database or disk is full): cannot settle the "
        "tasks a previous daemon left running; free some space and start msearchd again"
    )
    assert "Traceback" not in proc.stderr


def test_a_new_state_folder_on_a_full_disk_stops_the_start_with_one_sentence(small_disk):
    d = small_disk(workers=1)
    fill(d.state_dir)
    proc = run_daemon(d)
    assert proc.returncode == 1
    assert f"msearchd: the disk holding {d.state_dir} is full" in proc.stderr.splitlines()[-1]
    assert "Traceback" not in proc.stderr


def test_a_submit_whose_commit_fails_starts_nothing_and_holds_no_room_of_its_type(small_disk):
    """A task submitted to an idle pool is claimed in its submit's commit; when that commit fails,
    the claim goes with it, and the type's limit (one at a time here) still lets the next one start."""
    d = small_disk(workers=1, config_extra="\n[type_limits]\nnoop = 1\n").start()
    with d.client() as c:
        c.wait([c.submit("noop")["id"]], timeout=20)  # the worker is up, and idle again
        filler = fill(d.state_dir)
        with pytest.raises(Unavailable, match="is full"):
            c.submit("noop")
        filler.unlink()
        task = c.submit("noop")["id"]
        assert c.wait([task], timeout=20)["tasks"][0]["status"] == "completed"
        assert c.count() == 2
