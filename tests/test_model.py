"""Unit tests of the pure parts: the task model, the scheduler, the protocol schema, the config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from msearchd import config, protocol
from msearchd.errors import InvalidArgument, NotFound, ProtocolError, TooLarge, from_wire
from msearchd.model import (
    TERMINAL,
    TRANSITIONS,
    Task,
    TaskStatus,
    can_transition,
    default_priority,
    dependency_state,
    new_task_wire,
    parse_task_id,
    parse_task_ids,
    validate_data,
    validate_priority,
)
from msearchd.scheduler import Scheduler


@pytest.mark.parametrize(
    ("value", "expected"),
    [("task_12", 12), ("12", 12), (12, 12), (" task_3 ", 3), (1, 1), (2**63 - 1, 2**63 - 1)],
)
def test_task_ids(value, expected):
    assert parse_task_id(value) == expected


@pytest.mark.parametrize(
    "value",
    ["task_", "task_0", "0", "-1", "task_important_file", "", 0, -3, True, 1.0, None, 2**63, 2**64, {"a": 1}],
)
def test_bad_task_ids(value):
    with pytest.raises(InvalidArgument):
        parse_task_id(value)


@pytest.mark.parametrize(
    "values",
    [
        ["task_3", "task_12", "task_3", "task_999999999999999999"],
        ["task_1", 2, "3", " task_4 ", "TASK_5"],  # some not as written: each read alone
        ["task_1", "task_01"],
        [],
    ],
)
def test_a_list_of_task_ids_reads_as_each_id_alone(values):
    alone = list(dict.fromkeys(parse_task_id(v) for v in values))
    assert parse_task_ids(values) == alone


@pytest.mark.parametrize("value", ["task_1\x00task_2", "task_0", "task_1234567890123456789", "task_1x", ""])
def test_a_list_with_one_bad_task_id_is_refused(value):
    with pytest.raises(InvalidArgument, match="invalid task id"):
        parse_task_ids(["task_7", value, "task_8"])


def test_priorities():
    assert [validate_priority(p) for p in (0, 11)] == [0, 11]
    for bad in (-1, 12, "3", 3.0, True):
        with pytest.raises(InvalidArgument):
            validate_priority(bad)
    assert default_priority("file_embed_audio") == 3
    assert default_priority("audio_preprocess") == 7
    assert default_priority("preview_generate") == 10
    assert default_priority("something_else") == 6
    assert default_priority("thumbnail_generate", {"thumbnail_generate": 1}) == 1
    assert default_priority("file_embed_video", {"file_embed_*": 4}) == 4


def test_terminal_states_never_change():
    for status in TERMINAL:
        assert not TRANSITIONS[status]
        assert status.terminal
    assert can_transition(TaskStatus.BLOCKED, TaskStatus.PENDING)
    assert not can_transition(TaskStatus.BLOCKED, TaskStatus.RUNNING)
    assert not can_transition(TaskStatus.PENDING, TaskStatus.COMPLETED)
    assert can_transition(TaskStatus.RUNNING, TaskStatus.PENDING)  # interrupted by a daemon stop


def test_dependency_state():
    assert dependency_state([]) == (TaskStatus.PENDING, None)
    assert dependency_state([(1, TaskStatus.COMPLETED)]) == (TaskStatus.PENDING, None)
    assert dependency_state([(3, TaskStatus.RUNNING), (2, TaskStatus.PENDING)]) == (
        TaskStatus.BLOCKED,
        "waiting for task_2, task_3",
    )
    assert dependency_state([(3, TaskStatus.RUNNING), (2, TaskStatus.FAILED)]) == (
        TaskStatus.BLOCKED,
        "dependency task_2 failed",
    )


def test_wire_shape():
    wire = Task(
        id=5, type="x", status=TaskStatus.PENDING, priority=2, depends_on=[1, 2], retry_of=4
    ).to_wire()
    assert wire["id"] == "task_5"
    assert wire["depends_on"] == ["task_1", "task_2"]
    assert wire["retry_of"] == "task_4" and wire["retried_as"] is None
    assert wire["status"] == "pending"


@pytest.mark.parametrize(
    ("status", "deps", "reason"),
    [(TaskStatus.PENDING, [], None), (TaskStatus.BLOCKED, [3, 1], "waiting for task_1, task_3")],
)
def test_a_new_task_shows_as_its_task_would_field_by_field_in_order(status, deps, reason):
    task = Task(
        id=9,
        type="x",
        status=status,
        priority=4,
        data={"a": [1]},
        depends_on=deps,
        blocked_reason=reason,
        created_at=12.5,
    )
    wire = new_task_wire(9, "x", status, 4, {"a": [1]}, deps, reason, 12.5)
    assert list(wire.items()) == list(task.to_wire().items())
    assert protocol.pack(wire) == protocol.pack(task.to_wire())


def test_scheduler_limits():
    s = Scheduler({"file_embed_video": 1, "thumbnail_generate": 2})
    assert s.excluded_types() == []
    s.started("file_embed_video")
    s.started("thumbnail_generate")
    assert s.excluded_types() == ["file_embed_video"]
    s.started("thumbnail_generate")
    assert s.excluded_types() == ["file_embed_video", "thumbnail_generate"]
    s.finished("file_embed_video")
    s.finished("thumbnail_generate")
    assert s.excluded_types() == []
    assert s.running("thumbnail_generate") == 1


def test_protocol_framing_round_trip():
    message = {"id": 1, "method": "get", "params": {"task_id": "task_1"}}
    encoded = protocol.encode(message)
    assert int.from_bytes(encoded[:4], "big") == len(encoded) - 4
    assert protocol.decode(encoded[4:]) == message
    with pytest.raises(ProtocolError):
        protocol.frame_length((protocol.MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(TooLarge):
        protocol.encode({"blob": b"x" * (protocol.MAX_FRAME + 1)})


def test_a_too_large_answer_says_how_many_fit_and_the_next_part_is_that_many():
    from msearchd.client.methods import smaller_part

    told = from_wire(TooLarge("too much", fits=277).to_wire())
    assert isinstance(told, TooLarge) and (told.message, told.fits) == ("too much", 277)
    assert "fits" not in TooLarge("a frame too large").to_wire()
    for odd in (True, -1, "277", 2.5, None):
        assert from_wire({"code": "too_large", "message": "m", "fits": odd}).fits is None
    assert smaller_part(TooLarge("m", fits=277), 600) == 277
    assert smaller_part(TooLarge("m"), 600) == 300  # the daemon could not count: half as many
    assert smaller_part(TooLarge("m", fits=600), 600) == 300  # no fewer than asked: half as many
    for refusal, asked in ((TooLarge("m", fits=0), 600), (TooLarge("m"), 1)):  # not even one fits
        with pytest.raises(TooLarge) as raised:
            smaller_part(refusal, asked)
        assert raised.value is refusal


def test_check_params():
    assert protocol.check_params("cancel", {"task_id": 3}) == {"task_id": 3}
    with pytest.raises(ProtocolError, match="unknown method"):
        protocol.check_params("nope", {})
    with pytest.raises(InvalidArgument, match="needs the parameter 'task_id'"):
        protocol.check_params("get", {})
    with pytest.raises(InvalidArgument, match="needs the parameter 'priority'"):
        protocol.check_params("set_priority", {"task_ids": [1]})
    with pytest.raises(InvalidArgument, match="'running' of cancel must be bool"):
        protocol.check_params("cancel", {"task_id": 1, "running": 1})


def test_errors_travel_by_code():
    error = from_wire(NotFound("task task_1 does not exist").to_wire())
    assert isinstance(error, NotFound) and error.message == "task task_1 does not exist"
    odd = from_wire({"code": "future_code", "message": "m"})
    assert odd.code == "future_code"


def test_config_file_and_overrides(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text("workers = 3\ngrace = 2\n[priorities]\nthumbnail_generate = 1\n[type_limits]\nx = 2\n")
    s = config.load(path, {"workers": 5, "grace": None})
    assert (s.workers, s.grace, s.priorities, s.type_limits) == (5, 2.0, {"thumbnail_generate": 1}, {"x": 2})
    path.write_text("colour = 1\n")
    with pytest.raises(InvalidArgument, match="unknown setting"):
        config.load(path, {})
    path.write_text("[priorities]\nx = 12\n")
    with pytest.raises(InvalidArgument, match="from 0 to 11"):
        config.load(path, {})
    path.write_text("socket = 1\n")
    with pytest.raises(InvalidArgument, match="socket must be a string"):
        config.load(path, {})
    path.write_text("workers = \n")
    with pytest.raises(InvalidArgument, match="not valid TOML"):
        config.load(path, {})


def test_leading_zeros_do_not_count_against_the_id_length():
    assert parse_task_id("task_" + "0" * 30 + "42") == 42
    assert parse_task_id("007") == 7


def test_values_msgpack_cannot_carry_are_invalid_arguments():
    with pytest.raises(InvalidArgument, match="cannot send"):
        protocol.encode({"n": 2**70})
    with pytest.raises(InvalidArgument, match="cannot send"):
        protocol.encode({"x": object()})


def test_task_ids_are_read_in_any_case():
    assert parse_task_id("TASK_3") == 3
    assert parse_task_id("Task_12") == 12


def test_id_zero_is_told_that_ids_start_at_one():
    for value in ("0", "task_0", "000", 0):
        with pytest.raises(InvalidArgument, match="ids start at 1"):
            parse_task_id(value)
    with pytest.raises(InvalidArgument, match="expected task_<n> or <n>"):
        parse_task_id("job_3")


def test_task_data_must_have_a_json_form():
    validate_data({"a": [1, 2.5, "s", b"b", None, True, {"b": {}}], "n": 2**64 - 1})
    for bad, where in (
        ({"a": [0, float("nan")]}, "data.a[1] is nan"),
        ({"a": {1: 2}}, "data.a has the key 1"),
        ({"a": ()}, "data.a holds a msgpack tuple"),
    ):
        with pytest.raises(InvalidArgument, match=re.escape(where)):
            validate_data(bad)
    deep: dict = {}
    for _ in range(200):
        deep = {"k": deep}
    with pytest.raises(InvalidArgument, match=re.escape("data.k.k.k.k.k.k.k.k… is nested too deep")):
        validate_data(deep)
