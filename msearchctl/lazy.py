"""Command groups whose commands are built only when used.

typer turns a command's function into a click command by reading its signature and evaluating its type
hints: ~1 ms a command, ~15 ms for the whole tree, which every call would pay to run one of them. A group
here knows each command's name and module, and has typer build a command (importing its module) the first
time click asks for it; help, completion and the manual's check still see every command.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import ClassVar

import click
import typer.main
from typer.core import TyperGroup

COMMANDS_PACKAGE = "msearchctl.commands"


class LazyGroup(TyperGroup):
    """A typer group whose commands are listed in `sources` (module of `msearchctl.commands` -> the names
    of the commands its `app` defines, in the order help lists them) and built on first use."""

    sources: ClassVar[dict[str, tuple[str, ...]]] = {}
    _complete = False  # every command built: from then on `commands` alone says what the group has

    @property
    def commands(self) -> dict[str, click.Command]:
        """Every command, built: for whoever walks or changes the whole tree rather than asking by name."""
        if not self._complete:
            ctx = click.Context(self)
            built = {name: self.get_command(ctx, name) for name in self.list_commands(ctx)}
            self._built = {name: command for name, command in built.items() if command is not None}
            self._complete = True
        return self._built

    @commands.setter
    def commands(self, built: Mapping[str, click.Command]) -> None:
        # What typer built itself: the groups added with add_typer (shells: their commands are lazy).
        self._built = dict(built)

    def list_commands(self, ctx: click.Context) -> list[str]:
        if self._complete:
            return list(self._built)
        lazy = [name for names in self.sources.values() for name in names]
        return lazy + [name for name in self._built if name not in lazy]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self._built and not self._complete:
            module = next((m for m, names in self.sources.items() if cmd_name in names), None)
            if module is None:
                return None
            self._built[cmd_name] = self._build(module, cmd_name)
        return self._built.get(cmd_name)

    def _build(self, module: str, name: str) -> click.Command:
        defined = importlib.import_module(f"{COMMANDS_PACKAGE}.{module}").app
        infos = {
            info.name or typer.main.get_command_name(info.callback.__name__): info
            for info in defined.registered_commands
            if info.callback is not None
        }
        if set(infos) != set(self.sources[module]):  # a command added to a module but not listed here
            raise RuntimeError(
                f"{COMMANDS_PACKAGE}.{module} defines {sorted(infos)}, its group lists "
                f"{sorted(self.sources[module])}"
            )
        return typer.main.get_command_from_info(
            infos[name],
            pretty_exceptions_short=True,  # typer's default, which the root app keeps
            rich_markup_mode=self.rich_markup_mode,
        )


def lazy_group(sources: dict[str, tuple[str, ...]]) -> type[LazyGroup]:
    """A group class for `typer.Typer(cls=...)`: typer makes the group, so its commands go on the class."""
    return type("LazyGroup", (LazyGroup,), {"sources": sources})
