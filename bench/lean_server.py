"""The leanest Python daemon for one request path: what Python itself costs above the floor.

An asyncio protocol on a Unix socket with msearchd's framing that answers `cancel`, `set_priority`,
`submit` and `get` with the floor's SQL (`floor.FloorStore`, the same transactions as the daemon's)
and the daemon's answer (the whole task as `Task.to_wire` shapes it, read back from its row), and
does nothing else: no checks of the request, no history of who asked, no events, no workers, no
group commit. msearchd cannot be quicker than this on the same interpreter; the distance between
the two is what its features cost, and the distance from this to the floor is Python's own.

    python bench/lean_server.py /tmp/x/lean.sock /tmp/x/lean.db PENDING

Prints "ready FIRST_ID" once listening, the ids of its PENDING tasks being FIRST_ID onwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
from floor import READ_TASK, FloorStore

HEADER = struct.Struct(">I")


def ref(task_id: int | None) -> str | None:
    return f"task_{task_id}" if task_id else None


class Lean(asyncio.Protocol):
    def __init__(self, store: FloorStore) -> None:
        self.store = store
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while len(self.buffer) >= 4:
            (length,) = HEADER.unpack_from(self.buffer)
            if len(self.buffer) < 4 + length:
                break
            message = msgpack.unpackb(self.buffer[4 : 4 + length], raw=False)
            del self.buffer[: 4 + length]
            body = msgpack.packb({"id": message["id"], "result": self.answer(message)}, use_bin_type=True)
            out.append(HEADER.pack(len(body)) + body)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def answer(self, message: dict[str, Any]) -> Any:
        method, params = message["method"], message["params"]
        store = self.store
        if method == "hello":
            return {"protocol": params["protocol"], "server": "lean"}
        if method == "submit":
            now = time.time()
            task_id = store.submit()
            row = (
                task_id,
                params["type"],
                "pending",
                6,
                params["data"],
                0.0,
                None,
                0,
                *[None] * 5,
                now,
                None,
                None,
                None,
            )
            return wire(row)
        task_id = params["task_id"]
        if method == "cancel":
            task = wire(store.cancel(task_id))
            task.update(status="cancelled", finished_at=time.time(), stop_reason="not_started")
            return {"task": task, "cancelled_dependents": 0}
        if method == "set_priority":
            task = wire(store.set_priority(task_id, params["priority"]))
            task["priority"] = params["priority"]
            return task
        return wire(store.db.execute(READ_TASK, (task_id,)).fetchone())


def wire(row: tuple[Any, ...]) -> dict[str, Any]:
    """The task of a row of READ_TASK, as `Task.to_wire` shapes it (the same keys in the same order)."""
    task_id, task_type, status, priority, data, progress, operation, attempts, error, blocked, stop = row[:11]
    deps = row[17] if len(row) > 17 else None
    return {
        "id": ref(task_id),
        "type": task_type,
        "status": status,
        "priority": priority,
        "data": msgpack.unpackb(data, raw=False) if isinstance(data, bytes) else data,
        "depends_on": [ref(int(d)) for d in deps.split(",")] if deps else [],
        "progress": progress,
        "current_operation": operation,
        "attempts": attempts,
        "error": error,
        "blocked_reason": blocked,
        "stop_reason": stop,
        "retry_of": ref(row[11]),
        "retried_as": ref(row[12]),
        "created_at": row[13],
        "started_at": row[14],
        "finished_at": row[15],
        "worker_pid": row[16],
        "log_path": None,
        "result": None,
    }


async def main(path: str, db_path: str, pending: int) -> None:
    store = FloorStore(Path(db_path), pending=pending)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: Lean(store), path=path)
    print("ready", store.ids[0] if store.ids else 0, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
