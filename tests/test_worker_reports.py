"""A worker's reports of how its tasks ended, against a SIGTERM at an awkward moment (in this process)."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

import pytest

from msearchd import protocol
from msearchd.lease import LeaseWord
from msearchd.worker import Worker


def test_a_sigterm_while_outcomes_are_being_sent_ends_the_worker_after_they_are(monkeypatch):
    """Ends reported together are taken out of the worker's outbox to be written: a SIGTERM arriving
    then (the daemon stops the task after them) must not end the worker before they are written."""
    daemon_side, worker_side = socket.socketpair()
    worker = Worker(worker_side, LeaseWord.create(), {}, "/tmp")
    ended = {"task": 7, "status": "completed", "started": 1.0, "finished": 2.0}
    worker._outbox.append(ended)
    encode = protocol.encode

    def encode_as_sigterm_arrives(message: Any) -> bytes:
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs before this returns
        return encode(message)

    monkeypatch.setattr(protocol, "encode", encode_as_sigterm_arrives)
    previous = signal.signal(signal.SIGTERM, worker.on_sigterm)
    try:
        with pytest.raises(SystemExit):  # the worker ends, as it should between tasks
            worker.flush()
    finally:
        signal.signal(signal.SIGTERM, previous)
        worker_side.close()
    daemon_side.settimeout(5)
    assert protocol.FrameReader(daemon_side).read() == {"op": "done", "results": [ended]}
