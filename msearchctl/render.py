"""Human output: rich tables on a terminal, plain tab-separated lines in a pipe.

Imported only by the commands that print tables, so that rich costs nothing to the others.
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


def _progress(task: dict[str, Any]) -> str:
    return f"{task['progress'] * 100:.0f}%" if task["status"] == "running" else ""


def _note(task: dict[str, Any]) -> str:
    return task["error"] or task["blocked_reason"] or task["current_operation"] or ""


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

    table = Table(*columns, box=None, header_style="bold")
    for row in rows:
        table.add_row(*row[:2], f"[{STATUS_STYLE[row[2]]}]{row[2]}[/]", *row[3:])
    console = Console()
    console.print(table if rows else "no tasks")


def task_detail(task: dict[str, Any]) -> None:
    fields: list[tuple[str, Any]] = [
        ("id", task["id"]),
        ("type", task["type"]),
        ("status", task["status"]),
        ("priority", task["priority"]),
        ("progress", f"{task['progress'] * 100:.0f}%"),
        ("operation", task["current_operation"]),
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
        ("log", task["log_path"]),
        ("data", task["data"]),
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
        print(f"workers busy {w['busy']}/{w['total']}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("TYPE", *(f"[{STATUS_STYLE[s]}]{s}[/]" for s in statuses), box=None, header_style="bold")
    for task_type, counts in sorted(result["by_type"].items()):
        table.add_row(task_type, *(str(counts.get(s, 0)) for s in statuses))
    table.add_row("[bold]total[/]", *(f"[bold]{result['by_status'][s]}[/]" for s in statuses))
    console = Console()
    console.print(table)
    console.print(f"workers busy {w['busy']}/{w['total']}")
