"""The public Python API: `Client` (blocking) and `AsyncClient`, both thin layers over the RPC.

    from msearchd.client import Client
    with Client() as c:
        task = c.submit("command", {"argv": ["sleep", "5"]}, priority=2)
        c.wait([task["id"]])

Errors arrive as `msearchd.errors.MsearchError` subclasses carrying the daemon's stable code.

The blocking client is in `msearchd.client.blocking`, the asyncio one in `msearchd.client.asynchronous`;
both are imported from here.
"""

from msearchd.client.asynchronous import AsyncClient, AsyncEventStream
from msearchd.client.blocking import Client, EventStream, Pipeline

__all__ = ["AsyncClient", "AsyncEventStream", "Client", "EventStream", "Pipeline"]
