"""TaskService: every operation on tasks, used by every transport.

Transports decode a request, call a method here and encode the answer; nothing here knows about
sockets. All methods run on the daemon's event loop, which owns the store: a method's store work
between two awaits is atomic with respect to every other request.

One module per operation family, named as the operation is in the RPC and the client (`submit`,
`cancel`, `retry`, ...), and a small `core` with the state they share. The families are mixins of one
class rather than objects of their own: the transports keep calling one `TaskService`, the operations
call each other as methods (a cancel settles dependents, a retry hands over), and no family needs a
reference to the others. For type checkers each mixin derives from `ServiceCore` (at run time the
core is the last base of `TaskService`) and declares the methods of other families it calls. A new
family is one module and one line in the class below.
"""

from msearchd.service.cancel import BULK_CHUNK, Cancelling
from msearchd.service.cluster import Clustering
from msearchd.service.core import REQUESTER, ServiceCore
from msearchd.service.dispatch import Dispatching
from msearchd.service.fanout import FANOUT_CHUNK, FANOUT_EVENT, FanningOut
from msearchd.service.keys import Keying
from msearchd.service.matching import Matching
from msearchd.service.outcomes import Reporting
from msearchd.service.priority import Prioritising
from msearchd.service.query import LIST_LIMIT_MAX, Querying
from msearchd.service.queue import Pausing
from msearchd.service.recovery import Recovering
from msearchd.service.retry import RETRY_CHUNK, Retrying
from msearchd.service.selection import Selecting
from msearchd.service.submit import Submitting
from msearchd.service.wait import Subscription, Waiting

__all__ = [
    "BULK_CHUNK",
    "FANOUT_CHUNK",
    "FANOUT_EVENT",
    "LIST_LIMIT_MAX",
    "REQUESTER",
    "RETRY_CHUNK",
    "Subscription",
    "TaskService",
]


class TaskService(
    Submitting,
    Keying,
    Querying,
    Cancelling,
    Prioritising,
    Retrying,
    Selecting,
    Matching,
    Pausing,
    Waiting,
    Dispatching,
    Reporting,
    FanningOut,
    Recovering,
    Clustering,
    ServiceCore,
):
    """Every operation on tasks: the families above, over the core state."""
