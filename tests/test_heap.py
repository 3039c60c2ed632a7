"""The C heaps of the daemon and of its workers keep their free top (msearchd.heap)."""

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


def minor_faults(pid: int) -> int:
    """Page faults the process `pid` has taken that needed no reading (field 10 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rpartition(")")[2].split()[7])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_a_worker_making_thumbnails_does_not_fault_its_heap_in_again_for_each(make_daemon, tmp_path) -> None:
    """Pillow's buffers of one image after another reuse the worker's heap: with glibc's own
    thresholds a fresh worker handed the top back and took ~330 page faults an image."""
    from PIL import Image

    base = Image.effect_noise((1600, 1200), 64).convert("RGB")  # a phone photo, scaled down
    images = []
    for i in range(6):
        path = tmp_path / f"photo{i}.jpg"
        base.rotate(i * 30).save(path, quality=90)  # each its own content: none is in the cache
        images.append({"path": str(path)})
    with make_daemon(workers=1).client() as c:

        def thumbnails(items: list[dict[str, str]]) -> list[dict]:
            ids = c.submit_many([{"type": "thumbnail_generate", "data": item} for item in items])["task_ids"]
            return c.wait(ids, timeout=60)["tasks"]

        (first,) = thumbnails(images[:1])  # the handler imported, its buffers made once
        worker = first["worker_pid"]
        before = minor_faults(worker)
        done = thumbnails(images[1:])
        faults = minor_faults(worker) - before
    assert [t["status"] for t in done] == ["completed"] * 5 and {t["worker_pid"] for t in done} == {worker}
    assert faults < 5 * 100, faults  # a few hundred each, before
