"""`msearchctl`: control msearchd from a shell. Each command parses its arguments and makes one call.

Exit codes: 0 done; 1 refused by the daemon (unknown task, wrong state, bad value); 2 usage;
3 daemon unreachable; 4 `tasks wait` or `queue drain` timed out; 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import click
import typer
from click.core import ParameterSource

from msearchd.client import Client
from msearchd.errors import InvalidState, MsearchError, Unavailable
from msearchd.model import TERMINAL, TaskStatus, parse_task_id

EXIT_REFUSED = 1
EXIT_USAGE = 2  # click exits with it (typer.BadParameter, unknown options): named for the manual's check
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4
LIST_PAGE = 10_000  # the daemon's largest page, for list --all

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
daemon_app = typer.Typer(help="Check on or stop the daemon.", no_args_is_help=True, suggest_commands=False)
queue_app = typer.Typer(
    help="Pause, resume and drain the queue: running tasks go on, no new one starts.",
    no_args_is_help=True,
    suggest_commands=False,
)
app.add_typer(tasks_app, name="tasks")
app.add_typer(queue_app, name="queue")
app.add_typer(daemon_app, name="daemon")

# --- completion: statuses are known here; types and ids come from the daemon, if it answers at once

STATUSES = tuple(s.value for s in TaskStatus)
ACTIVE = tuple(s.value for s in TaskStatus if s not in TERMINAL)
COMPLETION_TIMEOUT = 0.5  # seconds: a shell waits for the answer
COMPLETION_IDS = 200  # the newest tasks offered


def _complete_statuses(incomplete: str) -> list[str]:
    """Statuses, the last of a comma-separated list included."""
    given, comma, last = incomplete.rpartition(",")
    return [f"{given}{comma}{s}" for s in STATUSES if s.startswith(last)]


def _completion_client(ctx: typer.Context) -> Client | None:
    try:
        return Client(ctx.find_root().params.get("socket"), connect_timeout=COMPLETION_TIMEOUT)
    except MsearchError:
        return None


def _complete_types(ctx: typer.Context, incomplete: str) -> list[str]:
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


def _id_completion(statuses: tuple[str, ...] = ()) -> Callable[[typer.Context, str], list[tuple[str, str]]]:
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


JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of text.")]
TaskIdArg = Annotated[
    str,
    typer.Argument(help="Task id: task_<n> or <n>.", show_default=False, autocompletion=_id_completion()),
]
RunningOpt = Annotated[
    bool, typer.Option("--running", help="Also stop running tasks (SIGTERM, grace period, then SIGKILL).")
]


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


def fail(message: str, code: int) -> NoReturn:
    print(f"msearchctl: {message}", file=sys.stderr)
    raise typer.Exit(code)


@contextmanager
def daemon(ctx: typer.Context, wait: float | None = None) -> Iterator[Client]:
    """A connection to the daemon (waiting up to `wait` seconds for it to answer); its errors become
    one sentence on stderr and an exit code."""
    try:
        with Client(ctx.obj) if wait is None else _answering(ctx, wait) as client:
            yield client
    except Unavailable as exc:
        fail(exc.message, EXIT_UNREACHABLE)
    except MsearchError as exc:
        fail(exc.message, EXIT_REFUSED)


def _answering(ctx: typer.Context, seconds: float) -> Client:
    """A connection to the daemon once it answers, trying again until `seconds` have passed: for
    scripts that start it and go on at once."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            return Client(ctx.obj, connect_timeout=max(0.1, min(5.0, deadline - time.monotonic())))
        except Unavailable as exc:
            if time.monotonic() >= deadline:
                raise Unavailable(f"msearchd did not answer within {seconds:g} s: {exc.message}") from None
        time.sleep(0.05)  # no socket yet, or nobody accepts on it: the daemon is still starting


def task_ref(value: str) -> int:
    try:
        return parse_task_id(value)
    except MsearchError as exc:
        raise typer.BadParameter(exc.message) from None


