"""The smallest useful client: argparse, socket, msgpack; hello and one request. The CLI's baseline.

Usage: ``MSEARCH_SOCKET=/path/d.sock python bench/minimal_client.py cancel 12`` or
``... priority 12 3``.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
from typing import Any

import msgpack

HEADER = struct.Struct(">I")


def call(sock: socket.socket, req_id: int, method: str, params: dict[str, Any]) -> Any:
    body = msgpack.packb({"id": req_id, "method": method, "params": params}, use_bin_type=True)
    sock.sendall(HEADER.pack(len(body)) + body)
    header = sock.recv(4, socket.MSG_WAITALL)
    (length,) = HEADER.unpack(header)
    answer = msgpack.unpackb(sock.recv(length, socket.MSG_WAITALL), raw=False)
    if "error" in answer:
        print(f"error: {answer['error']['message']}", file=sys.stderr)
        sys.exit(1)
    return answer["result"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="minimal_client")
    sub = parser.add_subparsers(dest="command", required=True)
    cancel = sub.add_parser("cancel")
    cancel.add_argument("task_id")
    prio = sub.add_parser("priority")
    prio.add_argument("task_id")
    prio.add_argument("priority", type=int)
    args = parser.parse_args()
    task_id: str | int = int(args.task_id) if args.task_id.isdigit() else args.task_id
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.environ["MSEARCH_SOCKET"])
    call(sock, 1, "hello", {"protocol": 1, "client": "minimal"})
    if args.command == "cancel":
        result = call(sock, 2, "cancel", {"task_id": task_id})
        print(f"cancelled {result['task']['id']}")
    else:
        result = call(sock, 2, "set_priority", {"task_id": task_id, "priority": args.priority})
        print(f"{result['id']} priority {result['priority']}")
    sock.close()


if __name__ == "__main__":
    main()
