"""The task store in SQLite, WAL mode: `Store`, the implementation of `msearchd.store.TaskStore`.

One class over one connection, made of a mixin per family of statements, as the service is of one
per family of operations: `connection` (opening, migrations, transactions, checkpoints) is the last
base; `queries`, `submit`, `leases`, `cancel`, `selections`, `keys` and `maintenance` hold the rest.
What both stores share is in `msearchd.store.rows`, `clauses` and `transactions`.
"""

from msearchd.store.schema import WAITING
from msearchd.store.sqlite.cancel import Cancels
from msearchd.store.sqlite.connection import (
    AUTOCHECKPOINT,
    BUSY_TIMEOUT_MS,
    CHUNK,
    Connection,
    UnusableStore,
    disk_full,
)
from msearchd.store.sqlite.keys import KeysAndPauses
from msearchd.store.sqlite.leases import Leases
from msearchd.store.sqlite.maintenance import Maintenance
from msearchd.store.sqlite.queries import Queries
from msearchd.store.sqlite.selections import Selections
from msearchd.store.sqlite.submit import Submits

__all__ = ["AUTOCHECKPOINT", "BUSY_TIMEOUT_MS", "CHUNK", "WAITING", "Store", "UnusableStore", "disk_full"]


class Store(Queries, Submits, Leases, Cancels, Selections, KeysAndPauses, Maintenance, Connection):
    """Tasks and their dependencies in one SQLite file. Not thread-safe: the daemon's loop owns it."""