def _bytes_as_text(value: Any) -> str:
    """Task data sent as bytes (from the Python API) has no JSON form: show it as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=_bytes_as_text))


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


def output(value: Any, as_json: bool, view: str) -> None:
    """Print an answer as JSON, or through the named view of `render` (imported only then: rich is slow)."""
    if as_json:
        print_json(value)
        return
    from msearchctl import render

    getattr(render, view)(value)


# --- selections: which tasks cancel, priority and retry are about -------------------------------------

SelTypesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--type",
        "-t",
        help="Only tasks of this type, or of the types a glob matches (file_embed_*); repeat for several.",
        autocompletion=_complete_types,
    ),
]
SelStatusOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--status",
        "-s",
        help="Only tasks in this state; repeat, or separate with commas.",
        autocompletion=_complete_statuses,
    ),
]
SelPriorityOpt = Annotated[
    str | None,
    typer.Option(
        "--with-priority",
        help="Only tasks of this priority, or of a range: 3..5, ..5, 9..",
        show_default=False,
    ),
]
OlderOpt = Annotated[
    str | None,
    typer.Option(
        "--older-than",
        help="Only tasks created before this: a duration back from now (90s, 30m, 2h, 1d, 2w) or a date "
        "(2026-12-01, 2026-12-01T08:30, local time).",
        show_default=False,
    ),
]
NewerOpt = Annotated[
    str | None,
    typer.Option(
        "--newer-than", help="Only tasks created since this: as for --older-than.", show_default=False
    ),
]
WhereOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--where",
        help="Only tasks whose data matches FIELD OP VALUE; OP is = (equals), != (differs), ^= (starts "
        "with), $= (ends with) or *= (contains); FIELD may be a dotted path (source.path). Repeat: all "
        "must hold. E.g. --where path^=/mnt/nas/",
    ),
]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Change nothing: say how many tasks it would touch, by type and state, some of their ids, "
        "and for a cancel the dependents it would cancel with them.",
    ),
]
UpToOpt = Annotated[
    str | None,
    typer.Option(
        "--up-to",
        help="Only tasks up to this id (the one a dry run names), so that a run after a dry run leaves "
        "out tasks added since.",
        show_default=False,
    ),
]


def _selection(
    ids: list[str],
    types: list[str] | None,
    statuses: list[str] | None,
    priority: str | None,
    older: str | None,
    newer: str | None,
    where: list[str] | None,
) -> dict[str, Any]:
    """The selection map the daemon reads (and checks: the same words for every client)."""
    select: dict[str, Any] = {}
    if ids:
        select["ids"] = [task_ref(i) for i in ids]
    if types:
        select["types"] = list(types)
    if statuses:
        select["statuses"] = [s.strip() for value in statuses for s in value.split(",")]
    if priority is not None:
        select["priority"] = priority
    if older is not None:
        select["older_than"] = older
    if newer is not None:
        select["newer_than"] = newer
    if where:
        select["where"] = list(where)
    return select


def _run_options(dry_run: bool, up_to: str | None) -> dict[str, Any]:
    run: dict[str, Any] = {"dry_run": dry_run}
    if up_to is not None:
        run["up_to"] = task_ref(up_to)
    return run


def _changed_note(result: dict[str, Any]) -> None:
    if result.get("changed_meanwhile"):
        print(
            f"msearchctl: the dry run counted {result['previewed']}; tasks changed meanwhile", file=sys.stderr
        )


# --- tasks --------------------------------------------------------------------------------------------


@tasks_app.command("add")
def add(
    ctx: typer.Context,
    task_type: Annotated[
        str,
        typer.Argument(
            metavar="TYPE", help="Task type, e.g. command, file_scan.", autocompletion=_complete_types
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
            autocompletion=_id_completion(),
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
        )
        if until_done:  # one process where a script would otherwise run `add` and then `wait`
            task = {**task, **client.wait([task["id"]])["tasks"][0]}
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


@app.command("scan")
def scan(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(metavar="PATH", help="The folder to scan.", show_default=False)],
    priority: Annotated[
        int | None,
        typer.Option(
            "--priority", "-p", help="0 (first) to 11 (last); default: file_scan's.", show_default=False
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a file_scan of a folder: its new and changed images, videos and recordings get their
    preprocessing, thumbnails and previews. Short for `tasks add file_scan --data '{"path": ...}'`."""
    # Resolved here: the daemon runs in another folder, and perhaps with another idea of `~`.
    folder = path.expanduser().absolute()
    if not folder.is_dir():
        raise typer.BadParameter(f"{folder} is not a folder", param_hint="PATH")
    with daemon(ctx) as client:
        task = client.submit("file_scan", {"path": str(folder)}, priority=priority)
    if as_json:
        print_json(task)
    else:
        print(task["id"])


