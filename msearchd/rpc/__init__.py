"""The asyncio Unix-socket server: decode a request, call the service, encode the answer.

`listener` claims the socket path, `server` accepts clients within the limits and holds the method
table, `connection` serves one client: framing, turns, group commits and answers.
"""

from msearchd.rpc.listener import Listener, SocketRefused
from msearchd.rpc.server import FD_RESERVE_BASE, LARGE_FRAMES, RpcServer

__all__ = ["FD_RESERVE_BASE", "LARGE_FRAMES", "Listener", "RpcServer", "SocketRefused"]
