"""Whom the daemon and its clients trust: folders that only their own user can change, and peers of
their own uid.

Another user who can write a folder can put a socket or a database of theirs in it; a process of
another user at the other end of the socket sees every request, commands and tokens included. The
client imports this module, so it uses only what Python has loaded anyway.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path

_PEERCRED = struct.Struct("3i")  # pid, uid, gid


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end, as the kernel vouches for them."""
    pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return pid, uid


def folder_problem(folder: Path, what: str) -> str | None:
    """Why `folder` cannot hold this user's private files, in one sentence, or None if it can.

    It must belong to this user and be writable by no one else. A symbolic link to it must belong to
    this user or to root: whoever owns the link can point it elsewhere. `FileNotFoundError` if it is
    missing.
    """
    me = os.getuid()
    link = folder.lstat()
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (me, 0):
        return f"the {what} {folder} is a symbolic link that belongs to uid {link.st_uid}, not to this user"
    target = folder.stat()
    if not stat.S_ISDIR(target.st_mode):
        return f"the {what} {folder} is not a folder"
    if target.st_uid != me:
        return f"the {what} {folder} belongs to uid {target.st_uid}, not to this user (uid {me})"
    if target.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(target.st_mode)
        return f"the {what} {folder} can be written by other users (mode {mode:o}); chmod go-w it"
    return None


def peer_problem(sock: socket.socket) -> str | None:
    """Why the process at the other end of `sock` must not be told anything, or None."""
    pid, uid = peer_credentials(sock)
    if uid != os.getuid():
        return f"it is served by uid {uid} (pid {pid}), not by this user (uid {os.getuid()})"
    return None
