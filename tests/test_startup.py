"""What the daemon trusts at start (its folders, the path it listens on), and whom clients talk to."""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path

import pytest
from conftest import Daemon

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


def test_store_files_are_private(daemon):
    with daemon.client() as c:
        c.submit("noop", {})
    files = [
        daemon.state_dir / name for name in ("tasks.db", "tasks.db-wal", "tasks.db-shm", "msearchd.lock")
    ]
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
