"""How the daemon starts its Python children (workers, the HTTP shim): cut off from its folder and secrets.

`python -m` puts the current folder first on `sys.path`: a `json.py` or a `*.dist-info` planted where
the daemon was started would run in every child. Children run with `-P` (no such entry), in a fixed
folder, with relative `PYTHONPATH` entries made absolute against the daemon's folder (so that a
handler module is found where the user pointed), and without the daemon's secrets.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Variables only the daemon may see (the shim is handed the token on purpose).
DAEMON_SECRETS = ("MSEARCH_HTTP_TOKEN",)
# Set to the task's id while it runs: every process it starts inherits it, to tell whose it is.
TASK_ENV = "MSEARCH_TASK_ID"
# Set to the daemon's state folder in every worker: a daemon finds what an earlier one left by it.
WORKER_MARK = "MSEARCH_WORKER_OF"


def python_argv(module: str) -> list[str]:
    return [sys.executable, "-P", "-m", module]


def child_folder() -> str:
    """The children's working folder: the user's home, as for cron jobs and systemd user services."""
    try:
        home = Path.home()
    except (RuntimeError, KeyError):  # no HOME, and no entry in the password database
        return "/"
    return str(home) if home.is_absolute() and home.is_dir() else "/"


def child_environ() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in DAEMON_SECRETS}
    if "PYTHONPATH" in env:
        # An empty entry would mean the child's own folder; a relative one, a folder under it.
        entries = [str(Path(entry).absolute()) for entry in env["PYTHONPATH"].split(os.pathsep) if entry]
        if entries:
            env["PYTHONPATH"] = os.pathsep.join(entries)
        else:
            del env["PYTHONPATH"]
    return env
