"""systemd user units that run msearchd as a service: what `msearchctl daemon install` writes and what
the distribution ships for packagers (`systemd/` in the source tree). Pure text: nothing here runs."""

from __future__ import annotations

from collections.abc import Sequence

SERVICE = "msearchd.service"
SOCKET = "msearchd.socket"
# The default socket (see msearchd.config.runtime_dir): %t is the user manager's XDG_RUNTIME_DIR.
DEFAULT_LISTEN = "%t/msearch/msearchd.sock"
# A unit with this line was written by `msearchctl daemon install`, which may replace or remove it.
MARK = "# Written by msearchctl daemon install; msearchctl daemon uninstall removes it."
# Seconds systemd waits for msearchd to stop before it kills what is left: msearchd stops running
# tasks itself (SIGTERM, its grace period, SIGKILL), so this is its grace plus room to record them.
STOP_MARGIN = 30


def quote(arg: str) -> str:
    """One ExecStart argument as systemd reads it: specifiers (%) and variables ($) literal,
    and quoted where it holds a space, a quote or a backslash."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if text and not any(c in text for c in " \t\n\"'\\;"):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def service_unit(
    executable: str, args: Sequence[str] = (), grace: float = 5.0, socket_activation: bool = False
) -> str:
    exec_start = " ".join(quote(a) for a in [executable, *args])
    activation = f"Requires={SOCKET}\nAfter={SOCKET}\n" if socket_activation else ""
    return f"""\
[Unit]
Description=msearch task daemon (msearchd)
Documentation=man:msearchd(8) man:msearchctl(1)
{activation}
[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
Restart=on-failure
RestartSec=1
# SIGTERM goes to msearchd alone: it stops its running tasks itself, and what is left when
# TimeoutStopSec runs out is killed.
KillMode=mixed
TimeoutStopSec={round(grace) + STOP_MARGIN}

[Install]
WantedBy=default.target
"""


def socket_unit(listen: str = DEFAULT_LISTEN) -> str:
    return f"""\
[Unit]
Description=msearch task daemon socket (starts msearchd at the first connection)
Documentation=man:msearchd(8)

[Socket]
ListenStream={listen.replace("%", "%%") if listen != DEFAULT_LISTEN else listen}
SocketMode=0600
DirectoryMode=0700

[Install]
WantedBy=sockets.target
"""


def marked(unit: str) -> str:
    return f"{MARK}\n{unit}"
