"""The state in sharedstate's own server on this machine: the default backend.

The sync client's :class:`~sharedstate.client.transport.Transport` and the asyncio
client's :class:`~sharedstate.aio.pool.Pool` carry the store calls over a Unix socket
or loopback TCP, connecting to the server at the address, or starting it there first
(exactly once however many workers race: :mod:`sharedstate.client.launcher`).
"""

from __future__ import annotations

from ..aio.connection import Opened
from ..aio.connection import connect_or_start as connect_or_start_async
from ..aio.pool import Pool
from ..client.launcher import connect_or_start
from ..client.transport import Hello, Link, Transport
from ..config import Settings


def local_transport(settings: Settings, *, start: bool, timeout: float) -> Transport:
    def connect(hello: Hello) -> Link:
        return connect_or_start(settings, start=start, timeout=timeout, hello=hello)

    return Transport(
        connect,
        settings.address,
        call_timeout=settings.call_timeout,
        max_value_bytes=settings.max_value_bytes,
    )


def local_pool(settings: Settings, *, start: bool, timeout: float, max_connections: int) -> Pool:
    async def connect(hello: Hello) -> Opened:
        return await connect_or_start_async(settings, start=start, timeout=timeout, hello=hello)

    return Pool(
        connect,
        settings.address,
        call_timeout=settings.call_timeout,
        max_connections=max_connections,
    )
