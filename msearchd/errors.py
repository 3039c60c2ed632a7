"""Domain errors with stable codes.

Every error that can reach a user is a `MsearchError` with a `code` that travels the wire unchanged, so
the CLI, the Python client and the REST shim can all branch on it without parsing messages.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MsearchError(Exception):
    """Base of all errors with a stable wire code."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class NotFound(MsearchError):
    code = "not_found"


class InvalidState(MsearchError):
    """The task exists, but its state forbids the operation."""

    code = "invalid_state"


class InvalidArgument(MsearchError):
    code = "invalid_argument"


class ProtocolError(MsearchError):
    """The peer broke the wire format: bad frame, bad message, unknown method."""

    code = "protocol_error"


class TooLarge(MsearchError):
    """A message would not fit in one frame: a request too big to send, or an answer holding too
    much at once (many tasks, or tasks with large data). Asked for less, it fits."""

    code = "too_large"

    def __init__(self, message: str, fits: int | None = None) -> None:
        super().__init__(message)
        # How many of the tasks asked for fit in one answer, where the daemon counted: the client
        # asks for that many next, not for half as many again and again.
        self.fits = fits

    def to_wire(self) -> dict[str, Any]:
        wire = super().to_wire()
        if self.fits is not None:
            wire["fits"] = self.fits
        return wire


class Unavailable(MsearchError):
    """The daemon cannot be reached, or is shutting down."""

    code = "unavailable"


class InternalError(MsearchError):
    code = "internal"


_BY_CODE: dict[str, type[MsearchError]] = {
    cls.code: cls
    for cls in (NotFound, InvalidState, InvalidArgument, ProtocolError, TooLarge, Unavailable, InternalError)
}


def from_wire(error: object) -> MsearchError:
    """Rebuild the error a peer sent; unknown codes keep their code and message."""
    if not isinstance(error, dict):
        return ProtocolError(f"malformed error from peer: {error!r}")
    code = str(error.get("code", "internal"))
    message = str(error.get("message", "unknown error"))
    cls = _BY_CODE.get(code)
    if cls is TooLarge:
        fits = error.get("fits")
        return TooLarge(message, fits if type(fits) is int and fits >= 0 else None)
    if cls is not None:
        return cls(message)
    exc = MsearchError(message)
    exc.code = code  # type: ignore[misc]
    return exc
