"""Small helpers shared by the integration tests."""

from __future__ import annotations

import psutil


def gone(pid: int) -> bool:
    """True when no process has this pid any more: exited and reaped, not a zombie."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_DEAD
    except psutil.NoSuchProcess:
        return True


def dead(pid: int) -> bool:
    """True when the process no longer runs. A zombie counts as dead: once its daemon is killed, an orphan
    goes to init, which reaps it on a real system (and may never here, in a sandbox)."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_DEAD, psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True