@tasks_app.command("list")
def list_tasks(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            "-s",
            help="Only these states (pending, blocked, running, completed, failed, "
            "cancelled); repeat or separate with commas.",
            autocompletion=_complete_statuses,
        ),
    ] = None,
    task_type: Annotated[
        str | None,
        typer.Option("--type", "-t", help="Only tasks of this type.", autocompletion=_complete_types),
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
            tasks = []
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


@tasks_app.command("show")
def show(ctx: typer.Context, task_id: TaskIdArg, as_json: JsonOpt = False) -> None:
    """Show everything about one task: state, progress, error, lineage, log file."""
    ref = task_ref(task_id)
    with daemon(ctx) as client:
        task = client.get(ref)
    output(task, as_json, "task_detail")


@tasks_app.command("stats")
def stats(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Count tasks by state and by type, and show how many workers are busy."""
    with daemon(ctx) as client:
        result = client.stats()
    output(result, as_json, "stats")


@tasks_app.command("cancel")
def cancel(
    ctx: typer.Context,
    task_ids: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[ID]...", help="Tasks to cancel: task_<n> or <n>.", autocompletion=_id_completion()
        ),
    ] = None,
    types: SelTypesOpt = None,
    statuses: SelStatusOpt = None,
    with_priority: SelPriorityOpt = None,
    older_than: OlderOpt = None,
    newer_than: NewerOpt = None,
    where: WhereOpt = None,
    running: RunningOpt = False,
    dry_run: DryRunOpt = False,
    up_to: UpToOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a task that has not started, and those that depend on it; --running stops one that runs.

    Several ids, or a selection (--type, --status, --with-priority, --older-than, --newer-than,
    --where), cancel every task that matches all of what is given; --dry-run first shows which."""
    ids = task_ids or []
    select = _selection(ids, types, statuses, with_priority, older_than, newer_than, where)
    if not select:
        raise typer.BadParameter(
            "give task ids or a selection (--type, --status, ...); cancel-all cancels all"
        )
    if len(ids) == 1 and len(select) == 1 and not (dry_run or up_to):
        _cancel_one(ctx, task_ref(ids[0]), running, as_json)
        return
    with daemon(ctx) as client:
        result = client.cancel_selected(select, running=running, **_run_options(dry_run, up_to))
    if dry_run and not as_json:
        from msearchctl import render

        render.preview(result, "cancel")
        return
    _print_counts(result, as_json, "task(s)")
    _changed_note(result)
    if result.get("failed"):
        raise typer.Exit(EXIT_REFUSED)


def _cancel_one(ctx: typer.Context, ref: int, running: bool, as_json: bool) -> None:
    with daemon(ctx) as client:
        try:
            result = client.cancel(ref, running=running)
        except InvalidState as exc:  # the daemon names the RPC parameter; here it is an option
            fail(exc.message.replace("running=true", "--running"), EXIT_REFUSED)
    if as_json:
        print_json(result)
        return
    task = result["task"]
    how = f" ({task['stop_reason']})" if task["stop_reason"] not in (None, "not_started") else ""
    line = f"cancelled {task['id']}{how}"
    if result["cancelled_dependents"]:
        line += f" and {result['cancelled_dependents']} task(s) that depended on it"
    print(line)


# A negative PRIORITY ("-1") is an argument for the daemon to refuse, not an unknown option.
@tasks_app.command("priority", context_settings={"ignore_unknown_options": True})
def priority(
    ctx: typer.Context,
    targets: Annotated[
        list[str],
        typer.Argument(
            metavar="[ID]... PRIORITY",
            help="Tasks (task_<n> or <n>), then the priority: 0 (runs first) to 11 (runs last).",
        ),
    ],
    types: SelTypesOpt = None,
    statuses: SelStatusOpt = None,
    with_priority: SelPriorityOpt = None,
    older_than: OlderOpt = None,
    newer_than: NewerOpt = None,
    where: WhereOpt = None,
    dry_run: DryRunOpt = False,
    up_to: UpToOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change the priority of a pending or blocked task.

    Several ids, or a selection, change every waiting task that matches:
    `tasks priority --type thumbnail_generate 11` puts off a whole class at once."""
    *ids, value_text = targets
    try:
        value = int(value_text)
    except ValueError:
        raise typer.BadParameter(f"{value_text!r} is not a valid integer", param_hint="PRIORITY") from None
    select = _selection(ids, types, statuses, with_priority, older_than, newer_than, where)
    if not select:
        raise typer.BadParameter("give task ids or a selection (--type, --status, ...) before the priority")
    if len(ids) == 1 and len(select) == 1 and not (dry_run or up_to):
        ref = task_ref(ids[0])
        with daemon(ctx) as client:
            task = client.set_priority(ref, value)
        if as_json:
            print_json(task)
        else:
            print(f"{task['id']} priority {task['priority']}")
        return
    with daemon(ctx) as client:
        result = client.set_priority_selected(select, value, **_run_options(dry_run, up_to))
    if as_json:
        print_json(result)
    elif dry_run:
        from msearchctl import render

        render.preview(result, f"give priority {value} to")
    else:
        print(f"gave {result['changed']} task(s) priority {value} ({result['selected']} selected)")
        _changed_note(result)


def _print_counts(result: dict[str, Any], as_json: bool, what: str) -> None:
    if as_json:
        print_json(result)
        return
    line = f"cancelled {result['cancelled']} {what}"
    if result["failed"]:
        line += f"; {result['failed']} could not be cancelled (finished first)"
    if result.get("cancelled_dependents"):
        line += f"; also {result['cancelled_dependents']} dependent task(s)"
    print(line)


def _preview_cancel(ctx: typer.Context, select: dict[str, Any], running: bool, as_json: bool) -> None:
    """What a cancel-all or cancel-by-type would do: they are cancels of a selection."""
    with daemon(ctx) as client:
        result = client.cancel_selected(select, running=running, dry_run=True)
    if as_json:
        print_json(result)
    else:
        from msearchctl import render

        render.preview(result, "cancel")


@tasks_app.command("cancel-all")
def cancel_all(
    ctx: typer.Context, running: RunningOpt = False, dry_run: DryRunOpt = False, as_json: JsonOpt = False
) -> None:
    """Cancel every task that has not started; with --running, running ones too."""
    if dry_run:
        _preview_cancel(ctx, {}, running, as_json)
        return
    with daemon(ctx) as client:
        result = client.cancel_all(running=running)
    _print_counts(result, as_json, "task(s)")
    if result["failed"]:
        raise typer.Exit(EXIT_REFUSED)


@tasks_app.command("cancel-by-type")
def cancel_by_type(
    ctx: typer.Context,
    task_type: Annotated[
        str, typer.Argument(metavar="TYPE", help="e.g. thumbnail_generate.", autocompletion=_complete_types)
    ],
    running: RunningOpt = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Cancel every task of one type that has not started; with --running, running ones too."""
    if dry_run:
        _preview_cancel(ctx, {"types": [task_type]}, running, as_json)
        return
    with daemon(ctx) as client:
        result = client.cancel_by_type(task_type, running=running)
    _print_counts(result, as_json, f"{task_type} task(s)")
    if result["failed"]:
        raise typer.Exit(EXIT_REFUSED)


@tasks_app.command("retry")
def retry(
    ctx: typer.Context,
    task_ids: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[ID]...", help="Failed tasks to retry.", autocompletion=_id_completion(("failed",))
        ),
    ] = None,
    all_failed: Annotated[
        bool,
        typer.Option(
            "--all-failed", "--failed", help="Retry every failed task not yet retried (that matches)."
        ),
    ] = False,
    types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            "-t",
            help="With --failed: only this type, or the types a glob matches; repeat for several.",
            autocompletion=_complete_types,
        ),
    ] = None,
    with_priority: SelPriorityOpt = None,
    older_than: OlderOpt = None,
    newer_than: NewerOpt = None,
    where: WhereOpt = None,
    dry_run: DryRunOpt = False,
    up_to: UpToOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retry failed tasks as new tasks (same type, data, priority, dependencies); prints the new ids.

    --failed with a selection retries the failures that match it:
    `retry --failed --type file_embed_video --newer-than 1d` retries last night's."""
    if bool(task_ids) == all_failed:
        raise typer.BadParameter("give task ids or --all-failed, not both and not neither")
    select = _selection([], types, None, with_priority, older_than, newer_than, where)
    if (select or dry_run or up_to) and not all_failed:
        raise typer.BadParameter("--type and the other selection options go with --all-failed")
    refs = [task_ref(t) for t in task_ids or []]
    results: list[dict[str, Any]] = []
    with daemon(ctx) as client:
        # One exact type, or none, is what retry_failed has always taken: its answer is the same.
        plain = not (dry_run or up_to or set(select) - {"types"} or len(types or []) > 1)
        if all_failed and not (plain and not any(c in "".join(types or []) for c in "*?[")):
            answer = client.retry_selected(select, **_run_options(dry_run, up_to))
            if dry_run:
                if as_json:
                    print_json(answer)
                else:
                    from msearchctl import render

                    render.preview(answer, "retry")
                return
            results = answer["tasks"] + answer["errors"]
        elif all_failed:
            results = client.retry_failed(types[0] if types else None)
        else:  # one request for them all, answered task by task
            results = [
                {"task_id": r["task_id"], "new_task_id": r["new_task_id"]}
                if r["success"]
                else {"task_id": r["task_id"], "error": r["error"]}
                for r in client.retry_many(refs)["results"]
            ]
    if as_json:
        print_json(results)
    else:
        for r in results:
            if "error" in r:
                print(f"msearchctl: {r['error']}", file=sys.stderr)
            else:
                print(f"{r['task_id']} -> {r['new_task_id']}")
        if all_failed and not results:
            print("no failed tasks to retry")
    if any("error" in r for r in results):
        raise typer.Exit(EXIT_REFUSED)


