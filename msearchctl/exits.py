"""Exit statuses, and the connection to the daemon whose errors become one sentence and one of them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from msearchd.client import Client
from msearchd.errors import MsearchError, Unavailable

EXIT_REFUSED = 1
EXIT_USAGE = 2  # click exits with it (typer.BadParameter, unknown options): named for the manual's check
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130  # Ctrl-C during watch or log --follow, as a shell reports SIGINT


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
