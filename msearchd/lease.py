"""Where a worker is in its lease: one word of memory the worker writes and the daemon reads.

A worker is handed short tasks several at a time (a lease), numbered in the order sent. Before it
starts entry `seq` it writes (seq, REACHED), then reads its channel for `skip` messages, then writes
(seq, RUNNING) or (seq, SKIPPED); once the entry ended, (seq, DONE). To take an entry back, the daemon
sends `skip` first and reads the word after. If the word is below `seq`, the worker had not reached
it when the daemon looked, so it reads the skip when it gets there: the entry will not run. A word
at (seq, RUNNING) means it runs now, and only a signal stops it. Reading memory needs no answer from
a worker that may be busy for a long time. A cancel takes an entry back this way, and so does a lease
that overran, for the entries after the one that runs far too long.
"""

from __future__ import annotations

import mmap
import os
import struct
from enum import IntEnum

_WORD = struct.Struct("<q")

# The longest an outcome waits in the worker to be reported with those of the rest of its lease.
REPORT_DELAY = 0.01  # one aligned 8-byte store: never read half-written


class Phase(IntEnum):
    REACHED = 1
    RUNNING = 2
    SKIPPED = 3
    DONE = 4


class LeaseWord:
    """The shared word; `create` in the daemon, `attach` in the worker to the fd it inherited."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, _WORD.size)

    @classmethod
    def create(cls) -> LeaseWord:
        fd = os.memfd_create("msearch-lease", os.MFD_CLOEXEC)
        os.ftruncate(fd, _WORD.size)
        return cls(fd)

    @classmethod
    def attach(cls, fd: int) -> LeaseWord:
        word = cls(fd)
        os.close(fd)  # the mapping stays; what tasks start must not inherit the fd
        word.fd = -1
        return word

    def read(self) -> tuple[int, Phase | None]:
        value = _WORD.unpack_from(self._map, 0)[0]
        return value >> 3, Phase(value & 7) if value & 7 else None

    def write(self, seq: int, phase: Phase) -> None:
        _WORD.pack_into(self._map, 0, seq << 3 | phase)

    def close(self) -> None:
        self._map.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