@tasks_app.command("wait")
def wait(
    ctx: typer.Context,
    task_ids: Annotated[
        list[str],
        typer.Argument(metavar="ID...", help="Tasks to wait for.", autocompletion=_id_completion(ACTIVE)),
    ],
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="Give up after this many seconds (exit 4).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Block until the tasks finish; on a terminal, show their progress meanwhile.

    Exit 0 if all completed, 1 if any failed or was cancelled, 4 on timeout.
    """
    refs = [task_ref(t) for t in task_ids]
    with daemon(ctx) as client:
        if sys.stdout.isatty() and not as_json:
            from msearchctl import render

            with client.events(task_ids=refs) as stream:
                render.follow(stream, [client.get(r) for r in refs], until_done=True, timeout=timeout)
            timeout = 0  # what follow saw is final: collect the states without waiting again
        result = client.wait(refs, timeout=timeout)
    if as_json:
        print_json(result)
    else:
        for task in result["tasks"]:
            print(f"{task['id']} {task['status']}" + (f": {task['error']}" if task["error"] else ""))
    if result["timed_out"]:
        raise typer.Exit(EXIT_TIMEOUT)
    if any(t["status"] != "completed" for t in result["tasks"]):
        raise typer.Exit(EXIT_REFUSED)


@tasks_app.command("watch")
def watch(
    ctx: typer.Context,
    task_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="[ID]...", help="Only these tasks.", autocompletion=_id_completion(ACTIVE)),
    ] = None,
    task_types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            "-t",
            help="Only tasks of this type; repeat for several.",
            autocompletion=_complete_types,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Follow tasks live: state, progress, current operation, elapsed time.

    On a terminal a live table; in a pipe or with --json one JSON event per line (NDJSON). Given task ids
    it ends once they have all finished; otherwise it runs until interrupted. Give ids or --type, not
    both.
    """
    refs = [task_ref(t) for t in task_ids or []]
    if refs and task_types:
        raise typer.BadParameter("give task ids or --type, not both: the ids name the tasks already")
    from msearchctl import render

    with daemon(ctx) as client, client.events(task_ids=refs or None, types=task_types or None) as stream:
        if refs:
            tasks = [client.get(r) for r in refs]
        else:
            active = ["pending", "blocked", "running"]
            tasks = [t for kind in task_types or [None] for t in client.list(active, kind, limit=200)]
        try:
            if as_json or not sys.stdout.isatty():
                why = render.event_lines(stream, tasks, until_done=bool(refs))
            else:
                paused = [p["type"] for p in client.queue()["paused"]]
                why = render.follow(stream, tasks, until_done=bool(refs), paused=paused)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
    if why == "overflow":
        fail("fell too far behind the daemon's events, which dropped this watch; watch again", EXIT_REFUSED)
    if why == "closed":
        if refs:
            names = ", ".join(f"task_{r}" for r in refs)
            fail(f"the daemon ended the stream before {names} finished; it has stopped", EXIT_UNREACHABLE)
        fail("the daemon ended the stream: it has stopped", EXIT_UNREACHABLE)


@tasks_app.command("log")
def show_log(
    ctx: typer.Context,
    task_id: TaskIdArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new output until the task ends.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the log's path and content as a JSON object (not with --follow)."),
    ] = False,
) -> None:
    """Print what a task wrote to its log: a command's stdout and stderr, a handler's traceback."""
    ref = task_ref(task_id)
    if follow and as_json:
        raise typer.BadParameter("--json prints the log as it is now: give it or --follow, not both")
    with daemon(ctx) as client:
        path = Path(client.status()["state_dir"]) / "logs" / f"task_{ref}.log"
        if not follow:
            task = client.get(ref)
            try:
                content = path.read_bytes()
            except FileNotFoundError:
                content = None
            if content is None and task["started_at"] is None and task["attempts"] == 0:
                if task["status"] in ("pending", "blocked"):
                    fail(f"{task['id']} has not started yet ({task['status']}): no log yet", EXIT_REFUSED)
                fail(f"{task['id']} never ran ({task['status']}): it has no log", EXIT_REFUSED)
            if as_json:
                text = None if content is None else content.decode("utf-8", "backslashreplace")
                print_json(
                    {"task_id": task["id"], "status": task["status"], "path": str(path), "content": text}
                )
            elif content:
                sys.stdout.buffer.write(content)
            elif sys.stderr.isatty():  # an empty log is not kept: say why nothing shows
                yet = " yet" if task["status"] not in TERMINAL else ""
                print(f"msearchctl: {task['id']} has written nothing{yet}", file=sys.stderr)
            return
        from msearchctl import render

        with client.events(task_ids=[ref]) as stream:
            try:
                finished = render.tail(path, stream, client.get(ref))
            except KeyboardInterrupt:
                raise typer.Exit(130) from None
    if not finished:
        fail(f"the daemon ended the stream before task_{ref} finished; the log may go on", EXIT_UNREACHABLE)


