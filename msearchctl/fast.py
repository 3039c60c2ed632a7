"""The entry point of `msearchctl`: plain `tasks cancel ID` and `tasks priority ID PRIORITY` without typer.

Scripts run these in loops, and importing typer and click and building the command tree takes longer
(~35 ms) than the call itself. Only their plain forms (with or without --json) are answered here, with
the same output, messages and exit codes; anything else, --help and a bad id included, goes to the
full CLI in `msearchctl.app`, which parses and answers it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130


def _bytes_as_text(value: Any) -> str:
    """Task data sent as bytes (from the Python API) has no JSON form: show it as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def print_json(value: Any) -> None:
    import json  # only for --json: the plain forms print a line

    print(json.dumps(value, indent=2, ensure_ascii=False, default=_bytes_as_text))


def cancelled_line(result: dict[str, Any]) -> str:
    """What `tasks cancel` prints for the daemon's answer."""
    task = result["task"]
    how = f" ({task['stop_reason']})" if task["stop_reason"] not in (None, "not_started") else ""
    line = f"cancelled {task['id']}{how}"
    if result["cancelled_dependents"]:
        line += f" and {result['cancelled_dependents']} task(s) that depended on it"
    return line


def _plain(args: list[str]) -> tuple[str, int, int | None, bool] | None:
    """(command, task id, priority, --json) of a plain `tasks cancel|priority` form, or None."""
    if len(args) < 3 or args[0] != "tasks" or args[1] not in ("cancel", "priority"):
        return None
    rest = [a for a in args[2:] if a != "--json"]
    as_json = len(rest) == len(args) - 3
    if len(rest) < len(args) - 3:  # --json given more than once: leave it to the full parser
        return None
    if len(rest) != (1 if args[1] == "cancel" else 2) or rest[0].startswith("-"):
        return None
    from msearchd.errors import MsearchError
    from msearchd.model import parse_task_id

    try:
        task_id = parse_task_id(rest[0])
        value = int(rest[1]) if len(rest) == 2 else None
    except (MsearchError, ValueError):
        return None  # the full CLI says what is wrong, as a usage error
    return args[1], task_id, value, as_json


def _fail(message: str, code: int) -> int:
    print(f"msearchctl: {message}", file=sys.stderr)
    return code


def run_plain(command: str, task_id: int, value: int | None, as_json: bool) -> int:
    from msearchd.client import Client
    from msearchd.errors import InvalidState, MsearchError, Unavailable

    socket = os.environ.get("MSEARCH_SOCKET") or None  # as click reads the --socket option's envvar
    try:
        with Client(Path(socket) if socket else None) as client:
            if command == "cancel":
                try:
                    result = client.cancel(task_id, running=False)
                except InvalidState as exc:  # the daemon names the RPC parameter; here it is an option
                    return _fail(exc.message.replace("running=true", "--running"), EXIT_REFUSED)
            else:
                assert value is not None
                result = client.set_priority(task_id, value)
    except Unavailable as exc:
        return _fail(exc.message, EXIT_UNREACHABLE)
    except MsearchError as exc:
        return _fail(exc.message, EXIT_REFUSED)
    if as_json:
        print_json(result)
    elif command == "cancel":
        print(cancelled_line(result))
    else:
        print(f"{result['id']} priority {result['priority']}")
    return 0


def main() -> None:
    plain = _plain(sys.argv[1:])
    if plain is None:
        from msearchctl.app import main as full

        full()
        return
    try:
        code = run_plain(*plain)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    sys.exit(code)
