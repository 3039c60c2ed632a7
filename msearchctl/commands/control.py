"""`tasks cancel`, `priority`, `cancel-all`, `cancel-by-type` and `retry`: change tasks, one by id or a
selection at once, and the selection options they share."""

import sys
from typing import Annotated, Any

import typer

from msearchctl.completion import complete_statuses, complete_types, id_completion
from msearchctl.exits import EXIT_REFUSED, daemon, fail
from msearchctl.options import JsonOpt, task_ref
from msearchctl.output import print_json
from msearchd.errors import InvalidState

app = typer.Typer()

RunningOpt = Annotated[
    bool, typer.Option("--running", help="Also stop running tasks (SIGTERM, grace period, then SIGKILL).")
]

# --- selections: which tasks cancel, priority and retry are about -------------------------------------

SelTypesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--type",
        "-t",
        help="Only tasks of this type, or of the types a glob matches (file_embed_*); repeat for several.",
        autocompletion=complete_types,
    ),
]
SelStatusOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--status",
        "-s",
        help="Only tasks in this state; repeat, or separate with commas.",
        autocompletion=complete_statuses,
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


def _show_preview(result: dict[str, Any], as_json: bool, verb: str) -> None:
    """The answer of a dry run, as JSON or in words (the renderer loads only for words)."""
    if as_json:
        print_json(result)
        return
    from msearchctl import render

    render.preview(result, verb)


def _changed_note(result: dict[str, Any]) -> None:
    if result.get("changed_meanwhile"):
        print(
            f"msearchctl: the dry run counted {result['previewed']}; tasks changed meanwhile", file=sys.stderr
        )


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    task_ids: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[ID]...", help="Tasks to cancel: task_<n> or <n>.", autocompletion=id_completion()
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
    if dry_run:
        _show_preview(result, as_json, "cancel")
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
@app.command("priority", context_settings={"ignore_unknown_options": True})
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
    if dry_run:
        _show_preview(result, as_json, f"give priority {value} to")
    elif as_json:
        print_json(result)
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
    _show_preview(result, as_json, "cancel")


@app.command("cancel-all")
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


@app.command("cancel-by-type")
def cancel_by_type(
    ctx: typer.Context,
    task_type: Annotated[
        str, typer.Argument(metavar="TYPE", help="e.g. thumbnail_generate.", autocompletion=complete_types)
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


@app.command("retry")
def retry(
    ctx: typer.Context,
    task_ids: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[ID]...", help="Failed tasks to retry.", autocompletion=id_completion(("failed",))
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
            autocompletion=complete_types,
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
                _show_preview(answer, as_json, "retry")
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
