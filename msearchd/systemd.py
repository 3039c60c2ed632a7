"""What the daemon says to, and takes from, a service manager: readiness, sockets, the journal.

systemd's protocols are a few environment variables and one datagram each; libsystemd would bring a C
extension for that, so they are spoken here directly (sd_notify(3), sd_listen_fds(3)). Without a service
manager every function here does nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys

NOTIFY_ENV = "NOTIFY_SOCKET"
LISTEN_PID_ENV = "LISTEN_PID"
LISTEN_FDS_ENV = "LISTEN_FDS"
LISTEN_FDNAMES_ENV = "LISTEN_FDNAMES"
JOURNAL_ENV = "JOURNAL_STREAM"
# The first descriptor a service manager passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


class Notifier:
    """Sends state changes to the service manager (READY=1, STOPPING=1, STATUS=…), if one listens."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.pop(NOTIFY_ENV, None) if address is None else address
        self._sock: socket.socket | None = None
        self._address = ""
        if address and address[0] in "/@":
            # An address starting with @ is in the abstract namespace.
            self._address = "\0" + address[1:] if address[0] == "@" else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def active(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        """Send `KEY=value` fields in one datagram; a manager that went away is not an error."""
        if self._sock is None:
            return
        with contextlib.suppress(OSError):
            self._sock.sendto("\n".join(fields).encode(), self._address)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def listen_sockets() -> list[socket.socket]:
    """The listening sockets a service manager handed over (socket activation), and nothing else.

    The variables are removed, so that no worker or task believes the sockets are meant for it.
    """
    pid = os.environ.pop(LISTEN_PID_ENV, None)
    count = os.environ.pop(LISTEN_FDS_ENV, None)
    os.environ.pop(LISTEN_FDNAMES_ENV, None)
    if pid is None or count is None or not pid.isdigit() or int(pid) != os.getpid():
        return []
    if not count.isdigit():
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets


def journal_on_stderr() -> bool:
    """Whether standard error is connected to the journal: then it reads priority prefixes (<3>…)
    and adds the time itself."""
    value = os.environ.get(JOURNAL_ENV, "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))