@tasks_app.command("history")
def history(ctx: typer.Context, task_id: TaskIdArg, as_json: JsonOpt = False) -> None:
    """What happened to a task, oldest first: state changes, priority changes, cancel requests and retries,
    each with its time and the uid and pid of the client that asked."""
    ref = task_ref(task_id)
    with daemon(ctx) as client:
        entries = client.history(ref)
    output(entries, as_json, "history")


# --- daemon -------------------------------------------------------------------------------------------


# --- queue --------------------------------------------------------------------------------------------

PauseTypesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--type",
        "-t",
        help="Only this type; repeat for several (default: every type).",
        autocompletion=_complete_types,
    ),
]


def _queue_output(result: dict[str, Any], as_json: bool) -> None:
    output(result, as_json, "queue_state")


@queue_app.command("pause")
def queue_pause(ctx: typer.Context, types: PauseTypesOpt = None, as_json: JsonOpt = False) -> None:
    """Start no new task (of these types); running ones go on. Stays paused across daemon restarts."""
    with daemon(ctx) as client:
        _queue_output(client.pause(types or None), as_json)


@queue_app.command("resume")
def queue_resume(ctx: typer.Context, types: PauseTypesOpt = None, as_json: JsonOpt = False) -> None:
    """Start tasks again: of these types, or of every paused one."""
    with daemon(ctx) as client:
        _queue_output(client.resume(types or None), as_json)


