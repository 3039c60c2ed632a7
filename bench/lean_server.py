"""The leanest Python daemon for one request path: what Python itself costs above the floor.

An asyncio protocol on a Unix socket with msearchd's framing that answers `cancel`, `set_priority`,
`submit` and `get` with the floor's SQL (`floor.FloorStore`, the same transactions as the daemon's)
and the daemon's answer (the whole task as `Task.to_wire` shapes it, read back from its row), and
does nothing else: no checks of the request, no history of who asked, no events, no workers, no
group commit. msearchd cannot be quicker than this on the same interpreter; the distance between
the two is what its features cost, and the distance from this to the floor is Python's own.

    python bench/lean_server.py /tmp/x/lean.sock /tmp/x/lean.db PENDING [--checks]

Prints "ready FIRST_ID" once listening, the ids of its PENDING tasks being FIRST_ID onwards.

With `--checks` it also makes the checks every request needs, with msearchd's own functions, and
answers a request that fails one with its error, as the daemon does: the request's id and params,
the hello first, the task's id, the priority, the type and data of a new task, and the state of the
task a control write changes (on the row the floor's SQL reads anyway). The distance from the plain
server is what those checks cost; the distance from this one to the daemon is what the rest of its
design costs (turns and group commit, the task model, the events, the layers between them).
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
from floor import READ_TASK, WAITING, FloorStore

from msearchd.errors import InvalidState, MsearchError, NotFound, ProtocolError
from msearchd.model import parse_task_id, validate_data, validate_priority, validate_type
from msearchd.protocol import check_id, check_params

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
            body = msgpack.packb(self.reply(message), use_bin_type=True)
            out.append(HEADER.pack(len(body)) + body)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def reply(self, message: dict[str, Any]) -> dict[str, Any]:
        return {"id": message["id"], "result": self.answer(message)}

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


class Checked(Lean):
    """`Lean` with the checks every request needs (see the module's documentation)."""

    def __init__(self, store: FloorStore) -> None:
        super().__init__(store)
        self.greeted = False

    def reply(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            req_id = check_id(message.get("id"))
        except ProtocolError as exc:
            return {"id": None, "error": exc.to_wire()}
        try:
            return {"id": req_id, "result": self.checked_answer(message)}
        except MsearchError as exc:
            return {"id": req_id, "error": exc.to_wire()}

    def checked_answer(self, message: dict[str, Any]) -> Any:
        method = message.get("method")
        if not isinstance(method, str):
            raise ProtocolError("a request needs a method name")
        params = check_params(method, message.get("params"))
        if method == "hello":
            self.greeted = True
        elif not self.greeted:
            raise ProtocolError("the first request on a connection must be hello")
        elif method == "submit":
            validate_type(params["type"])
            validate_data(params.get("data") or {})
            if params.get("priority") is not None:
                validate_priority(params["priority"])
        else:
            params["task_id"] = parse_task_id(params.get("task_id"))
            if method == "set_priority":
                params["priority"] = validate_priority(params["priority"])
        return self.answer({"method": method, "params": params})


class CheckedStore(FloorStore):
    """The floor's control writes, refusing a task that does not exist or is not waiting, by the row
    their SQL reads first (its write is guarded by the task's state already)."""

    def set_priority(self, task_id: int, priority: int) -> tuple[Any, ...]:
        return waiting(super().set_priority(task_id, priority), task_id)

    def cancel(self, task_id: int) -> tuple[Any, ...]:
        return waiting(super().cancel(task_id), task_id)


def waiting(row: tuple[Any, ...] | None, task_id: int) -> tuple[Any, ...]:
    if row is None:
        raise NotFound(f"task {ref(task_id)} does not exist")
    if row[2] not in WAITING:
        raise InvalidState(f"{ref(task_id)} is {row[2]}")
    return row


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


async def main(path: str, db_path: str, pending: int, checks: bool) -> None:
    store = (CheckedStore if checks else FloorStore)(Path(db_path), pending=pending)
    loop = asyncio.get_running_loop()
    kind = Checked if checks else Lean
    server = await loop.create_unix_server(lambda: kind(store), path=path)
    print("ready", store.ids[0] if store.ids else 0, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), "--checks" in sys.argv[4:]))
