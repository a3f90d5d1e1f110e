"""Where the state lives: the seam between the API and the storage.

The public API (:class:`~sharedstate.SharedState` and its views, lock and namespace,
the asyncio client, the framework adapters, the CLI's data commands) turns each
operation into a store call (:mod:`sharedstate.client.commands`) and hands it to a
*backend*, which makes the call where the state lives:

- :mod:`.local`: sharedstate's own server on this machine (a Unix socket or loopback
  TCP), started on first use if needed. The default.
- :mod:`.redis`: a Redis or Valkey server, for apps that run on several machines.
  Chosen by a ``redis://``, ``rediss://``, ``redis+unix://`` or ``valkey://`` address.

A backend implements every store operation of :data:`sharedstate.protocol.OPERATIONS`
with the local server's meaning. A sync backend is a :class:`Transport`, an asyncio one
an :class:`AsyncTransport`; a third backend would be one more module here, and a
branch in :func:`connect_sync` and :func:`connect_async`.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..address import Address
from ..client.commands import Call
from ..codec import Where
from ..config import Settings
from ..errors import ConfigError


class Transport(Protocol):
    """How the sync client makes store calls (``sharedstate.client.transport.Transport``
    for the local server, ``sharedstate.backends.redis.sync.RedisTransport`` for Redis)."""

    address: Address
    max_value_bytes: int

    def call(self, method: str, *args: Any, waits: float | None = 0.0) -> Any: ...
    def encode(self, value: Any, where: Where) -> bytes: ...
    def connect(self) -> None: ...
    def close(self) -> None: ...
    def forget_inherited(self) -> None: ...


class AsyncTransport(Protocol):
    """How the asyncio client makes store calls (``sharedstate.aio.pool.Pool`` for the
    local server, ``sharedstate.backends.redis.aio.AsyncRedisTransport`` for Redis)."""

    address: Address

    async def run(self, call: Call) -> Any: ...
    async def connect(self) -> None: ...
    async def aclose(self) -> None: ...
    def forget(self, *, close: bool = True) -> None: ...
    @property
    def connections(self) -> int: ...


def connect_sync(settings: Settings, *, start: bool, timeout: float) -> Transport:
    """The sync backend for ``settings.address`` (not connected yet)."""
    if settings.address.is_redis:
        from .redis.sync import RedisTransport

        return RedisTransport(_with_redis(settings))
    from .local import local_transport

    return local_transport(settings, start=start, timeout=timeout)


def connect_async(
    settings: Settings, *, start: bool, timeout: float, max_connections: int
) -> AsyncTransport:
    """The asyncio backend for ``settings.address`` (it connects on first use)."""
    if settings.address.is_redis:
        from .redis.aio import AsyncRedisTransport

        return AsyncRedisTransport(_with_redis(settings), max_connections=max_connections)
    from .local import local_pool

    return local_pool(settings, start=start, timeout=timeout, max_connections=max_connections)


def _with_redis(settings: Settings) -> Settings:
    """``settings``, once redis-py is known to be installed."""
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"the address {settings.address} is a Redis server, which needs redis-py: "
            "pip install 'sharedstate[redis]'"
        ) from None
    return settings
