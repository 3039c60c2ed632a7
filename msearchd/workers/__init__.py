"""The worker pool: spawn, dispatch, progress, cancel (process-group signal, then kill all), respawn.

Each worker is a long-lived Python process in its own session, so that it and everything it starts
can be signalled as one process group. Everything it starts is also held where a task cannot take it
out (see msearchd.containment), and killed with the worker. The daemon makes itself a child
subreaper: whatever a task leaves orphaned is re-parented to it (or to its worker), and reaped, so a
cancel leaves no zombie behind.

`outcome`: how a task ended and what the pool tells its listener; `processes`: reaping, signals and
what an earlier daemon left; `core`: the pool's state; `channel`: each worker's channel, what it
reports; `stopping`: take-backs, the staged kill, overrun leases; `pool`: spawning, dispatch, exits.
"""

from msearchd.workers.core import WorkerProcess
from msearchd.workers.outcome import NOT_STARTED, Outcome, PoolListener
from msearchd.workers.pool import WorkerPool
from msearchd.workers.processes import Reaper, describe_exit, kill_leftovers, signal_group

__all__ = [
    "NOT_STARTED",
    "Outcome",
    "PoolListener",
    "Reaper",
    "WorkerPool",
    "WorkerProcess",
    "describe_exit",
    "kill_leftovers",
    "signal_group",
]
