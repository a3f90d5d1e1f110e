"""Storages for the ``limits`` package (Flask-Limiter, slowapi, limits.aio): rate limits
kept in sharedstate.

``limits`` finds a storage by the scheme of its URI, among the classes defined so far,
so this module must be imported before the URI is used::

    import sharedstate.limits  # noqa: F401  (registers "sharedstate://" and "async+sharedstate://")

    limiter = Limiter(get_remote_address, app=app, storage_uri="sharedstate://")

``sharedstate://`` uses the address the settings give (``SHAREDSTATE_ADDRESS``, ``.env``,
else the default socket); ``sharedstate:///run/app/state.sock`` or
``sharedstate://127.0.0.1:7000`` name one. Every worker of the app then counts against
the same limits. Each acquisition is atomic across processes: a fixed window is one
``incr``; a moving window and a sliding window counter are each one ``edit()`` of one
key (docs/limits.md says more).

``async+sharedstate://`` is the same storage for ``limits.aio`` (asyncio apps), on the
asyncio client: same keys, same decisions, so sync and async limiters share counts. The
two classes differ only in how they reach the server; what a window holds and how an
acquisition decides are the pure functions at the end of this module, used by both.

Keys are stored under ``limits:`` in the shared dict, so ``reset()`` removes only them.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from math import floor
from typing import TYPE_CHECKING, Any

from limits.aio.storage import MovingWindowSupport as AsyncMovingWindowSupport
from limits.aio.storage import SlidingWindowCounterSupport as AsyncSlidingWindowCounterSupport
from limits.aio.storage import Storage as AsyncStorage
from limits.storage import MovingWindowSupport, SlidingWindowCounterSupport, Storage
from limits.storage.base import TimestampedSlidingWindow

from .client.state import SharedState, get_shared_state
from .errors import Conflict, KeyNotFound, SharedStateError

if TYPE_CHECKING:
    from .aio import AsyncSharedState

PREFIX = "limits:"
COUNTER = PREFIX + "counter:"  # fixed window: an int, expiring with its window
MOVING = PREFIX + "moving:"  # moving window: a list of timestamps, newest first
SLIDING = PREFIX + "sliding:"  # sliding window counter: {window number: count}

# An edit of a key whose TTL runs out before it ends raises Conflict and writes nothing:
# the window emptied meanwhile, so the acquisition decides again from what is there now.
EDIT_ATTEMPTS = 3


class _ServerOptions:
    """What both storages take from their URI and options: which server, and how to reach it."""

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        *,
        start: bool = True,
        timeout: float = 10.0,
        **options: float | str | bool,
    ) -> None:
        """``uri``: ``[async+]sharedstate://``, ``[async+]sharedstate:///path/to/socket``
        or ``[async+]sharedstate://host:port``; ``start=False`` raises
        ``ServerNotRunning`` instead of starting a server; ``timeout`` bounds connecting
        (see ``get_shared_state``)."""
        self.address = address_in(uri)
        self.start = start
        self.timeout = timeout
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)  # type: ignore[call-arg]

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return SharedStateError


class SharedStateStorage(
    _ServerOptions,
    Storage,
    MovingWindowSupport,
    SlidingWindowCounterSupport,
    TimestampedSlidingWindow,
):
    """Rate-limit counters shared by every process connected to one sharedstate server.

    It supports the fixed window, moving window and sliding window counter strategies,
    like ``limits``' own memory storage, but for all workers at once::

        from limits import parse, strategies
        from limits.storage import storage_from_string

        storage = storage_from_string("sharedstate://")
        limiter = strategies.MovingWindowRateLimiter(storage)
        limiter.hit(parse("10/minute"), "client-ip")   # True ten times a minute

    The connection is made on first use, in the process that uses it, so a storage
    created before gunicorn forks its workers is safe.
    """

    STORAGE_SCHEME = ["sharedstate"]  # noqa: RUF012  (limits reads it as its base declares it)

    @property
    def state(self) -> SharedState:
        # Cached per process by get_shared_state, and resolved again after a fork.
        return get_shared_state(self.address, start=self.start, timeout=self.timeout)

    # -- fixed window ---------------------------------------------------------------

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """Add ``amount`` to the counter, which expires ``expiry`` s after its first hit."""
        return int(self.state.incr(COUNTER + key, amount, ttl=expiry))

    def get(self, key: str) -> int:
        return int(self.state.get(COUNTER + key, 0))

    def get_expiry(self, key: str) -> float:
        """When the counter at ``key`` expires (now if it doesn't exist)."""
        try:
            return expires_at(self.state.ttl(COUNTER + key))
        except KeyNotFound:
            return time.time()

    # -- moving window --------------------------------------------------------------

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Take ``amount`` entries if fewer than ``limit`` - ``amount`` are under ``expiry`` s old.

        The read, the check and the append are one ``edit()`` of the key: another
        worker's acquisition of the same key waits for it.
        """
        if amount > limit:
            return False
        # The key lives as long as its newest entry can count (the ttl is set by the
        # same write-back).
        return self._edit(
            MOVING + key, [], lambda entries: take_entries(entries, limit, expiry, amount), expiry
        )

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(time of the oldest entry inside the window, how many entries are inside)."""
        return moving_window(list(self.state.get(MOVING + key, [])), limit, expiry)

    # -- sliding window counter -----------------------------------------------------

    def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        """Count ``amount`` hits if the weighted count of this and the last window allows.

        The read, the check and the increment are one ``edit()`` of one key holding
        both windows' counts, so concurrent workers never let more through.
        """
        if amount > limit:
            return False
        # The current window's count must outlive it by one window, as in limits' own.
        return self._edit(
            SLIDING + key, {}, lambda counts: count_hits(counts, limit, expiry, amount), 2 * expiry
        )

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        """(previous window's count, its weight in s, current window's count, its TTL)."""
        return weigh(dict(self.state.get(SLIDING + key, {})), expiry, time.time())

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        self.state.delete_many([SLIDING + key])

    # -- the whole storage ----------------------------------------------------------

    def clear(self, key: str) -> None:
        """Forget every window of ``key``."""
        self.state.delete_many(window_keys(key))

    def check(self) -> bool:
        """Whether the server answers."""
        try:
            len(self.state)
        except SharedStateError:
            return False
        return True

    def reset(self) -> int:
        """Remove every rate-limit key (those under ``limits:``); return how many there were."""
        return self.state.delete_many([key for key in self.state if is_rate_limit_key(key)])

    def _edit(self, key: str, default: Any, change: Callable[[Any], bool], ttl: float) -> bool:
        """``change(value)`` inside one ``edit()`` of ``key``, written back to expire in
        ``ttl`` seconds: atomic for that key."""
        for attempt in range(EDIT_ATTEMPTS):
            try:
                with self.state.edit(key, default=default, ttl=ttl) as value:
                    done = change(value)
                return done
            except Conflict:
                if attempt == EDIT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")


class AsyncSharedStateStorage(
    _ServerOptions,
    AsyncStorage,
    AsyncMovingWindowSupport,
    AsyncSlidingWindowCounterSupport,
    TimestampedSlidingWindow,
):
    """:class:`SharedStateStorage` for ``limits.aio``: the same counters, from asyncio.

    Same keys and same decisions as the synchronous storage, so a sync and an async
    limiter of the same limit count together. Every call awaits the server without
    blocking the event loop::

        from limits import parse
        from limits.aio import strategies
        from limits.storage import storage_from_string

        storage = storage_from_string("async+sharedstate://")
        limiter = strategies.MovingWindowRateLimiter(storage)
        await limiter.hit(parse("10/minute"), "client-ip")   # True ten times a minute

    The connection is made on first use, in the event loop that uses it (one client
    per loop, see ``sharedstate.aio.get_shared_state``), so a storage created at import
    time, before any loop runs or gunicorn forks, is safe.
    """

    STORAGE_SCHEME = ["async+sharedstate"]  # noqa: RUF012  (as SharedStateStorage's)

    async def state(self) -> AsyncSharedState:
        """This event loop's client of the storage's server (connecting on first use)."""
        # Imported here so that sync-only apps never load the asyncio client.
        from .aio import get_shared_state as get_async_shared_state

        return await get_async_shared_state(self.address, start=self.start, timeout=self.timeout)

    # -- fixed window ---------------------------------------------------------------

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """Add ``amount`` to the counter, which expires ``expiry`` s after its first hit."""
        return int(await (await self.state()).incr(COUNTER + key, amount, ttl=expiry))

    async def get(self, key: str) -> int:
        return int(await (await self.state()).get(COUNTER + key, 0))

    async def get_expiry(self, key: str) -> float:
        """When the counter at ``key`` expires (now if it doesn't exist)."""
        try:
            return expires_at(await (await self.state()).ttl(COUNTER + key))
        except KeyNotFound:
            return time.time()

    # -- moving window --------------------------------------------------------------

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """As :meth:`SharedStateStorage.acquire_entry`: one ``edit()`` of the key."""
        if amount > limit:
            return False
        return await self._edit(
            MOVING + key, [], lambda entries: take_entries(entries, limit, expiry, amount), expiry
        )

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(time of the oldest entry inside the window, how many entries are inside)."""
        entries = await (await self.state()).get(MOVING + key, [])
        return moving_window(list(entries), limit, expiry)

    # -- sliding window counter -----------------------------------------------------

    async def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        """As :meth:`SharedStateStorage.acquire_sliding_window_entry`: one ``edit()``."""
        if amount > limit:
            return False
        return await self._edit(
            SLIDING + key, {}, lambda counts: count_hits(counts, limit, expiry, amount), 2 * expiry
        )

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        """(previous window's count, its weight in s, current window's count, its TTL)."""
        counts = await (await self.state()).get(SLIDING + key, {})
        return weigh(dict(counts), expiry, time.time())

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        await (await self.state()).delete_many([SLIDING + key])

    # -- the whole storage ----------------------------------------------------------

    async def clear(self, key: str) -> None:
        """Forget every window of ``key``."""
        await (await self.state()).delete_many(window_keys(key))

    async def check(self) -> bool:
        """Whether the server answers."""
        try:
            await (await self.state()).len()
        except SharedStateError:
            return False
        return True

    async def reset(self) -> int:
        """Remove every rate-limit key (those under ``limits:``); return how many there were."""
        state = await self.state()
        return await state.delete_many(
            [key for key in await state.keys() if is_rate_limit_key(key)]
        )

    async def _edit(
        self, key: str, default: Any, change: Callable[[Any], bool], ttl: float
    ) -> bool:
        """``change(value)`` inside one ``edit()`` of ``key``, written back to expire in
        ``ttl`` seconds: atomic for that key."""
        state = await self.state()
        for attempt in range(EDIT_ATTEMPTS):
            try:
                async with state.edit(key, default=default, ttl=ttl) as value:
                    done = change(value)
                return done
            except Conflict:
                if attempt == EDIT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")


# -- what both storages keep, and how they decide (pure: no server) --------------------


def address_in(uri: str | None) -> str | None:
    """The sharedstate address a storage URI names; None for the default (``sharedstate://``).

    >>> address_in("sharedstate:///run/app/state.sock")
    '/run/app/state.sock'
    >>> address_in("async+sharedstate://127.0.0.1:7000")
    '127.0.0.1:7000'
    """
    if not uri:
        return None
    parsed = urllib.parse.urlparse(uri)
    return (parsed.netloc + parsed.path) or None


def window_keys(key: str) -> list[str]:
    """The shared dict's keys of every window of the rate-limit ``key``."""
    return [COUNTER + key, MOVING + key, SLIDING + key]


def is_rate_limit_key(key: object) -> bool:
    """Whether a key of the shared dict is one of the storages' (``reset()`` removes those)."""
    return isinstance(key, str) and key.startswith(PREFIX)


def expires_at(seconds: float | None) -> float:
    """When a key whose TTL is ``seconds`` expires (now if it has none)."""
    now = time.time()
    return now if seconds is None else now + seconds


def take_entries(entries: list[float], limit: int, expiry: float, amount: int) -> bool:
    """The moving window's acquisition, on its timestamps (newest first): prepend ``amount``
    entries stamped now if fewer than ``limit`` - ``amount`` are under ``expiry`` s old.

    >>> entries = [time.time()]
    >>> take_entries(entries, 2, 60, 1), take_entries(entries, 2, 60, 1), len(entries)
    (True, False, 2)
    """
    now = time.time()
    # Newest first, so entries[limit - amount] is the oldest that would stay inside.
    if len(entries) > limit - amount and entries[limit - amount] >= now - expiry:
        return False
    entries[:0] = [now] * amount
    del entries[limit:]  # older ones can never count again
    return True


def moving_window(entries: list[float], limit: int, expiry: float) -> tuple[float, int]:
    """``get_moving_window``'s answer: (time of the oldest entry inside, how many are inside)."""
    now = time.time()
    inside = [entry for entry in entries[:limit] if entry > now - expiry]
    return (inside[-1], len(inside)) if inside else (now, 0)


def count_hits(counts: dict[int, int], limit: int, expiry: int, amount: int) -> bool:
    """The sliding window counter's acquisition, on ``{window number: count}``: count
    ``amount`` hits now if the weighted count of this and the last window allows;
    windows older than the last are dropped."""
    now = time.time()
    previous, current = window_numbers(expiry, now)
    previous_count, previous_ttl, current_count, _ = weigh(counts, expiry, now)
    if floor(previous_count * previous_ttl / expiry + current_count) + amount > limit:
        return False
    counts[current] = current_count + amount
    for number in [n for n in counts if n < previous]:
        del counts[number]
    return True


def window_numbers(expiry: int, now: float) -> tuple[int, int]:
    """The previous and the current window's numbers, as limits' memory storage counts them."""
    return int((now - expiry) / expiry), int(now / expiry)


def weigh(counts: dict[int, int], expiry: int, now: float) -> tuple[int, float, int, float]:
    """``get_sliding_window``'s answer for these counts, computed as limits' memory storage does."""
    previous, current = window_numbers(expiry, now)
    previous_count = counts.get(previous, 0)
    current_count = counts.get(current, 0)
    previous_ttl = 0.0 if previous_count == 0 else (1 - ((now - expiry) / expiry) % 1) * expiry
    current_ttl = (1 - (now / expiry) % 1) * expiry + expiry
    return previous_count, previous_ttl, current_count, current_ttl
