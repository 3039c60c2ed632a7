"""The socket path the daemon listens on: its folder checked, a lock beside it, a stale socket cleared."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import stat
from pathlib import Path

from msearchd.config import socket_lock_path
from msearchd.trust import folder_problem

log = logging.getLogger("msearchd.rpc")


class SocketRefused(Exception):
    """A reason not to listen on the socket path, in one sentence."""


def prepare_socket_dir(path: Path) -> None:
    """Create the socket's folder private to this user; refuse one that another user owns or can write.

    Such a user could put a socket of theirs in its place and be sent every request. An existing folder
    is never chmod-ed: one that others may enter but not write (0755) is only logged.
    """
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)  # mkdir's mode is filtered by the umask
    problem = folder_problem(folder, "socket folder")
    if problem is not None:
        raise SocketRefused(problem)
    if folder.stat().st_mode & 0o077:
        log.warning("socket folder %s is open to other users; the socket itself is 0600", folder)


class Listener:
    """The socket path, claimed: a lock beside it, held for the daemon's life, and the socket bound.

    The lock makes "is a daemon there already?" and the bind one step, so that of two daemons started
    together only one listens. The socket's inode tells ours from one put in its place later, which
    stopping must leave alone.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        prepare_socket_dir(path)
        self._lock: int | None = _lock_beside(path)
        try:
            _clear_stale_socket(path)
            self.sock = _bind(path)
        except BaseException:
            os.close(self._lock)
            raise
        bound = path.lstat()
        self._identity: tuple[int, int] | None = (bound.st_dev, bound.st_ino)

    @classmethod
    def adopt(cls, sock: socket.socket) -> Listener:
        """A listening socket a service manager made and handed over (socket activation): the manager
        owns its path and keeps it for the next start, so it is neither locked nor removed here."""
        listener = cls.__new__(cls)
        listener.path = Path(sock.getsockname())
        listener.sock = sock
        listener._lock = listener._identity = None
        return listener

    def release(self) -> None:
        """Remove the socket if it is still ours, then unlock. The lock file stays: were it removed, two
        daemons could each lock a file of that name, the removed one and a new one."""
        if self._identity is not None:
            with contextlib.suppress(FileNotFoundError):
                now = self.path.lstat()
                if (now.st_dev, now.st_ino) == self._identity:
                    self.path.unlink()
        self.sock.close()
        if self._lock is not None:
            os.close(self._lock)


def _lock_beside(path: Path) -> int:
    fd = os.open(socket_lock_path(path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise SocketRefused(f"another msearchd (pid {holder}) is starting or listening on {path}") from None
    except BaseException:
        os.close(fd)
        raise
    os.fchmod(fd, 0o600)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket that a daemon which did not stop cleanly left; refuse anything else."""
    try:
        found = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise SocketRefused(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(5.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # nobody listens: left by a daemon that was killed
        return
    except TimeoutError:
        pass  # its backlog is full: someone listens
    finally:
        probe.close()
    raise SocketRefused(f"another msearchd is already listening on {path}")


def _bind(path: Path) -> socket.socket:
    """Bind without replacing anything at `path` (asyncio's own bind would remove a socket there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    return sock
