"""The C heap (glibc's malloc) of the daemon and of its workers: free memory at its top is kept for
the next statement, or the next task.

A statement that sorts, or tests `id IN (SELECT ...)`, opens temporary b-trees, and SQLite allocates
each one's page cache as one block, which it frees when the statement ends. With glibc's
default thresholds the heap's free top is handed back to the kernel (brk) once it passes 128 KB, and
taken back, a page fault per 4 KB page, by the next statement: in a bulk cancel, four brk calls and
~100 page faults a step of 500 tasks, ~20,000 faults and ~4% of the time of a cancel of 100,000.
A worker making thumbnails paid the same way for Pillow's buffers: ~330 page faults an image, about
0.5 ms of its ~17. glibc adapts those thresholds to what a process freed before, so whether it pays
depends on its past: the daemon and a fresh worker did; a script running the same statements, or a
process forked from one that had decoded images, did not.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks from this size up are mapped on their own and unmapped when freed; smaller ones come from
# the heap. glibc's own adaptive threshold ranges from 128 KB to 32 MiB.
MMAP_THRESHOLD = 4 << 20
# Free memory at the heap's top kept for reuse rather than handed back (glibc adapts it to twice the
# mmap threshold): a few MiB, against a daemon's resident size of tens to hundreds.
TRIM_THRESHOLD = 8 << 20


def keep_heap_top() -> bool:
    """Fix glibc's thresholds so that the heap's top is not handed back and taken again around every
    statement. False where the C library has no such setting (it then keeps its own ways)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
