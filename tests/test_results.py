"""What a handler returns becomes its task's result: stored, read back, sent with the events, shown."""

from __future__ import annotations

import json

import pytest

from msearchd.service import FANOUT_CHUNK
from msearchd.worker import RESULT_MAX_BYTES

VALUE = {"paths": ["/a/b.webp"], "bytes": 1234, "frames": 12, "ok": True, "ratio": 0.5}


def finished(client, task_id):
    done = client.wait([task_id], timeout=20)
    assert not done["timed_out"]
    return done["tasks"][0]


def test_a_returned_value_is_the_task_s_result_in_reads_events_and_the_cli(daemon, client):
    with client.events(types=["returns"]) as stream:
        task = client.submit("returns", {"value": VALUE})
        ended = next(e for e in stream if e["event"] == "completed")
    assert ended["result"] == VALUE
    assert finished(client, task["id"])["result"] == VALUE
    assert client.get(task["id"])["result"] == VALUE
    assert client.list(status="completed")[0]["result"] == VALUE
    shown = daemon.ctl("tasks", "show", task["id"])
    assert shown.returncode == 0, shown.stderr
    (line,) = [ln for ln in shown.stdout.splitlines() if ln.startswith("result")]
    assert json.loads(line.split(None, 1)[1]) == VALUE
    as_json = daemon.ctl("tasks", "show", task["id"], "--json")
    assert json.loads(as_json.stdout)["result"] == VALUE


def test_a_result_survives_a_restart(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        task = c.submit("returns", {"value": [1, "two"]})
        finished(c, task["id"])
    d.stop()
    d.start()
    with d.client() as c:
        assert c.get(task["id"])["result"] == [1, "two"]


def test_a_handler_that_returns_nothing_leaves_no_result(client):
    assert finished(client, client.submit("returns")["id"])["result"] is None


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"not_json": True}, "the handler returned a result with no JSON form: "),
        ({"value": "x" * RESULT_MAX_BYTES}, f"at most {RESULT_MAX_BYTES} are kept"),
        ({"infinite": True}, "the handler returned a result with no JSON form: "),
    ],
)
def test_a_result_with_no_json_form_or_too_large_fails_the_task(client, data, error):
    done = finished(client, client.submit("returns", data)["id"])
    assert done["status"] == "failed"
    assert error in done["error"]
    assert done["result"] is None


def test_a_handler_cancels_the_waiting_tasks_it_replaces_and_leaves_the_others(client):
    gate = client.submit("command", {"argv": ["sh", "-c", "exit 1"]})
    finished(client, gate["id"])
    blocked = client.submit("noop", depends_on=[gate["id"]])
    done = client.submit("noop")
    finished(client, done["id"])
    replacer = client.submit("replacer", {"cancel": [blocked["id"], done["id"]]}, priority=1)
    ended = finished(client, replacer["id"])
    assert ended["status"] == "completed", ended["error"]
    assert ended["result"] == [blocked["id"]]
    assert client.get(blocked["id"])["status"] == "cancelled"
    assert client.get(blocked["id"])["stop_reason"] == "not_started"
    assert client.get(done["id"])["status"] == "completed"


def test_a_handler_asks_which_types_have_a_handler(client):
    types = ["noop", "file_embed_image", "thumbnail_generate"]
    done = finished(client, client.submit("asks", {"types": types})["id"])
    assert done["result"] == {"noop": True, "file_embed_image": False, "thumbnail_generate": True}


def test_the_rest_shim_shows_a_task_s_result(make_daemon):
    from test_http import start_with_shim

    d, shim = start_with_shim(make_daemon, workers=1)
    with d.client() as c:
        task = c.submit("returns", {"value": VALUE})
        finished(c, task["id"])
        got = shim.get(f"/tasks/{task['id']}")
    assert got.status == 200
    assert got.body["result"] == VALUE
    d.stop()


def test_a_replaced_task_with_more_dependents_than_one_chunk_takes_all_of_them_along(daemon, client):
    gate = client.submit("command", {"argv": ["sh", "-c", "exit 1"]})
    finished(client, gate["id"])
    blocked = client.submit("noop", depends_on=[gate["id"]])
    many = client.submit_many([{"type": "noop", "depends_on": [blocked["id"]]}] * (FANOUT_CHUNK + 500))
    replacer = client.submit("replacer", {"cancel": [blocked["id"]]}, priority=1)
    ended = finished(client, replacer["id"])
    assert ended["status"] == "completed", ended["error"]
    assert ended["result"] == [blocked["id"]]
    done = client.wait(many["task_ids"], timeout=60)
    assert not done["timed_out"]
    assert {t["status"] for t in done["tasks"]} == {"cancelled"}
    assert daemon.stop() == 0
    daemon.wait_for_log("msearchd: stopped")  # what it wrote while the handler ran has been read
    assert "never awaited" not in daemon.log
