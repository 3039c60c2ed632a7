"""Shell completion: statuses are known here; types and ids come from the daemon, if it answers at once."""

from __future__ import annotations

from collections.abc import Callable

import typer

from msearchd.client import Client
from msearchd.errors import MsearchError
from msearchd.model import TERMINAL, TaskStatus

STATUSES = tuple(s.value for s in TaskStatus)
ACTIVE = tuple(s.value for s in TaskStatus if s not in TERMINAL)
COMPLETION_TIMEOUT = 0.5  # seconds: a shell waits for the answer
COMPLETION_IDS = 200  # the newest tasks offered


def complete_statuses(incomplete: str) -> list[str]:
    """Statuses, the last of a comma-separated list included."""
    given, comma, last = incomplete.rpartition(",")
    return [f"{given}{comma}{s}" for s in STATUSES if s.startswith(last)]


def _completion_client(ctx: typer.Context) -> Client | None:
    try:
        return Client(ctx.find_root().params.get("socket"), connect_timeout=COMPLETION_TIMEOUT)
    except MsearchError:
        return None


def complete_types(ctx: typer.Context, incomplete: str) -> list[str]:
    """The types of the tasks the daemon has."""
    client = _completion_client(ctx)
    if client is None:
        return []
    with client:
        try:
            types = client.stats()["by_type"]
        except MsearchError:
            return []
    return sorted(t for t in types if t.startswith(incomplete))


def id_completion(statuses: tuple[str, ...] = ()) -> Callable[[typer.Context, str], list[tuple[str, str]]]:
    """Completion of task ids in these statuses (any, if none), newest first, with type and status."""

    def complete(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
        client = _completion_client(ctx)
        if client is None:
            return []
        wanted = list(statuses) or None
        with client:
            try:
                total = client.count(wanted)
                tasks = client.list(wanted, None, COMPLETION_IDS, max(0, total - COMPLETION_IDS))
            except MsearchError:
                return []
        number = incomplete.lower().removeprefix("task_")
        return [
            (t["id"], f"{t['type']} {t['status']}")
            for t in reversed(tasks)
            if t["id"].removeprefix("task_").startswith(number)
        ]

    return complete
