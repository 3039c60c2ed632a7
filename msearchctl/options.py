"""The arguments and options several commands share, and task ids as they are typed."""

from __future__ import annotations

from typing import Annotated

import typer

from msearchctl.completion import id_completion
from msearchd.errors import MsearchError
from msearchd.model import parse_task_id

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of text.")]
TaskIdArg = Annotated[
    str,
    typer.Argument(help="Task id: task_<n> or <n>.", show_default=False, autocompletion=id_completion()),
]


def task_ref(value: str) -> int:
    try:
        return parse_task_id(value)
    except MsearchError as exc:
        raise typer.BadParameter(exc.message) from None
