"""The live table of `msearchctl tasks watch`, fed events as the daemon sends them."""

from __future__ import annotations

import io

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


def drawn(board: Board, width: int) -> list[str]:
    """The board as a terminal of this width shows it, without colours."""
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False, color_system=None).print(board)
    return out.getvalue().splitlines()


def ran(board: Board, task_id: str, task_type: str, operation: str, end: dict) -> None:
    event = {"task_id": task_id, "type": task_type}
    board.apply({**event, "event": "started", "status": "running", "time": 10.0})
    progress = {"event": "progress", "status": "running", "progress": 0.4, "current_operation": operation}
    board.apply({**event, **progress, "time": 11.0})
    if end:
        board.apply({**event, "time": 12.0, **end})


LONG_OPERATION = "running sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do echo hello world; done' (pid 28913)"


def test_at_80_columns_each_task_is_one_line_with_its_whole_type():
    board = Board([])
    ran(board, "task_1", "image_preprocess", LONG_OPERATION, {})
    ran(board, "task_22", "thumbnail_generate", "thumbnail of /srv/photos/2026/12/a-long-name.jpg", {})
    lines = drawn(board, 80)
    assert len(lines) == 3, lines  # the header and one line a task: nothing wraps
    assert all(len(line) <= 80 for line in lines)
    assert "image_preprocess" in lines[1] and "thumbnail_generate" in lines[2]
    assert lines[1].rstrip().endswith("…") and "running sh -c" in lines[1]


def test_a_finished_task_shows_how_it_ended_not_its_last_operation():
    board = Board([])
    completed = {"event": "completed", "status": "completed"}
    ran(board, "task_1", "command", "running sleep 3 (pid 28913)", completed)
    failed = {"event": "failed", "status": "failed", "error": "command exited with code 3"}
    ran(board, "task_2", "command", "running false (pid 28914)", failed)
    cancelled = {"event": "cancelled", "status": "cancelled", "stop_reason": "sigterm"}
    ran(board, "task_3", "command", "running sleep 9 (pid 28915)", cancelled)
    _, done, fail, stop = drawn(board, 120)
    assert "running" not in done and "100%" in done and "━" in done
    assert fail.rstrip().endswith("command exited with code 3")
    assert "%" not in fail and "━" not in fail  # no empty bar for work that never completed
    assert stop.rstrip().endswith("stopped: sigterm") and "%" not in stop
    assert all(board.rows[t]["current_operation"] is None for t in ("task_1", "task_2", "task_3"))


def test_an_idle_watch_says_it_waits():
    lines = drawn(Board([]), 80)
    assert lines[-1] == "no active tasks; waiting for new ones"
    board = Board([])
    ran(board, "task_1", "command", "running sleep 3", {})
    assert "no active tasks" not in "\n".join(drawn(board, 80))


def test_the_board_shows_what_is_paused_as_the_events_say():
    board = Board([], paused=["quick"])
    assert "paused: quick" in drawn(board, 80)[0]
    board.apply({"event": "queue_paused", "type": "", "time": 0.0, "types": ["*"]})
    assert "queue paused: nothing starts" in drawn(board, 80)[0]
    board.apply({"event": "queue_resumed", "type": "", "time": 0.0, "types": ["*", "quick"]})
    assert not any("paused" in line for line in drawn(board, 80))
