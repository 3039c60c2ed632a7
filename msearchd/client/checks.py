"""What the blocking and the asyncio client check alike: where the daemon is, that it can be trusted, and
that an answer is one to a request made."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from msearchd.errors import ProtocolError, Unavailable, from_wire
from msearchd.trust import folder_problem, peer_problem


def default_socket_path() -> Path:
    """Imported only when needed: the daemon's configuration module costs a CLI ~5 ms to start."""
    from msearchd import config

    return config.default_socket_path()


def no_daemon(path: Path, exc: OSError) -> Unavailable:
    reason = exc.strerror or str(exc)
    return Unavailable(f"cannot reach msearchd at {path} ({reason}); is the daemon running?")


def check_folder(path: Path) -> None:
    """Refuse a socket whose folder another user could have put it in, before connecting."""
    try:
        problem = folder_problem(path.parent, "socket folder")
    except (FileNotFoundError, NotADirectoryError):
        return  # connecting fails and says so
    except OSError as exc:
        problem = f"cannot look at the socket folder {path.parent}: {exc.strerror or exc}"
    if problem is not None:
        raise Unavailable(f"refusing to talk to msearchd at {path}: {problem}")


def check_peer(path: Path, sock: socket.socket) -> None:
    """Refuse a server of another user before it is sent anything (a request can carry secrets)."""
    problem = peer_problem(sock)
    if problem is not None:
        raise Unavailable(f"refusing to talk to msearchd at {path}: {problem}")


def answer_result(message: dict[str, Any] | None, req_id: int) -> Any:
    if message is None:
        raise Unavailable("msearchd closed the connection")
    if message.get("id") == req_id and "error" not in message:
        return message.get("result")  # the answer to the request, and a success: most answers
    check_answer(message, {req_id})
    if "error" in message:
        raise from_wire(message["error"])
    return message.get("result")


def check_answer(message: dict[str, Any], expected: set[int] | dict[int, Any]) -> None:
    """Refuse an answer to no request we are waiting for. An error with a null id is about the
    connection or a request the daemon could not identify: it is raised."""
    got = message.get("id")
    if got is None and "error" in message:
        raise from_wire(message["error"])
    if got not in expected:
        raise ProtocolError(f"answer for request {got!r}, which is not waiting for one")
