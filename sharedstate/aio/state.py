"""The asyncio worker API: ``await get_shared_state()`` and the object it returns."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, NoReturn

from ..address import Address
from ..backends import AsyncTransport, connect_async
from ..client.commands import MISSING, Commands, load_plain
from ..client.state import lock_timeout, release_failure_hidden
from ..codec import Contents, Where, encode_within
from ..config import DEFAULT_MAX_VALUE_BYTES, Settings, load_settings
from ..errors import KeyNotFound, SharedStateError
from .pool import DEFAULT_MAX_CONNECTIONS


class AsyncLock:
    """The server's one shared lock, held by the task that takes it.

    The same lock as the sync client's ``state.lock``: a sync worker and an async one
    exclude each other. A task holding it keeps a connection to itself; if the process
    dies, or the task is cancelled while taking or freeing it, that connection closes
    and the server frees the lock. Acquire and release it in the same task.
    """

    __slots__ = ("_commands", "_run")

    def __init__(self, state: AsyncSharedState) -> None:
        self._run = state._run
        self._commands = state._commands

    async def acquire(
        self, blocking: bool = True, timeout: float | None = None, lease: float | None = None
    ) -> bool:
        """Take the lock; True if taken. ``timeout=None`` (or -1) waits as long as needed.

        ``lease``: seconds after which the server frees the lock even if this task has
        not released it; the late ``release()`` then raises :class:`LeaseExpired`.
        """
        return bool(await self._run(self._commands.lock_acquire(blocking, timeout, lease)))

    async def release(self) -> None:
        await self._run(self._commands.lock_release())

    async def locked(self) -> bool:
        """Whether anyone holds the lock right now."""
        return bool(await self._run(self._commands.lock_locked()))

    @contextlib.asynccontextmanager
    async def hold(
        self, timeout: float | None = None, lease: float | None = None
    ) -> AsyncIterator[None]:
        """``async with state.lock.hold(timeout=5, lease=30):``: like ``async with state.lock:``.

        Raises :class:`Timeout` if the lock can't be had within ``timeout`` seconds.
        """
        if not await self.acquire(timeout=timeout, lease=lease):
            raise lock_timeout(timeout)
        try:
            yield
        except BaseException as error:
            await self.__aexit__(type(error), error, None)
            raise
        await self.__aexit__(None, None, None)

    async def __aenter__(self) -> bool:
        return await self.acquire()

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            await self.release()
        except SharedStateError as error:
            if not release_failure_hidden(error, exc_type):
                raise


class AsyncNamespace:
    """Attributes shared by all workers: ``await state.namespace.set("mode", "fast")``."""

    __slots__ = ("_commands", "_run")

    def __init__(self, state: AsyncSharedState) -> None:
        self._run = state._run
        self._commands = state._commands

    async def get(self, name: str, default: Any = MISSING) -> Any:
        """``state.namespace.<name>``; :class:`AttributeNotFound` if missing and no default."""
        return await self._run(self._commands.ns_get(name, default))

    async def set(self, name: str, value: Any) -> None:
        await self._run(self._commands.ns_set(name, value))

    async def delete(self, name: str) -> None:
        """``del state.namespace.<name>``; :class:`AttributeNotFound` if missing."""
        await self._run(self._commands.ns_delete(name))

    async def to_dict(self) -> dict[str, Any]:
        """A plain copy of all attributes."""
        result: dict[str, Any] = await self._run(self._commands.ns_to_dict())
        return result


class AsyncSharedState:
    """The shared dict, for asyncio code: each operation a coroutine, atomic on the server.

    The same state the sync :class:`~sharedstate.SharedState` sees, with the same
    operations under the same names; what the sync client spells with operators is a
    method here (``await state.getitem(k)`` for ``state[k]``, ``await state.contains(k)``
    for ``k in state``, ``await state.len()``). Values come back as plain data; to write
    inside a stored dict or list, name the place by its path::

        await state.set("cfg", {"db": {"port": 5432}})
        await state.set_in(("cfg", "db", "port"), 5433)     # one atomic write
        await state.get_in(("cfg", "db", "port"))           # 5433

    Bound to the event loop it was made in. Concurrent tasks share a few connections
    (:mod:`sharedstate.aio.pool`); a task cancelled mid-call leaves nothing held.
    """

    def __init__(
        self, pool: AsyncTransport, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    ) -> None:
        self._pool = pool
        self.address: Address = pool.address
        self.max_value_bytes = max_value_bytes
        self._commands = Commands(self._encode, load_plain)
        self._run = pool.run
        self.lock = AsyncLock(self)
        self.namespace = AsyncNamespace(self)

    def _encode(self, value: Any, where: Where) -> bytes:
        return encode_within(value, where, self.max_value_bytes)

    # -- the dict protocol ----------------------------------------------------------

    async def getitem(self, key: Any) -> Any:
        """``state[key]``: :class:`KeyNotFound` if it is missing."""
        return await self._run(self._commands.getitem(key))

    async def get(self, key: Any, default: Any = None) -> Any:
        return await self._run(self._commands.get(key, default))

    async def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        """``state[key] = value``; with ``ttl``, the key expires ``ttl`` seconds from now."""
        await self._run(self._commands.set(key, value, ttl))

    async def delete(self, key: Any) -> None:
        """``del state[key]``: :class:`KeyNotFound` if it is missing (``pop(key, None)``
        doesn't mind)."""
        await self._run(self._commands.delete(key))

    async def contains(self, key: Any) -> bool:
        """``key in state``."""
        return bool(await self._run(self._commands.contains(key)))

    async def len(self) -> int:
        """``len(state)``."""
        return int(await self._run(self._commands.length()))

    async def keys(self) -> list[Any]:
        """The keys, as a list taken at one moment."""
        return list(await self._run(self._commands.keys()))

    async def items(self) -> list[tuple[Any, Any]]:
        """``(key, value)`` pairs taken at one moment."""
        return list(await self._run(self._commands.items()))

    async def values(self) -> list[Any]:
        return list(await self._run(self._commands.values()))

    async def setdefault(self, key: Any, default: Any = None) -> Any:
        return await self._run(self._commands.setdefault(key, default))

    async def pop(self, key: Any, default: Any = MISSING) -> Any:
        return await self._run(self._commands.pop(key, default))

    async def popitem(self) -> tuple[Any, Any]:
        for key in await self.keys():
            with contextlib.suppress(KeyNotFound):
                return key, await self.pop(key)
        raise KeyNotFound("popitem(): the state is empty")

    async def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set many keys in one round trip, atomically."""
        await self._run(self._commands.update(other, kwargs))

    async def clear(self) -> None:
        await self._run(self._commands.clear())

    # -- batches: one round trip each -----------------------------------------------

    async def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """The values of ``keys`` that exist, taken at one moment."""
        result: dict[Any, Any] = await self._run(self._commands.get_many(keys))
        return result

    async def set_many(self, mapping: Mapping[Any, Any], ttl: float | None = None) -> None:
        """Set every key of ``mapping`` atomically; with ``ttl``, each expires then."""
        await self._run(self._commands.set_many(mapping, ttl))

    async def delete_many(self, keys: Iterable[Any]) -> int:
        """Delete ``keys`` atomically; return how many existed."""
        return int(await self._run(self._commands.delete_many(keys)))

    # -- beyond dict ----------------------------------------------------------------

    async def incr(self, key: Any, amount: int | float = 1, ttl: float | None = None) -> Any:
        """Atomically add ``amount`` to the number at ``key``; return the new value.

        A missing key counts as 0. With ``ttl``, a key this call creates expires then.
        """
        return await self._run(self._commands.incr(key, amount, ttl))

    async def add(self, key: Any, value: Any, ttl: float | None = None) -> bool:
        """Set ``key`` only if it is missing (or expired), atomically; True if it did."""
        return bool(await self._run(self._commands.add(key, value, ttl)))

    async def expire(self, key: Any, ttl: float) -> bool:
        """Make ``key`` expire ``ttl`` seconds from now (0 or less: now); False if missing."""
        return bool(await self._run(self._commands.expire(key, ttl)))

    async def ttl(self, key: Any) -> float | None:
        """Seconds until ``key`` expires; None if never; :class:`KeyNotFound` if missing."""
        seconds: float | None = await self._run(self._commands.ttl(key))
        return seconds

    async def persist(self, key: Any) -> bool:
        """Make ``key`` never expire; False if it is missing or had no expiry."""
        return bool(await self._run(self._commands.persist(key)))

    @contextlib.asynccontextmanager
    async def edit(
        self,
        key: Any,
        default: Any = MISSING,
        *,
        timeout: float | None = None,
        ttl: float | None = None,
    ) -> AsyncIterator[Any]:
        """Read-modify-write any picklable value, atomically against other edits and incr::

            async with state.edit("cart", default=[]) as cart:
                cart.append(item)          # written back when the block ends

        As the sync ``edit()``: a missing key raises :class:`KeyNotFound` unless a
        ``default`` is given; ``timeout`` bounds the wait for another client's edit;
        ``ttl`` makes the written value expire. A block that raises (or is cancelled)
        writes nothing.
        """
        commands = self._commands
        value = await self._run(commands.edit_begin(key, default, timeout, ttl))
        try:
            yield value
            commit = commands.edit_commit(key, value, ttl)
        except BaseException:
            with contextlib.suppress(SharedStateError):
                await self._run(commands.edit_abort(key))
            raise
        await self._run(commit)

    async def to_dict(self) -> dict[Any, Any]:
        """A plain deep copy of the whole dict."""
        result: dict[Any, Any] = await self._run(self._commands.to_dict())
        return result

    async def export(self) -> Contents:
        """Everything (dict and namespace) at one moment, values still pickled."""
        contents: Contents = await self._run(self._commands.export())
        return contents

    async def restore(self, contents: Contents, *, replace: bool) -> None:
        """Load what :meth:`export` returned, atomically: replace everything, or merge."""
        await self._run(self._commands.restore(contents, replace=replace))

    async def pickled(self, key: Any) -> bytes:
        """The value of ``key`` as stored: its pickle, not loaded."""
        data: bytes = await self._run(self._commands.pickled(key))
        return data

    # -- inside values, by path -----------------------------------------------------

    async def get_in(self, path: Any, default: Any = None) -> Any:
        """The value at ``path`` (``("cfg", "db", "port")``); ``default`` if any step is
        missing."""
        return await self._run(self._commands.get_in(path, default))

    async def set_in(self, path: Any, value: Any) -> None:
        """``state[a][b][c] = value`` as one atomic write: ``await state.set_in((a, b, c), v)``."""
        await self._run(self._commands.set_in(path, value))

    async def delete_in(self, path: Any) -> None:
        """``del state[a][b][c]`` as one atomic write."""
        await self._run(self._commands.delete_in(path))

    async def pop_in(self, path: Any, default: Any = MISSING) -> Any:
        """``state[a][b].pop(c[, default])`` as one atomic write."""
        return await self._run(self._commands.pop_in(path, default))

    async def incr_in(self, path: Any, amount: int | float = 1) -> Any:
        """Add ``amount`` to the number at ``path`` (missing: 0); return the new value."""
        return await self._run(self._commands.incr_in(path, amount))

    async def append_in(self, path: Any, value: Any) -> None:
        """Append ``value`` to the list at ``path``."""
        await self._run(self._commands.append_in(path, value))

    async def extend_in(self, path: Any, values: Iterable[Any]) -> None:
        """Extend the list at ``path`` with ``values``."""
        await self._run(self._commands.extend_in(path, values))

    async def update_in(self, path: Any, other: Any = (), /, **kwargs: Any) -> None:
        """``dict.update`` of the dict at ``path``, atomically."""
        await self._run(self._commands.update_in(path, other, kwargs))

    # -- connections ----------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Connections this state has open now (for monitoring, and tests)."""
        return self._pool.connections

    async def aclose(self) -> None:
        """Close this state's connections; the next operation reconnects."""
        await self._pool.aclose()
        await asyncio.sleep(0)  # let the transports finish closing

    async def __aenter__(self) -> AsyncSharedState:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncSharedState at {self.address}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "an AsyncSharedState can't be pickled; call get_shared_state() in the other process"
        )


