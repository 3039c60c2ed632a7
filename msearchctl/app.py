"""`msearchctl`: control msearchd from a shell. Each command parses its arguments and makes one call.

Exit codes: 0 done; 1 refused by the daemon (unknown task, wrong state, bad value); 2 usage;
3 daemon unreachable; 4 `tasks wait` or `queue drain` timed out; 130 interrupted.

This module is the root of the command tree: the options every command takes, and the groups, each in a
module of `msearchctl.commands`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from msearchctl.commands import control, daemon, follow, queue, scan, tasks
from msearchctl.exits import EXIT_INTERRUPTED, EXIT_REFUSED, EXIT_TIMEOUT, EXIT_UNREACHABLE, EXIT_USAGE

# The exit statuses are named here too, beside the program they belong to: its manual documents each.
__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_REFUSED",
    "EXIT_TIMEOUT",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "app",
    "main",
]

app = typer.Typer(
    name="msearchctl",
    help="Control the msearch task daemon (msearchd): queue, reprioritise, cancel and retry tasks.\n\n"
    "Exit codes: 0 done, 1 refused by the daemon, 2 usage error, 3 daemon unreachable, 4 wait or drain "
    "timed out, 130 interrupted.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    suggest_commands=False,  # click suggests already: typer's would repeat it
)
tasks_app = typer.Typer(help="Add, inspect and control tasks.", no_args_is_help=True, suggest_commands=False)
for part in (tasks.app, control.app, follow.app):  # in the order `tasks --help` lists them
    tasks_app.add_typer(part)
app.add_typer(scan.app)
app.add_typer(tasks_app, name="tasks")
app.add_typer(queue.app, name="queue")
app.add_typer(daemon.app, name="daemon")


def _version(value: bool) -> None:
    if value:
        from msearchd import __version__

        print(f"msearchctl {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    socket: Annotated[
        Path | None,
        typer.Option(
            "--socket",
            envvar="MSEARCH_SOCKET",
            show_default=False,
            help="Daemon socket [default: $XDG_RUNTIME_DIR/msearch/msearchd.sock, or "
            "/tmp/msearch-$UID/msearchd.sock without XDG_RUNTIME_DIR]",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    ctx.obj = socket


def main() -> None:
    app()
