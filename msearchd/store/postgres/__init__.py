"""The task store in a PostgreSQL database that several daemons, one per machine, share.

It offers what the SQLite store offers the service, with the same meaning, and what sharing needs on
top: which daemon runs a task (`host`), a heartbeat per daemon (the `daemons` table) so that the
others can take back the tasks of one that died, and notifications (LISTEN/NOTIFY) that carry
cancels and events between daemons. Claims take rows with FOR UPDATE SKIP LOCKED: two daemons never
claim the same task, and neither waits for the other.

One class, `PgStore`, made of the same families of mixins as the SQLite store (`connection` last),
and `cluster` for what the daemons know of each other.
"""

from msearchd.store.postgres.cancel import Cancels
from msearchd.store.postgres.cluster import NOTIFY_MAX, Cluster
from msearchd.store.postgres.connection import CONNECT_TIMEOUT, GETCONN_TIMEOUT, Connection, redact
from msearchd.store.postgres.keys import KeysAndPauses
from msearchd.store.postgres.leases import Leases
from msearchd.store.postgres.maintenance import Maintenance
from msearchd.store.postgres.queries import Queries
from msearchd.store.postgres.schema import MIGRATIONS, SCHEMA_VERSION
from msearchd.store.postgres.selections import Selections
from msearchd.store.postgres.submit import Submits
from msearchd.store.sqlite import UnusableStore

__all__ = [
    "CONNECT_TIMEOUT",
    "GETCONN_TIMEOUT",
    "MIGRATIONS",
    "NOTIFY_MAX",
    "SCHEMA_VERSION",
    "PgStore",
    "UnusableStore",
    "redact",
]


class PgStore(Queries, Submits, Leases, Cancels, Selections, KeysAndPauses, Maintenance, Cluster, Connection):
    """Tasks in a PostgreSQL database shared by several daemons. Not thread-safe: the loop owns it."""