@queue_app.command("drain")
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


@queue_app.command("status")
def queue_status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """What is paused, since when and by whom."""
    with daemon(ctx) as client:
        _queue_output(client.queue(), as_json)


@daemon_app.command("status")
def daemon_status(
    ctx: typer.Context,
    wait_for: Annotated[
        float | None,
        typer.Option(
            "--wait",
            metavar="SECONDS",
            min=0,
            show_default=False,
            help="Wait up to this long for the daemon to answer, as after starting it.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Say whether the daemon answers (exit 0) or not (exit 3), and how busy it is."""
    with daemon(ctx, wait_for) as client:
        result = client.status()
    if as_json:
        print_json(result)
    else:
        w = result["workers"]
        print(
            f"msearchd {result['version']} running (pid {result['pid']}, up {result['uptime']:.0f} s): "
            f"{w['busy']}/{w['total']} workers busy, {result['pending']} pending; socket {result['socket']}"
        )


@daemon_app.command("stop")
def daemon_stop(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Stop the daemon; running tasks go back to pending. Returns once it has stopped."""
    with daemon(ctx) as client:
        info = client.status()
        client.shutdown()
        client.wait_closed()
    if as_json:
        print_json({"stopped": True, "pid": info["pid"]})
    else:
        print(f"msearchd (pid {info['pid']}) stopped")


def _unit_folder() -> Path:
    import os

    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def _option_value(args: list[str], name: str) -> str | None:
    """The value given to option `name` among msearchd's arguments (`--name V` or `--name=V`)."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.partition("=")[2]
    return None


def _installed_msearchd() -> str:
    import shutil

    beside = Path(sys.executable).parent / "msearchd"
    found = str(beside) if beside.exists() else shutil.which("msearchd")
    if found is None:
        fail("cannot find the msearchd executable to run; is the package installed?", EXIT_REFUSED)
    return str(Path(found).absolute())


@daemon_app.command(
    "install", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
def daemon_install(
    msearchd_args: Annotated[
        list[str] | None,
        typer.Argument(metavar="[-- MSEARCHD_ARGS...]", help="Options for msearchd, e.g. -- --workers 4."),
    ] = None,
    socket_activation: Annotated[
        bool,
        typer.Option(
            "--socket-activation", help="Also write msearchd.socket: the first client's connection starts it."
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace units written by someone else.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write systemd user units that run msearchd at login, restart it if it dies and log to the journal.

    The units go to $XDG_CONFIG_HOME/systemd/user (default ~/.config/systemd/user); it then says the
    commands that enable and start them. Nothing is started by this command.
    """
    from msearchd import units

    args = list(msearchd_args or [])
    grace_text = _option_value(args, "--grace")
    try:
        grace = float(grace_text) if grace_text is not None else 5.0
    except ValueError:
        raise typer.BadParameter(f"--grace {grace_text!r} is not a number of seconds") from None
    folder = _unit_folder()
    wanted = {units.SERVICE: units.service_unit(_installed_msearchd(), args, grace, socket_activation)}
    if socket_activation:
        listen = _option_value(args, "--socket")
        path = str(Path(listen).absolute()) if listen else units.DEFAULT_LISTEN
        wanted[units.SOCKET] = units.socket_unit(path)
    for name in wanted:
        path = folder / name
        if path.exists() and not force and not path.read_text().startswith(units.MARK):
            fail(f"{path} exists and was not written by msearchctl; give --force to replace it", EXIT_REFUSED)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in wanted.items():
        (folder / name).write_text(units.marked(text))
        written.append(str(folder / name))
    if not socket_activation and (folder / units.SOCKET).exists():
        stale = folder / units.SOCKET
        if stale.read_text().startswith(units.MARK):
            stale.unlink()  # an earlier install with socket activation: the service now binds itself
    start = units.SOCKET if socket_activation else units.SERVICE
    commands = ["systemctl --user daemon-reload", f"systemctl --user enable --now {start}"]
    if as_json:
        print_json({"written": written, "commands": commands})
        return
    for path in written:
        print(f"wrote {path}")
    print("enable and start it with:")
    for command in commands:
        print(f"  {command}")


@daemon_app.command("uninstall")
def daemon_uninstall(as_json: JsonOpt = False) -> None:
    """Remove the units `daemon install` wrote, and their links from `systemctl --user enable`."""
    from msearchd import units

    folder = _unit_folder()
    removed = []
    for name in (units.SERVICE, units.SOCKET):
        path = folder / name
        if path.exists() and path.read_text().startswith(units.MARK):
            for link in folder.glob(f"*.wants/{name}"):
                link.unlink()
                removed.append(str(link))
            path.unlink()
            removed.append(str(path))
    commands = [
        f"systemctl --user stop {units.SOCKET} {units.SERVICE}",
        "systemctl --user daemon-reload",
    ]
    if as_json:
        print_json({"removed": removed, "commands": commands if removed else []})
        return
    if not removed:
        print(f"no units written by msearchctl in {folder}")
        return
    for path in removed:
        print(f"removed {path}")
    print("stop a daemon it still runs, and let systemd forget the units, with:")
    for command in commands:
        print(f"  {command}")


def main() -> None:
    app()
