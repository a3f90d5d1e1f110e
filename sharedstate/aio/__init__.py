"""sharedstate for asyncio: the same shared state, for FastAPI, Starlette, Quart, aiohttp.

A blocking call inside an event loop stalls every request of that worker, so async
apps use this client instead of :func:`sharedstate.get_shared_state`. It speaks the same
protocol to the same server (sync and async workers share one state), natively on the
event loop: no thread pool. Each operation of the sync API is a coroutine of the same
name::

    from sharedstate.aio import get_shared_state

    state = await get_shared_state()          # connects, or starts the server once
    hits = await state.incr("hits")
    await state.set("session:42", {"user": "ann"}, ttl=3600)
    await state.set_in(("cfg", "db", "port"), 5433)

    async with state.lock.hold(timeout=5):
        ...
    async with state.edit("cart", default=[]) as cart:
        cart.append("apple")

``sharedstate.starlette`` ties it to a Starlette or FastAPI app's lifespan.
"""

from .pool import DEFAULT_MAX_CONNECTIONS as DEFAULT_MAX_CONNECTIONS
from .state import AsyncLock as AsyncLock
from .state import AsyncNamespace as AsyncNamespace
from .state import AsyncSharedState as AsyncSharedState
from .state import connect_state as connect_state
from .state import get_shared_state as get_shared_state
