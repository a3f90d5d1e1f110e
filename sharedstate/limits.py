"""A storage for the ``limits`` package (Flask-Limiter, slowapi): rate limits kept in sharedstate.

``limits`` finds a storage by the scheme of its URI, among the classes defined so far,
so this module must be imported before the URI is used::

    import sharedstate.limits  # noqa: F401  (registers "sharedstate://")

    limiter = Limiter(get_remote_address, app=app, storage_uri="sharedstate://")

``sharedstate://`` uses the address the settings give (``SHAREDSTATE_ADDRESS``, ``.env``,
else the default socket); ``sharedstate:///run/app/state.sock`` or
``sharedstate://127.0.0.1:7000`` name one. Every worker of the app then counts against
the same limits. Each acquisition is atomic across processes: a fixed window is one
``incr``; a moving window and a sliding window counter are each one ``edit()`` of one
key (docs/limits.md says more).

Keys are stored under ``limits:`` in the shared dict, so ``reset()`` removes only them.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from math import floor
from typing import Any

from limits.storage import MovingWindowSupport, SlidingWindowCounterSupport, Storage
from limits.storage.base import TimestampedSlidingWindow

from .client.state import SharedState, get_shared_state
from .errors import Conflict, KeyNotFound, SharedStateError

PREFIX = "limits:"
COUNTER = PREFIX + "counter:"  # fixed window: an int, expiring with its window
MOVING = PREFIX + "moving:"  # moving window: a list of timestamps, newest first
SLIDING = PREFIX + "sliding:"  # sliding window counter: {window number: count}


class SharedStateStorage(
    Storage, MovingWindowSupport, SlidingWindowCounterSupport, TimestampedSlidingWindow
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

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        *,
        start: bool = True,
        timeout: float = 10.0,
        **options: float | str | bool,
    ) -> None:
        """``uri``: ``sharedstate://``, ``sharedstate:///path/to/socket`` or
        ``sharedstate://host:port``; ``start=False`` raises ``ServerNotRunning`` instead
        of starting a server; ``timeout`` bounds connecting (see ``get_shared_state``)."""
        self.address = address_in(uri)
        self.start = start
        self.timeout = timeout
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def state(self) -> SharedState:
        # Cached per process by get_shared_state, and resolved again after a fork.
        return get_shared_state(self.address, start=self.start, timeout=self.timeout)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return SharedStateError

    # -- fixed window ---------------------------------------------------------------

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """Add ``amount`` to the counter, which expires ``expiry`` s after its first hit."""
        return int(self.state.incr(COUNTER + key, amount, ttl=expiry))

    def get(self, key: str) -> int:
        return int(self.state.get(COUNTER + key, 0))

    def get_expiry(self, key: str) -> float:
        """When the counter at ``key`` expires (now if it doesn't exist)."""
        now = time.time()
        try:
            seconds = self.state.ttl(COUNTER + key)
        except KeyNotFound:
            return now
        return now if seconds is None else now + seconds

    # -- moving window --------------------------------------------------------------

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Take ``amount`` entries if fewer than ``limit`` - ``amount`` are under ``expiry`` s old.

        The read, the check and the append are one ``edit()`` of the key: another
        worker's acquisition of the same key waits for it.
        """
        if amount > limit:
            return False

        def take(entries: list[float]) -> bool:
            now = time.time()
            # Newest first, so entries[limit - amount] is the oldest that would stay inside.
            if len(entries) > limit - amount and entries[limit - amount] >= now - expiry:
                return False
            entries[:0] = [now] * amount
            del entries[limit:]  # older ones can never count again
            return True

        # The key lives as long as its newest entry can count (the ttl is set by the
        # same write-back).
        return self._edit(MOVING + key, [], take, ttl=expiry)

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(time of the oldest entry inside the window, how many entries are inside)."""
        now = time.time()
        entries = list(self.state.get(MOVING + key, []))
        inside = [entry for entry in entries[:limit] if entry > now - expiry]
        return (inside[-1], len(inside)) if inside else (now, 0)

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

        def count(counts: dict[int, int]) -> bool:
            now = time.time()
            previous, current = window_numbers(expiry, now)
            previous_count, previous_ttl, current_count, _ = weigh(counts, expiry, now)
            if floor(previous_count * previous_ttl / expiry + current_count) + amount > limit:
                return False
            counts[current] = current_count + amount
            for number in [n for n in counts if n < previous]:
                del counts[number]
            return True

        # The current window's count must outlive it by one window, as in limits' own.
        return self._edit(SLIDING + key, {}, count, ttl=2 * expiry)

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        """(previous window's count, its weight in s, current window's count, its TTL)."""
        return weigh(dict(self.state.get(SLIDING + key, {})), expiry, time.time())

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        self.state.delete_many([SLIDING + key])

    # -- the whole storage ----------------------------------------------------------

    def clear(self, key: str) -> None:
        """Forget every window of ``key``."""
        self.state.delete_many([COUNTER + key, MOVING + key, SLIDING + key])

    def check(self) -> bool:
        """Whether the server answers."""
        try:
            len(self.state)
        except SharedStateError:
            return False
        return True

    def reset(self) -> int:
        """Remove every rate-limit key (those under ``limits:``); return how many there were."""
        keys = [key for key in self.state if isinstance(key, str) and key.startswith(PREFIX)]
        return self.state.delete_many(keys)

    def _edit(self, key: str, default: Any, change: Callable[[Any], bool], ttl: float) -> bool:
        """``change(value)`` inside one ``edit()`` of ``key``, written back to expire in
        ``ttl`` seconds: atomic for that key."""
        # An edit of a key whose TTL runs out before it ends raises Conflict and writes
        # nothing: the window emptied meanwhile, so decide again from what is there now.
        for attempt in range(3):
            try:
                with self.state.edit(key, default=default, ttl=ttl) as value:
                    done = change(value)
                return done
            except Conflict:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def address_in(uri: str | None) -> str | None:
    """The sharedstate address a storage URI names; None for the default (``sharedstate://``).

    >>> address_in("sharedstate:///run/app/state.sock")
    '/run/app/state.sock'
    >>> address_in("sharedstate://127.0.0.1:7000")
    '127.0.0.1:7000'
    """
    if not uri:
        return None
    parsed = urllib.parse.urlparse(uri)
    return (parsed.netloc + parsed.path) or None


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
