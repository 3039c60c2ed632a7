"""`tasks wait`, `watch`, `log` and `history`: follow tasks as they run, and look back at what they did."""

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from msearchctl.completion import ACTIVE, complete_types, id_completion
from msearchctl.exits import EXIT_INTERRUPTED, EXIT_REFUSED, EXIT_TIMEOUT, EXIT_UNREACHABLE, daemon, fail
from msearchctl.options import JsonOpt, TaskIdArg, task_ref
from msearchctl.output import output, print_json
from msearchd.model import TERMINAL

app = typer.Typer()


@app.command("wait")
def wait(
    ctx: typer.Context,
    task_ids: Annotated[
        list[str],
        typer.Argument(metavar="ID...", help="Tasks to wait for.", autocompletion=id_completion(ACTIVE)),
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


@app.command("watch")
def watch(
    ctx: typer.Context,
    task_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="[ID]...", help="Only these tasks.", autocompletion=id_completion(ACTIVE)),
    ] = None,
    task_types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            "-t",
            help="Only tasks of this type; repeat for several.",
            autocompletion=complete_types,
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
            kinds: Sequence[str | None] = task_types or [None]
            tasks = [t for kind in kinds for t in client.list(active, kind, limit=200)]
        try:
            if as_json or not sys.stdout.isatty():
                why = render.event_lines(stream, tasks, until_done=bool(refs))
            else:
                paused = [p["type"] for p in client.queue()["paused"]]
                why = render.follow(stream, tasks, until_done=bool(refs), paused=paused)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
    if why == "overflow":
        fail("fell too far behind the daemon's events, which dropped this watch; watch again", EXIT_REFUSED)
    if why == "closed":
        if refs:
            names = ", ".join(f"task_{r}" for r in refs)
            fail(f"the daemon ended the stream before {names} finished; it has stopped", EXIT_UNREACHABLE)
        fail("the daemon ended the stream: it has stopped", EXIT_UNREACHABLE)


@app.command("log")
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
                raise typer.Exit(EXIT_INTERRUPTED) from None
    if not finished:
        fail(f"the daemon ended the stream before task_{ref} finished; the log may go on", EXIT_UNREACHABLE)


@app.command("history")
def history(ctx: typer.Context, task_id: TaskIdArg, as_json: JsonOpt = False) -> None:
    """What happened to a task, oldest first: state changes, priority changes, cancel requests and retries,
    each with its time and the uid and pid of the client that asked."""
    ref = task_ref(task_id)
    with daemon(ctx) as client:
        entries = client.history(ref)
    output(entries, as_json, "history")
