"""The two Linux process controls (prctl(2)) that keep the daemon's process tree tidy."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int) -> bool:
    """Have the kernel SIGKILL this process when its parent dies, even by SIGKILL.

    False when the parent is already gone (it died before the request could be made): exit then.
    """
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    return os.getppid() == parent_pid


def become_subreaper() -> bool:
    """Adopt the orphans of every descendant, so that they can be found, killed and reaped."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)
