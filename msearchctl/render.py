"""Human output: rich tables on a terminal, plain tab-separated lines in a pipe.

Imported only by the commands that print tables, so that rich costs nothing to the others. Text that
comes from tasks (errors, current operations, type names) goes into rich as `Text`, never as markup:
a `[/x]` in a command's error would otherwise be read as a tag, or be an error of its own.
"""

from __future__ import annotations

import sys
import time
from typing import Any

STATUS_STYLE = {
    "pending": "cyan",
    "blocked": "yellow",
    "running": "bold blue",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "dim",
}


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _json(value: Any) -> str:
    """Task data as JSON, as it was given; bytes (from the Python API) shown as text."""
    import json

    def as_text(item: Any) -> str:
        if isinstance(item, bytes):
            return item.decode("utf-8", "backslashreplace")
        raise TypeError(f"{type(item).__name__} is not JSON serializable")

    return json.dumps(value, ensure_ascii=False, default=as_text)


def _progress(task: dict[str, Any]) -> str:
    return f"{task['progress'] * 100:.0f}%" if task["status"] == "running" else ""


def _note(task: dict[str, Any]) -> str:
    operation = task["current_operation"] if task["status"] == "running" else None
    if task["status"] == "running" and task.get("host"):  # a daemon of a shared store runs it
        operation = f"on {task['host']}: {operation or ''}".rstrip(": ")
    return task["error"] or task["blocked_reason"] or operation or ""


def task_table(tasks: list[dict[str, Any]]) -> None:
    columns = ("ID", "TYPE", "STATUS", "PRI", "PROGRESS", "CREATED", "NOTE")
    rows = [
        (t["id"], t["type"], t["status"], str(t["priority"]), _progress(t), _when(t["created_at"]), _note(t))
        for t in tasks
    ]
    if not sys.stdout.isatty():
        for row in rows:
            print("\t".join(row))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*columns, box=None, header_style="bold")
    for row in rows:
        cells = [Text(cell) for cell in row]
        cells[2].stylize(STATUS_STYLE[row[2]])
        table.add_row(*cells)
    console = Console()
    console.print(table if rows else "no tasks")


