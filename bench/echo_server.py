"""The bare baseline of a round trip: an asyncio Unix-socket server answering each msgpack frame.

Same framing as msearchd (4-byte big-endian length + msgpack map). Every request
``{id, method, params}`` is answered ``{id, result: params}``. Prints "ready" once listening.

    python bench/echo_server.py /tmp/x/echo.sock
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys

import msgpack

HEADER = struct.Struct(">I")


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            header = await reader.readexactly(4)
            (length,) = HEADER.unpack(header)
            message = msgpack.unpackb(await reader.readexactly(length), raw=False)
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
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1]))
