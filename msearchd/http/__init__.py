"""The REST shim: the task-control paths of the API document, served over HTTP as a client of the RPC.

Run it beside the daemon with ``msearchd --http [HOST:]PORT``, or on its own against a running daemon:

    python -m msearchd.http [HOST:]PORT [--socket PATH]

It is a separate process on purpose: FastAPI and uvicorn are imported by this package only, and
whatever happens to this process (a crash, a hang, a flood of requests) reaches the daemon only as RPC
requests, like any other client's.

The modules: `app` (the application and its OpenAPI document), `routes` (the task routes),
`batch` (the paths for a selection of tasks by id), `selections` and `queue` (operations on the tasks
that filters select, with a dry run, and the queue's pause, resume and drain), `events` (the event
stream), `bodies` (request bodies), `params` (parameter values), `answers` (responses and their models),
`guard` (who may ask), `session` (signing in to the page), `page` (the task manager page's files),
`link` (the connections to the daemon), `server` (the process). This file imports none of them until a
name is asked for: `python -m msearchd.http` imports the package before `__main__`, which must be able
to say in one sentence that FastAPI is not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "create_app": "app",
    "Guard": "guard",
    "tcp_peer_uid": "guard",
    "DaemonLink": "link",
    "MAX_EVENT_STREAMS": "events",
    "main": "server",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