def task_detail(task: dict[str, Any]) -> None:
    fields: list[tuple[str, Any]] = [
        ("id", task["id"]),
        ("type", task["type"]),
        ("status", task["status"]),
        ("priority", task["priority"]),
        ("progress", f"{task['progress'] * 100:.0f}%"),
        ("operation" if task["status"] == "running" else "last operation", task["current_operation"]),
        ("attempts", task["attempts"]),
        ("error", task["error"]),
        ("blocked", task["blocked_reason"]),
        ("stopped", task["stop_reason"]),
        ("depends on", ", ".join(task["depends_on"]) or None),
        ("retry of", task["retry_of"]),
        ("retried as", task["retried_as"]),
        ("created", _when(task["created_at"])),
        ("started", _when(task["started_at"]) if task["started_at"] else None),
        ("finished", _when(task["finished_at"]) if task["finished_at"] else None),
        ("worker pid", task["worker_pid"]),
        ("host", task.get("host")),
        ("log", task["log_path"]),
        ("data", _json(task["data"])),
        ("result", _json(task["result"]) if task.get("result") is not None else None),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        if value is not None:
            print(f"{key:<{width}}  {value}")


def stats(result: dict[str, Any]) -> None:
    statuses = list(result["by_status"])
    w = result["workers"]
    if not sys.stdout.isatty():
        print("\t".join(["TYPE", *statuses]))
        for task_type, counts in sorted(result["by_type"].items()):
            print("\t".join([task_type, *(str(counts.get(s, 0)) for s in statuses)]))
        print("\t".join(["total", *(str(result["by_status"][s]) for s in statuses)]))
        if result.get("paused"):
            print(paused_line(result["paused"]), file=sys.stderr)
        return  # one table, for scripts; workers and running tasks are in --json
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Headers are the fixed state names: markup is safe there.
    table = Table("TYPE", *(f"[{STATUS_STYLE[s]}]{s}[/]" for s in statuses), box=None, header_style="bold")
    for task_type, counts in sorted(result["by_type"].items()):
        table.add_row(Text(task_type), *(str(counts.get(s, 0)) for s in statuses))
    table.add_row(Text("total", "bold"), *(Text(str(result["by_status"][s]), "bold") for s in statuses))
    console = Console()
    console.print(table)
    console.print(f"workers busy {w['busy']}/{w['total']}")
    if result.get("paused"):
        console.print(Text(paused_line(result["paused"]), "yellow"))
    for d in result.get("daemons", ()):  # a shared store: every daemon's workers
        console.print(
            Text(f"  {d['id']} busy {d['busy']}/{d['workers']}, heartbeat {d['heartbeat_age']:.0f} s ago")
        )
    for r in result["running"]:
        line = f"  {r['id']} {r['type']} {r['progress'] * 100:.0f}% {r['current_operation'] or ''}"
        console.print(Text(line))


FINISHED = frozenset({"completed", "failed", "cancelled"})


class Board:
    """The latest known state of each watched task, kept up to date from events."""

    def __init__(self, tasks: list[dict[str, Any]], paused: list[str] | None = None) -> None:
        self.rows: dict[str, dict[str, Any]] = {t["id"]: dict(t) for t in tasks}
        self.paused = set(paused or ())

    def apply(self, event: dict[str, Any]) -> None:
        if event.get("event") == "queue_paused":
            self.paused.update(event["types"])
        elif event.get("event") == "queue_resumed":
            self.paused.difference_update(event["types"])
        if "task_id" not in event:
            return
        row = self.rows.setdefault(
            event["task_id"],
            {
                "id": event["task_id"],
                "type": event["type"],
                "progress": 0.0,
                "current_operation": None,
                "started_at": None,
                "finished_at": None,
                "error": None,
            },
        )
        row["status"] = event["status"]
        kind = event["event"]
        if kind == "started":
            row.update(started_at=event["time"], progress=0.0, current_operation=None)
        elif kind == "requeued" or event.get("stop_reason") == "not_started":
            row["started_at"] = None  # handed to a worker, then taken back before it started
        elif kind == "progress":
            row.update(progress=event["progress"], current_operation=event["current_operation"])
        elif kind == "priority_changed":
            row["priority"] = event["priority"]
        if row["status"] in FINISHED:
            row["finished_at"] = event["time"]
            row["error"] = event.get("error") or row.get("error")
            row["stop_reason"] = event.get("stop_reason") or row.get("stop_reason")
            row["current_operation"] = None  # what it did last is not what it does
            if kind == "completed":
                row["progress"] = 1.0

    def done(self) -> bool:
        return all(r["status"] in FINISHED for r in self.rows.values())

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        # Every cell one line: a long type or operation is cut with an ellipsis, never wrapped, so
        # the table keeps its height at any width; the operation gives way first.
        table = Table(box=None, header_style="bold", pad_edge=False, collapse_padding=True)
        for name in ("ID", "TYPE", "STATUS"):
            table.add_column(name, no_wrap=True, overflow="ellipsis")
        table.add_column("PROGRESS", no_wrap=True)
        table.add_column("", no_wrap=True, justify="right")
        table.add_column("ELAPSED", no_wrap=True, justify="right")
        table.add_column("OPERATION")  # the one column rich may narrow: its cells do not wrap
        bar_width = 20 if options.max_width >= 120 else 10
        now = time.time()
        for row in self.rows.values():
            started = row.get("started_at")
            end = row.get("finished_at") or now
            elapsed = f"{end - started:.1f}s" if started else "-"
            status = row["status"]
            shows_progress = status in ("running", "completed")  # a bar only for work done
            table.add_row(
                Text(row["id"]),
                Text(row["type"]),
                Text(status, STATUS_STYLE[status]),
                ProgressBar(total=1.0, completed=row["progress"], width=bar_width) if shows_progress else "",
                f"{row['progress'] * 100:3.0f}%" if shows_progress else "",
                elapsed,
                Text(_board_note(row), no_wrap=True, overflow="ellipsis"),
            )
        notes = [Text(paused_line(sorted(self.paused)), "yellow")] if self.paused else []
        if self.rows:
            yield Group(*notes, table)
        else:
            yield Group(*notes, table, Text("no active tasks; waiting for new ones", "dim"))


def paused_line(paused: list[str]) -> str:
    return "queue paused: nothing starts" if "*" in paused else "paused: " + ", ".join(paused)


def _board_note(row: dict[str, Any]) -> str:
    """The last column of a watched task: what it does, or how it ended."""
    if row["status"] == "running":
        return row.get("current_operation") or ""
    if row["status"] == "cancelled" and row.get("stop_reason"):
        return f"stopped: {row['stop_reason']}"
    return row.get("error") or row.get("blocked_reason") or ""


def _next_event(stream: Any, deadline: float | None) -> dict[str, Any] | None:
    """The next event, or None when the stream ended or the deadline passed."""
    while deadline is None or time.monotonic() < deadline:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if stream.ready(wait if wait is None else min(wait, 0.5)):
            return next(stream, None)
    return None


def follow(
    stream: Any,
    tasks: list[dict[str, Any]],
    until_done: bool,
    timeout: float | None = None,
    paused: list[str] | None = None,
) -> str:
    """A live table on the terminal, redrawn from the event stream. Returns why it stopped: see
    `ended`."""
    from rich.live import Live

    board = Board(tasks, paused)
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    with Live(board, refresh_per_second=4, transient=False):
        while not (until_done and board.done()):
            event = _next_event(stream, deadline)
            if event is None:
                return ended(last) if deadline is None or time.monotonic() < deadline else "timeout"
            board.apply(event)
            last = event
    return "done"


def event_lines(stream: Any, tasks: list[dict[str, Any]], until_done: bool) -> str:
    """One JSON object per event and line, for scripts: a `state` event per task first, then the stream.
    Returns why it stopped: see `ended`."""
    import json

    board = Board(tasks)
    now = time.time()
    for task in tasks:  # first where things stand; the stream was live before these were read
        snapshot = {
            "event": "state",
            "task_id": task["id"],
            "type": task["type"],
            "status": task["status"],
            "time": now,
            "progress": task["progress"],
            "current_operation": task["current_operation"],
        }
        print(json.dumps(snapshot, ensure_ascii=False), flush=True)
    last = None
    while not (until_done and board.done()):
        event = next(stream, None)
        if event is None:
            return ended(last)
        board.apply(event)
        print(json.dumps(event, ensure_ascii=False), flush=True)
        last = event
    return "done"


def ended(last: dict[str, Any] | None) -> str:
    """Why a stream ended, from its last event: "overflow" (this reader fell too far behind and
    missed events) or "closed" (the daemon stopped)."""
    return "overflow" if last is not None and last.get("event") == "overflow" else "closed"


def tail(path: Any, stream: Any, task: dict[str, Any]) -> bool:
    """Copy the log to stdout as it grows, until the task has finished; False if the stream ended
    first (the daemon stopped, or dropped this reader)."""
    out = sys.stdout.buffer
    position = 0

    def pump() -> None:
        nonlocal position
        try:
            with open(path, "rb") as log:
                log.seek(position)
                data = log.read()
        except FileNotFoundError:
            return
        position += len(data)
        out.write(data)
        out.flush()

    status = task["status"]
    while status not in FINISHED:
        pump()
        # New output shows within a quarter second; the end of the task at once.
        if stream.ready(0.25):
            event = next(stream, None)
            if event is None:
                pump()
                return False
            status = event.get("status", status)  # `shutdown` and `overflow` name no task
    pump()
    return True


def history(entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["time"]))
        stamp += f".{int(entry['time'] % 1 * 1000):03d}"
        details = " ".join(
            f"{k}={v}" for k, v in entry.items() if k not in ("time", "event", "uid", "pid") and v is not None
        )
        who = f" (uid {entry['uid']}, pid {entry['pid']})" if entry.get("uid") is not None else ""
        print(f"{stamp}  {entry['event']:<20} {details}{who}".rstrip())


def preview(result: dict[str, Any], verb: str) -> None:
    """What a dry run found: counts by type and status, a sample of ids, dependents of a cancel."""
    print(f"would {verb} {result['count']} task(s)")
    for task_type, counts in sorted(result["by_type"].items()):
        print(f"  {task_type}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if result["sample"]:
        more = " ..." if result["count"] > len(result["sample"]) else ""
        print("  ids: " + " ".join(result["sample"]) + more)
    if result.get("dependents"):
        print(
            f"  and {result['dependents']} task(s) that depend on them: "
            + " ".join(result["dependents_sample"])
        )
    print(f"the same selection with --up-to task_{result['up_to']} leaves out tasks submitted since")


def queue_state(result: dict[str, Any]) -> None:
    if not result["paused"]:
        print("queue running: nothing paused")
    for p in result["paused"]:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p["since"]))
        who = f" by uid {p['uid']}, pid {p['pid']}" if p.get("uid") is not None else ""
        print(f"paused {'all types' if p['type'] == '*' else p['type']} since {stamp}{who}")
