"""submit_many checks each task as `submit` does and stores what `submit` stores, whichever way a
task is checked: a plain task of a type seen before directly, any other through `submit`'s checks."""

from __future__ import annotations

import math

import msgpack
import pytest

from msearchd.errors import MsearchError
from msearchd.model import DATA_DEPTH_MAX

FIELDS = ("type", "status", "priority", "data", "depends_on", "blocked_reason")


def stored(client, task_id: str) -> tuple:
    task = client.get(task_id)
    return tuple(task[f] for f in FIELDS)


def test_a_batch_stores_each_task_as_submit_stores_it(client):
    client.pause()  # nothing starts: every task keeps the status it was given
    dep = client.submit("file_scan")["id"]
    items = [
        {"type": "file_scan"},  # a type not seen in this batch yet
        {"type": "file_scan", "data": {"a": [1, {"b": None}], "s": "x", "f": 1.5, "raw": b"\x00"}},
        {"type": "file_scan", "priority": 0},
        {"type": "file_scan", "priority": None},
        {"type": "file_scan", "data": {}},
        {"type": "other.kind"},
        {"type": "other.kind", "priority": 3},
        {"type": "other.kind"},
        {"type": "file_scan", "depends_on": [dep]},
        {"type": "file_scan", "depends_on": []},
        {"type": "file_scan", "key": None},
        {"type": "command", "data": {"argv": ["true"]}},
        {"type": "file_scan"},
        {"type": "third.kind", "priority": 2},  # met first with a priority of its own
        {"type": "third.kind"},
        {"type": "third.kind", "priority": 0},
    ]
    batch = client.submit_many(items)["task_ids"]
    singles = [client.call("submit", **item)["id"] for item in items]
    assert len(set(batch)) == len(items)
    assert [stored(client, i) for i in batch] == [stored(client, i) for i in singles]
    blocked = client.get(batch[8])
    assert blocked["status"] == "blocked" and blocked["depends_on"] == [dep]


def nested(depth: int) -> dict:
    data: dict = {}
    for _ in range(depth):
        data = {"a": data}
    return data


REFUSED = [
    {"type": "file_scan", "priority": 99},
    {"type": "file_scan", "priority": -1},
    {"type": "file_scan", "priority": True},
    {"type": "file_scan", "priority": 1.5},
    {"type": "file_scan", "priority": "1"},
    {"type": "file_scan", "data": None},
    {"type": "file_scan", "data": [1]},
    {"type": "file_scan", "data": {"x": math.nan}},
    {"type": "file_scan", "data": {"x": math.inf}},
    {"type": "file_scan", "data": nested(DATA_DEPTH_MAX + 1)},
    {"type": "file_scan", "data": {"when": msgpack.Timestamp(1)}},
    {"type": "file_scan", "data": {"big": "x" * (1 << 21)}},
    {"type": "file_scan", "bogus": 1},
    {"type": "file_scan", "depends_on": ["task_999999"]},
    {"type": "bad type"},
    {"type": 7},
    {"data": {}},
    {"type": "command", "data": {}},
]


@pytest.mark.parametrize("met_with", [None, 4], ids=["default-priority", "own-priority"])
@pytest.mark.parametrize("item", REFUSED, ids=range(len(REFUSED)))
def test_a_refused_task_refuses_the_batch_with_submits_answer(client, item, met_with):
    # Its type is one submit_many has met, with or without a priority of its own: plain tasks of it go
    # the short way.
    client.submit("file_scan", priority=met_with)
    before = client.count()
    with pytest.raises(MsearchError) as single:
        client.call("submit", **item)
    for batch in (
        [item],
        [{"type": "file_scan"}, item],
        [{"type": "file_scan"}, {"type": "file_scan"}, item],
    ):
        with pytest.raises(MsearchError) as refused:
            client.submit_many(batch)
        assert type(refused.value) is type(single.value)
        assert refused.value.message == f"tasks[{len(batch) - 1}]: {single.value.message}"
    assert client.count() == before


def test_what_submit_many_alone_refuses(client):
    client.submit("file_scan")
    for item, message in [
        ("file_scan", "tasks[1] must be a map"),
        (
            {"type": "file_scan", "key": "k"},
            "tasks[1]: submit_many takes no keys; submit keyed tasks one by one",
        ),
    ]:
        with pytest.raises(MsearchError) as refused:
            client.submit_many([{"type": "file_scan"}, item])
        assert refused.value.message == message
    assert client.count() == 1
