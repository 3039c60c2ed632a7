"""The commands of msearchctl, a module per group or part of one; `msearchctl.app` lists which module
holds each command, and imports it only when the command runs.

These modules, `msearchctl.app` and `msearchctl.completion` leave out `from __future__ import
annotations`: typer reads the type hints of each command and completion function as the command starts,
and hints kept as strings would be compiled then, at every start.
"""
