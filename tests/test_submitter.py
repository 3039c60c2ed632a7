"""Who submitted a task is in its history, whichever way it was submitted."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from msearchd.model import TaskStatus
from msearchd.store import MIGRATIONS, Store


def submitted(client, task_id: str) -> dict:
    first = client.history(task_id)[0]
    assert first["event"] == "submitted"
    return first


def test_every_way_of_submitting_records_who_asked(daemon, client):
    me = (os.getuid(), os.getpid())
    one = client.submit("file_scan", {})
    with client.pipeline() as p:  # several submits that arrive together: written with one statement
        for _ in range(3):
            p.submit("file_scan", {})
    many = client.submit_many([{"type": "file_scan"}, {"type": "file_scan"}])["task_ids"]
    failed = client.submit("fail", {"message": "nope"})
    client.wait([failed["id"]], timeout=60)
    retry = client.retry(failed["id"])["new_task_id"]
    ids = [one["id"], *(t["id"] for t in p.results), *many, retry]
    for task_id in ids:
        entry = submitted(client, task_id)
        assert (entry["uid"], entry["pid"]) == me, (task_id, entry)
    added = daemon.ctl("tasks", "add", "file_scan").stdout.strip()
    entry = submitted(client, added)
    assert entry["uid"] == os.getuid() and entry["pid"] not in (None, os.getpid(), daemon.proc.pid)
    assert f"(uid {os.getuid()}, pid {entry['pid']})" in daemon.ctl("tasks", "history", added).stdout


def test_a_store_of_the_first_schema_is_upgraded(tmp_path: Path):
    path = tmp_path / "tasks.db"
    db = sqlite3.connect(path)
    db.executescript(f"{MIGRATIONS[0]} PRAGMA user_version=1;")
    db.execute(
        "INSERT INTO tasks (type, status, priority, data, created_at) VALUES ('t', 'pending', 6, x'80', 1.0)"
    )
    db.commit()
    db.close()
    store = Store(path)
    try:
        assert store.submitter(1) == (None, None)
        new = store.insert(
            task_type="t", data={}, priority=6, status=TaskStatus.PENDING, created_at=2.0, submitter=(5, 6)
        )
        assert store.submitter(new) == (5, 6)
    finally:
        store.close()
