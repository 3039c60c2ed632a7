"""The bare baseline of a round trip: an asyncio Unix-socket server answering each msgpack frame.

Same framing as msearchd (4-byte big-endian length + msgpack map). Every request
``{id, method, params}`` is answered ``{id, result: params}``. Prints "ready" once listening.

    python bench/echo_server.py /tmp/x/echo.sock
    python bench/echo_server.py /tmp/x/huey.sock --huey   # a "submit" enqueues into Huey first

With --huey, a `submit` request is answered only once bench/huey_app has enqueued a no-op task (the
database and configuration come from BENCH_HUEY_DB and BENCH_HUEY_FSYNC): Huey's enqueue behind the
same round trip as msearchd's submit, since Huey itself enqueues in the caller's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
from collections.abc import Callable
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
ENQUEUE: Callable[[Any], Any] | None = None


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            header = await reader.readexactly(4)
            (length,) = HEADER.unpack(header)
            message = msgpack.unpackb(await reader.readexactly(length), raw=False)
            if ENQUEUE is not None and message.get("method") == "submit":
                ENQUEUE(message["params"]["data"]["i"])
            body = msgpack.packb(
                {"id": message.get("id"), "result": message.get("params")}, use_bin_type=True
            )
            writer.write(HEADER.pack(len(body)) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(path: str) -> None:
    server = await asyncio.start_unix_server(serve, path=path)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if "--huey" in sys.argv[2:]:
        import huey_app

        ENQUEUE = huey_app.noop
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1]))
