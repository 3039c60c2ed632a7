"""The live table of `msearchctl tasks watch`, fed events as the daemon sends them."""

from __future__ import annotations

from msearchctl.render import Board


def test_a_task_sent_back_to_the_queue_shows_pending_and_not_started():
    board = Board([])
    event = {"task_id": "task_1", "type": "quick"}
    board.apply({**event, "event": "started", "status": "running", "time": 10.0})
    assert (board.rows["task_1"]["status"], board.rows["task_1"]["started_at"]) == ("running", 10.0)
    board.apply({**event, "event": "requeued", "status": "pending", "time": 10.2})
    assert (board.rows["task_1"]["status"], board.rows["task_1"]["started_at"]) == ("pending", None)
    assert not board.done()


def test_a_task_taken_back_and_cancelled_shows_it_never_started():
    board = Board([])
    event = {"task_id": "task_2", "type": "quick"}
    board.apply({**event, "event": "started", "status": "running", "time": 10.0})
    board.apply(
        {**event, "event": "cancelled", "status": "cancelled", "stop_reason": "not_started", "time": 10.1}
    )
    row = board.rows["task_2"]
    assert (row["status"], row["started_at"], row["finished_at"]) == ("cancelled", None, 10.1)
    assert board.done()
