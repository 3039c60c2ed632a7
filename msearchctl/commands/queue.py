"""`queue pause`, `resume`, `drain` and `status`: hold back new tasks, and wait for running ones."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from msearchctl.completion import complete_types
from msearchctl.exits import EXIT_TIMEOUT, daemon
from msearchctl.options import JsonOpt
from msearchctl.output import output, print_json

app = typer.Typer(
    help="Pause, resume and drain the queue: running tasks go on, no new one starts.",
    no_args_is_help=True,
    suggest_commands=False,
)

PauseTypesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--type",
        "-t",
        help="Only this type; repeat for several (default: every type).",
        autocompletion=complete_types,
    ),
]


def _queue_output(result: dict[str, Any], as_json: bool) -> None:
    output(result, as_json, "queue_state")


@app.command("pause")
def queue_pause(ctx: typer.Context, types: PauseTypesOpt = None, as_json: JsonOpt = False) -> None:
    """Start no new task (of these types); running ones go on. Stays paused across daemon restarts."""
    with daemon(ctx) as client:
        _queue_output(client.pause(types or None), as_json)


@app.command("resume")
def queue_resume(ctx: typer.Context, types: PauseTypesOpt = None, as_json: JsonOpt = False) -> None:
    """Start tasks again: of these types, or of every paused one."""
    with daemon(ctx) as client:
        _queue_output(client.resume(types or None), as_json)


@app.command("drain")
def queue_drain(
    ctx: typer.Context,
    types: PauseTypesOpt = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="Give up after this many seconds (exit 4).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pause, then wait until nothing (of these types) runs: before a backup, a reboot, an upgrade.

    Exit 0 once drained, 4 on timeout (the queue stays paused either way; `queue resume` ends it)."""
    with daemon(ctx) as client:
        result = client.drain(types or None, timeout)
    if as_json:
        print_json(result)
    elif result["drained"]:
        print("drained: nothing runs")
    else:
        print(f"still running after {timeout:g} s: {' '.join(result['running'])}")
    if not result["drained"]:
        raise typer.Exit(EXIT_TIMEOUT)


@app.command("status")
def queue_status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """What is paused, since when and by whom."""
    with daemon(ctx) as client:
        _queue_output(client.queue(), as_json)
