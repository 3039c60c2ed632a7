"""`scan`: queue a file_scan of a folder, the command most used on its own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from msearchctl.exits import daemon
from msearchctl.options import JsonOpt
from msearchctl.output import print_json

app = typer.Typer()


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