# Each event loop's states, by arguments: the state once connected, or the task that
# connects it, which calls made meanwhile wait for instead of connecting too. Loops
# that were closed are dropped when another loop makes its first call.
_states: dict[
    asyncio.AbstractEventLoop,
    dict[tuple[Any, ...], AsyncSharedState | asyncio.Task[AsyncSharedState]],
] = {}
_states_pid = os.getpid()


async def get_shared_state(
    address: str | tuple[str, int] | None = None,
    authkey: bytes | str | None = None,
    *,
    start: bool = True,
    timeout: float = 10.0,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> AsyncSharedState:
    """Connect to the sharedstate server, starting it first if none is running.

    The asyncio twin of :func:`sharedstate.get_shared_state`, with the same settings and
    the same promise: however many workers race, exactly one server starts, and the
    start does not block the event loop. Repeated calls in one event loop with the same
    arguments return the same object, so a request handler may call it every time::

        state = await get_shared_state()
        hits = await state.incr("hits")

    ``max_connections`` bounds the connections concurrent tasks share (calls beyond
    them are pipelined, then wait: back-pressure). A task holding the lock or an edit
    has a connection of its own meanwhile; at most ``max_connections`` tasks at once.
    """
    global _states_pid
    loop = asyncio.get_running_loop()
    by_arguments = _states.get(loop)
    if by_arguments is None or _states_pid != os.getpid():
        by_arguments = _states_of(loop)
    arguments = (address, authkey, start, timeout, max_connections)
    found = by_arguments.get(arguments)
    if isinstance(found, AsyncSharedState):
        return found  # the usual case: nothing to wait for
    if found is None:
        # A task of its own: a caller cancelled while it connects cancels only its wait.
        found = loop.create_task(_connect(address, authkey, start, timeout, max_connections))
        by_arguments[arguments] = found

        def keep(done: asyncio.Task[AsyncSharedState]) -> None:
            if done.cancelled() or done.exception() is not None:
                by_arguments.pop(arguments, None)  # the next call tries again
            else:
                by_arguments[arguments] = done.result()

        found.add_done_callback(keep)
    return await asyncio.shield(found)


def _states_of(loop: asyncio.AbstractEventLoop) -> dict[tuple[Any, ...], Any]:
    """A new entry for ``loop``, after dropping closed loops' (and, in a forked child,
    the parent's: its loops and states are not this process's)."""
    global _states_pid
    if _states_pid != os.getpid():
        _states.clear()
        _states_pid = os.getpid()
    for closed in [other for other in _states if other.is_closed()]:
        del _states[closed]
    return _states.setdefault(loop, {})


async def _connect(
    address: str | tuple[str, int] | None,
    authkey: bytes | str | None,
    start: bool,
    timeout: float,
    max_connections: int,
) -> AsyncSharedState:
    settings = load_settings({"address": address, "authkey": authkey}, overrides_from="argument")
    state = connect_state(settings, start=start, timeout=timeout, max_connections=max_connections)
    await state._pool.connect()
    return state


def connect_state(
    settings: Settings,
    *,
    start: bool = True,
    timeout: float = 10.0,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> AsyncSharedState:
    """A new :class:`AsyncSharedState` for ``settings`` (not cached); it connects on first
    use, in the event loop that uses it."""

    transport = connect_async(
        settings, start=start, timeout=timeout, max_connections=max_connections
    )
    return AsyncSharedState(transport, settings.max_value_bytes)
