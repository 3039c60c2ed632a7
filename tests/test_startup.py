"""What the daemon trusts at start (its folders, the path it listens on), and whom clients talk to."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from conftest import MSEARCHCTL, Daemon

from msearchd import config
from msearchd.client import AsyncClient, Client
from msearchd.errors import Unavailable
from msearchd.store import SCHEMA_VERSION, Store

NOBODY = 65534
STARTED = re.compile(r" INFO msearchd: msearchd \S+ listening on ")
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ DEBUG ")
as_root = pytest.mark.skipif(
    os.getuid() != 0 and os.environ.get("CI") != "true", reason="needs root to act as another user"
)


def refusal(d: Daemon) -> str:
    """Start `d`, which must refuse: exit 1 with one sentence on stderr, which is returned."""
    with contextlib.suppress(AssertionError):  # start() says it exited, unless it has yet to be reaped
        d.start()
    assert not started(d), "msearchd started:\n" + d.log
    assert d.proc is not None and d.proc.wait(timeout=30) == 1, d.log
    return refusal_of(d)


def started(d: Daemon) -> bool:
    return any(STARTED.search(line) for line in d.lines)


def refusal_of(d: Daemon) -> str:
    said = [line for line in d.lines if not LOG_LINE.match(line)]
    assert len(said) == 1 and said[0].startswith("msearchd: "), d.log
    return said[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the store --------------------------------------------------------------------------------------


def test_a_store_of_a_newer_msearchd_is_refused_in_one_sentence(make_daemon):
    import sqlite3

    d = make_daemon(start=False)
    d.state_dir.mkdir(mode=0o700)
    Store(d.state_dir / "tasks.db").close()
    db = sqlite3.connect(d.state_dir / "tasks.db")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 6}")
    db.close()
    assert refusal(d) == (
        f"msearchd: {d.state_dir}/tasks.db was written by a newer msearchd "
        f"(schema {SCHEMA_VERSION + 6}; this one knows up to {SCHEMA_VERSION})\n"
    )


@pytest.mark.parametrize("damage", ["not-sqlite", "truncated", "overwritten"])
def test_a_damaged_store_is_refused_in_one_sentence(make_daemon, damage):
    d = make_daemon(start=False)
    d.state_dir.mkdir(mode=0o700)
    db = d.state_dir / "tasks.db"
    if damage == "not-sqlite":
        db.write_text("these are my notes, not a database\n" * 200)
    else:
        store = Store(db)
        with store.transaction():
            for i in range(2000):
                store.insert(
                    task_type="x",
                    data={"i": i, "pad": "p" * 200},
                    priority=5,
                    status="pending",
                    created_at=1.0,
                )
        store.close()
        if damage == "truncated":
            os.truncate(db, 5000)
        else:
            with db.open("r+b") as f:
                f.seek(8 * 4096)
                f.write(b"\xa5" * 16 * 4096)
    assert refusal(d).startswith(f"msearchd: {db} is not a msearch database or is damaged: ")
    assert not d.socket.exists()


def test_store_files_are_private(daemon):
    with daemon.client() as c:
        c.submit("noop", {})
    files = [
        daemon.state_dir / name for name in ("tasks.db", "tasks.db-wal", "tasks.db-shm", "msearchd.lock")
    ]
    files.append(config.socket_lock_path(daemon.socket))
    assert {f.name: oct(mode(f)) for f in files} == {f.name: oct(0o600) for f in files}


def test_store_files_an_older_daemon_made_readable_become_private(make_daemon):
    d = make_daemon(start=False)
    d.state_dir.mkdir(mode=0o700)
    Store(d.state_dir / "tasks.db").close()
    (d.state_dir / "tasks.db").chmod(0o644)
    (d.state_dir / "msearchd.lock").touch(mode=0o644)
    d.start()
    assert oct(mode(d.state_dir / "tasks.db")) == oct(0o600)
    assert oct(mode(d.state_dir / "msearchd.lock")) == oct(0o600)


# --- folders ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder_mode", [0o777, 0o770, 0o702])
def test_a_state_folder_others_can_write_is_refused(make_daemon, folder_mode):
    d = make_daemon(start=False)
    d.state_dir.mkdir()
    d.state_dir.chmod(folder_mode)
    line = refusal(d)
    assert f"the state folder {d.state_dir} can be written by other users (mode {folder_mode:o})" in line
    assert not (d.state_dir / "tasks.db").exists()


def test_a_log_folder_others_can_write_is_refused(make_daemon):
    d = make_daemon(start=False)
    (d.state_dir / "logs").mkdir(parents=True)
    (d.state_dir / "logs").chmod(0o777)
    assert "the task log folder" in refusal(d)


def test_a_state_folder_others_can_only_read_is_used(make_daemon):
    d = make_daemon(start=False)
    d.state_dir.mkdir()
    d.state_dir.chmod(0o755)
    d.start()
    with d.client() as c:
        assert c.status()["pid"] == d.proc.pid


@as_root
def test_a_state_folder_of_another_user_is_refused(make_daemon):
    d = make_daemon(start=False)
    d.state_dir.mkdir(mode=0o700)
    os.chown(d.state_dir, NOBODY, NOBODY)
    assert f"the state folder {d.state_dir} belongs to uid {NOBODY}, not to this user" in refusal(d)
    assert not (d.state_dir / "tasks.db").exists()


def test_a_socket_folder_others_can_write_is_refused(make_daemon):
    d = make_daemon(start=False)
    d.socket.parent.mkdir()
    d.socket.parent.chmod(0o777)
    assert f"the socket folder {d.socket.parent} can be written by other users" in refusal(d)
    assert not d.socket.exists()


@pytest.fixture
def squat_folder() -> Iterator[Path]:
    """A folder in /tmp that another user (nobody) made, as one squatting /tmp/msearch-UID would."""
    folder = Path(tempfile.mkdtemp(prefix="ms-squat-", dir="/tmp"))
    os.chown(folder, NOBODY, NOBODY)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@as_root
def test_the_daemon_refuses_a_socket_folder_of_another_user(make_daemon, squat_folder):
    d = make_daemon(start=False, extra_args=("--socket", str(squat_folder / "msearchd.sock")))
    assert f"the socket folder {squat_folder} belongs to uid {NOBODY}, not to this user" in refusal(d)


def test_the_start_line_names_the_socket_and_the_state_folder_in_full(make_daemon):
    d = make_daemon(start=False)
    d.socket.parent.mkdir(mode=0o700)
    d.extra_args = ("--socket", os.path.relpath(d.socket), "--state-dir", os.path.relpath(d.state_dir))
    d.start()
    line = d.wait_for_log(" listening on ")
    assert f" listening on {d.socket} with " in line
    assert line.endswith(f"; state in {d.state_dir}\n")
    with d.client() as c:
        assert c.status()["pid"] == d.proc.pid


# --- the path given as the socket -------------------------------------------------------------------


def test_a_file_that_is_not_a_socket_is_never_removed(make_daemon):
    d = make_daemon(start=False)
    notes = d.root / "notes.txt"
    notes.write_text("keep me\n")
    d.extra_args = ("--socket", str(notes))
    assert f"{notes} exists and is not a socket" in refusal(d)
    assert notes.read_text() == "keep me\n"


def test_the_store_given_as_the_socket_keeps_its_tasks(make_daemon):
    owner = make_daemon(start=False)
    owner.state_dir.mkdir(mode=0o700)
    store = Store(owner.state_dir / "tasks.db")
    store.insert(task_type="x", data={}, priority=5, status="pending", created_at=1.0)
    store.close()
    other = make_daemon(start=False, extra_args=("--socket", str(owner.state_dir / "tasks.db")))
    assert "tasks.db exists and is not a socket" in refusal(other)
    owner.start()
    with owner.client() as c:
        assert [t["type"] for t in c.list()] == ["x"]


def test_a_socket_left_by_a_killed_daemon_is_replaced(make_daemon):
    d = make_daemon(start=False)
    d.socket.parent.mkdir(mode=0o700)
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(d.socket))
    left.close()  # the file stays, with nobody listening
    d.start()
    with d.client() as c:
        assert c.status()["pid"] == d.proc.pid


def _start_quietly(d: Daemon) -> None:
    with contextlib.suppress(AssertionError):  # the loser: the test looks at its exit
        d.start()
    if not started(d):
        assert d.proc is not None
        d.proc.wait(timeout=30)


def test_of_two_daemons_started_together_on_one_socket_one_serves(make_daemon):
    shared = make_daemon(start=False).root / "shared" / "msearchd.sock"
    shared.parent.mkdir(mode=0o700)
    for _ in range(4):
        pair = [make_daemon(start=False, extra_args=("--socket", str(shared))) for _ in range(2)]
        starters = [threading.Thread(target=_start_quietly, args=(d,)) for d in pair]
        for t in starters:
            t.start()
        for t in starters:
            t.join(60)
        serving = [d for d in pair if d.proc is not None and d.proc.poll() is None]
        assert len(serving) == 1, "\n".join(d.log for d in pair)
        winner = serving[0]
        loser = pair[1 - pair.index(winner)]
        assert loser.proc is not None and loser.proc.returncode == 1
        assert f"listening on {shared}" in refusal_of(loser), loser.log
        # The loser has exited: the socket is still the winner's.
        with Client(shared) as c:
            assert c.status()["pid"] == winner.proc.pid
        assert winner.stop() == 0
        assert not shared.exists()


def test_stopping_leaves_alone_a_socket_put_in_place_of_ours(daemon):
    daemon.socket.unlink()
    newcomer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    newcomer.bind(str(daemon.socket))
    newcomer.listen()
    try:
        inode = daemon.socket.lstat().st_ino
        assert daemon.stop() == 0
        assert daemon.socket.lstat().st_ino == inode
    finally:
        newcomer.close()


# --- whom clients talk to ---------------------------------------------------------------------------


def test_clients_refuse_a_socket_folder_others_can_write(daemon):
    daemon.socket.parent.chmod(0o777)
    with pytest.raises(Unavailable, match="can be written by other users"):
        Client(daemon.socket)
    with pytest.raises(Unavailable, match="can be written by other users"):
        asyncio.run(AsyncClient.connect(daemon.socket))
    ctl = daemon.ctl("daemon", "status")
    assert ctl.returncode == 3
    assert ctl.stderr.count("\n") == 1 and "can be written by other users" in ctl.stderr
    daemon.socket.parent.chmod(0o700)
    with daemon.client() as c:
        assert c.status()["pid"] == daemon.proc.pid


def test_a_missing_socket_folder_is_an_unreachable_daemon(tmp_path):
    (tmp_path / "a-file").write_text("")
    for path in (tmp_path / "missing" / "msearchd.sock", tmp_path / "a-file" / "sub" / "msearchd.sock"):
        with pytest.raises(Unavailable, match=f"cannot reach msearchd at {path} "):
            Client(path)
        with pytest.raises(Unavailable, match=f"cannot reach msearchd at {path} "):
            asyncio.run(AsyncClient.connect(path))


class Squatter:
    """A server run by another user (nobody) on `path`: it answers every request as msearchd would and
    reports, for each connection in turn, how many bytes it was sent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        reports, self._report_to = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(reports)
                self._serve()
            finally:
                os._exit(0)
        os.close(self._report_to)
        self._reports = os.fdopen(reports, "rb", buffering=0)
        self._buffer = b""
        assert self._line() == "ready"

    def _serve(self) -> None:
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen()
        os.write(self._report_to, b"ready\n")
        while True:
            conn, _ = server.accept()
            conn.settimeout(30)
            received = b""
            unanswered = b""
            with contextlib.suppress(OSError):
                while chunk := conn.recv(65536):
                    received += chunk
                    unanswered += chunk
                    while (
                        len(unanswered) >= 4 and len(unanswered) >= 4 + struct.unpack(">I", unanswered[:4])[0]
                    ):
                        size = struct.unpack(">I", unanswered[:4])[0]
                        request = msgpack.unpackb(unanswered[4 : 4 + size])
                        unanswered = unanswered[4 + size :]
                        body = msgpack.packb(
                            {"id": request.get("id"), "result": {"protocol": 1, "id": "task_666"}}
                        )
                        conn.sendall(struct.pack(">I", len(body)) + body)
            conn.close()
            os.write(self._report_to, f"{len(received)}\n".encode())

    def _line(self, timeout: float = 30.0) -> str:
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self._reports], [], [], timeout)
            assert ready, "the squatter reported nothing"
            chunk = self._reports.read(4096)
            assert chunk, "the squatter died"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def received(self) -> list[int]:
        """Bytes sent on each connection made since the last call: ends with one of the test's own."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(self.path))
        probe.sendall(b"end")
        probe.close()
        sizes = []
        while (size := int(self._line())) != 3:
            sizes.append(size)
        return sizes

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        self._reports.close()


@pytest.fixture
def squatter(squat_folder: Path) -> Iterator[Squatter]:
    s = Squatter(squat_folder / "msearchd.sock")
    yield s
    s.close()


SECRET_COMMAND = ("sh", "-c", "curl -H 'Authorization: Bearer s3cr3t' http://example.invalid/")


@as_root
@pytest.mark.parametrize(
    ("folder_is_ours", "reason", "received"),
    [
        (False, f"belongs to uid {NOBODY}, not to this user", []),  # not even connected
        (True, f"served by uid {NOBODY} ", [0, 0, 0]),  # connected, checked, hung up
    ],
    ids=["socket in another user's folder", "server of another user"],
)
def test_clients_send_nothing_to_a_socket_of_another_user(squatter, folder_is_ours, reason, received):
    if folder_is_ours:  # the folder is this user's now, private; the server in it is still nobody's
        os.chown(squatter.path.parent, os.getuid(), os.getgid())
        squatter.path.parent.chmod(0o700)
    with pytest.raises(Unavailable, match=reason):
        Client(squatter.path)
    with pytest.raises(Unavailable, match=reason):
        asyncio.run(AsyncClient.connect(squatter.path))
    ctl = subprocess.run(
        [MSEARCHCTL, "--socket", str(squatter.path), "tasks", "add", "command", "--", *SECRET_COMMAND],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ctl.returncode == 3, ctl.stdout + ctl.stderr
    assert ctl.stderr.count("\n") == 1 and "refusing to talk to msearchd" in ctl.stderr
    assert reason in ctl.stderr
    assert "task_666" not in ctl.stdout
    assert squatter.received() == received
