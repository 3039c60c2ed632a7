"""`tasks add`, `list`, `show` and `stats`: queue tasks and look at them."""

import json
import sys
from typing import Annotated, Any, NoReturn

import click
import typer
from click.core import ParameterSource

from msearchctl.completion import complete_statuses, complete_types, id_completion
from msearchctl.exits import EXIT_REFUSED, daemon
from msearchctl.options import JsonOpt, TaskIdArg, task_ref
from msearchctl.output import output, print_json

LIST_PAGE = 10_000  # the daemon's largest page, for list --all

app = typer.Typer()


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


@app.command("add")
def add(
    ctx: typer.Context,
    task_type: Annotated[
        str,
        typer.Argument(
            metavar="TYPE", help="Task type, e.g. command, file_scan.", autocompletion=complete_types
        ),
    ],
    argv: Annotated[
        list[str] | None,
        typer.Argument(metavar="[-- ARGV...]", help="Stored as data.argv: for type command, what to run."),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            "--priority",
            "-p",
            help="0 (first) to 11 (last); default depends on the type.",
            show_default=False,
        ),
    ] = None,
    data: Annotated[str | None, typer.Option("--data", help="Handler input as a JSON object.")] = None,
    depends_on: Annotated[
        list[str] | None,
        typer.Option(
            "--depends-on",
            help="Run only after this task completed; repeat for several.",
            autocompletion=id_completion(),
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            help="At most one unfinished task per key: another add with it answers that task's id "
            "(see --on-conflict).",
        ),
    ] = None,
    on_conflict: Annotated[
        str,
        typer.Option(
            "--on-conflict",
            help="With --key, when an unfinished task holds it: keep it, or replace it (cancel it if it "
            "waits, queue this one).",
            click_type=click.Choice(["keep", "replace"]),
        ),
    ] = "keep",
    replace_running: Annotated[
        bool,
        typer.Option(
            "--running", help="With --on-conflict replace: stop the holder even if it runs already."
        ),
    ] = False,
    until_done: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Block until the task finishes and print how it ended (exit 1: failed or cancelled).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Queue a task. For type command the argv after -- is what runs: `tasks add command -- sleep 30`.

    With --key, prints the id of the task that holds the key and, on stderr, whether it was created,
    kept or replaced."""
    payload: dict[str, Any] = {}
    if data is not None:
        try:
            payload = json.loads(data, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"not valid JSON: {exc.msg}", param_hint="--data") from None
        except ValueError as exc:  # NaN, Infinity: Python reads them, JSON has no such numbers
            raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="--data") from None
        if not isinstance(payload, dict):
            raise typer.BadParameter("must be a JSON object", param_hint="--data")
    if argv:
        payload["argv"] = list(argv)
    if task_type == "command" and "argv" not in payload:
        raise typer.BadParameter(
            "give the command to run after --, e.g. msearchctl tasks add command -- sleep 30"
        )
    deps = [task_ref(d) for d in depends_on or []]
    with daemon(ctx) as client:
        if key is None and (on_conflict != "keep" or replace_running):
            raise typer.BadParameter("--on-conflict and --running go with --key")
        task = client.submit(
            task_type,
            payload,
            priority=priority,
            depends_on=deps,
            key=key,
            on_conflict=on_conflict,
            running=replace_running,
            wait=until_done,  # one process and one request, where a script would `add`, then `wait`
        )
    if as_json:
        print_json(task)
    elif until_done:
        print(f"{task['id']} {task['status']}" + (f": {task['error']}" if task["error"] else ""))
    else:
        print(task["id"])
    if key is not None and task["key_outcome"] != "created":
        replaced = f" {task['replaced']}" if task["key_outcome"] == "replaced" else ""
        print(f"msearchctl: key {key}: {task['key_outcome']}{replaced}", file=sys.stderr)
    if until_done and task["status"] != "completed":
        raise typer.Exit(EXIT_REFUSED)


@app.command("list")
def list_tasks(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            "-s",
            help="Only these states (pending, blocked, running, completed, failed, "
            "cancelled); repeat or separate with commas.",
            autocompletion=complete_statuses,
        ),
    ] = None,
    task_type: Annotated[
        str | None,
        typer.Option("--type", "-t", help="Only tasks of this type.", autocompletion=complete_types),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10_000, help="At most this many.")] = 100,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many first.")] = 0,
    every: Annotated[bool, typer.Option("--all", help="Every matching task, however many.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List tasks, oldest first: pages stay put while new tasks arrive, and ids read in order.

    On a terminal, a list cut short by --limit says so on stderr.
    """
    statuses = [s.strip() for value in status or [] for s in value.split(",")]
    if "" in statuses:
        raise typer.BadParameter("a status cannot be empty", param_hint="--status")
    if task_type is not None and not task_type:
        raise typer.BadParameter("a type cannot be empty", param_hint="--type")
    if every and ctx.get_parameter_source("limit") is ParameterSource.COMMANDLINE:
        raise typer.BadParameter("--all lists every task: give it or --limit, not both")
    with daemon(ctx) as client:
        if every:
            tasks: list[dict[str, Any]] = []
            while page := client.list(statuses or None, task_type, LIST_PAGE, offset + len(tasks)):
                tasks += page
                if len(page) < LIST_PAGE:
                    break
        else:
            tasks = client.list(statuses or None, task_type, limit, offset)
            if sys.stderr.isatty() and (len(tasks) == limit or offset):
                total = client.count(statuses or None, task_type)
                if len(tasks) < total:
                    print(f"showing {len(tasks)} of {total} (--limit, --offset, --all)", file=sys.stderr)
    output(tasks, as_json, "task_table")


@app.command("show")
def show(ctx: typer.Context, task_id: TaskIdArg, as_json: JsonOpt = False) -> None:
    """Show everything about one task: state, progress, error, lineage, log file."""
    ref = task_ref(task_id)
    with daemon(ctx) as client:
        task = client.get(ref)
    output(task, as_json, "task_detail")


@app.command("stats")
def stats(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Count tasks by state and by type, and show how many workers are busy."""
    with daemon(ctx) as client:
        result = client.stats()
    output(result, as_json, "stats")
