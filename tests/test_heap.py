"""The daemon's C heap keeps its free top between statements (msearchd.heap)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# In a fresh interpreter: blocks the size of SQLite's temporary page caches, at the top of the heap,
# freed together as a statement's end frees them; prints how far the heap grew for them, and how
# much of that it handed back once they were freed.
_PROBE = """
import ctypes
from msearchd.heap import keep_heap_top
libc = ctypes.CDLL(None)
libc.sbrk.restype = ctypes.c_void_p
libc.sbrk.argtypes = [ctypes.c_long]
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
assert keep_heap_top()
before = libc.sbrk(0)
blocks = [libc.malloc(1 << 20) for _ in range(4)] + [libc.malloc(90 << 10) for _ in range(8)]
grown = libc.sbrk(0)
for block in blocks:
    libc.free(block)
print(grown - before, grown - libc.sbrk(0))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_freed_top_of_the_heap_is_kept() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True).stdout
    grown, handed_back = (int(n) for n in out.split())
    assert grown >= (4 << 20) + 8 * (90 << 10)  # the blocks came from the heap, not mapped on their own
    assert handed_back == 0
