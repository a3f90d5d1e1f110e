"""A cachelib backend: a cache shared by every worker, kept in the shared state.

::

    from sharedstate.cachelib import SharedStateCache

    cache = SharedStateCache(default_timeout=300)     # key_prefix="cachelib:"
    cache.set("page:/", html, timeout=60)
    cache.add("job:42", "claimed")                    # atomic: one worker of many wins
    cache.inc("hits")                                 # atomic

Flask-Caching: ``CACHE_TYPE = "sharedstate.cachelib.SharedStateCache"`` (options in
``CACHE_OPTIONS``). Flask-Session: ``SESSION_TYPE = "cachelib"`` and
``SESSION_CACHELIB = SharedStateCache()``. See docs/cachelib.md.

Only the public API is used (:func:`sharedstate.get_shared_state` and the
:class:`~sharedstate.SharedState` methods), so the cache works on whatever server
``get_shared_state`` reaches. Importing ``sharedstate`` never imports this module or
cachelib.
"""

from __future__ import annotations

import datetime as dt
import math
import typing as t
from collections.abc import Callable

from cachelib import BaseCache

from . import SharedDict, SharedList, SharedState, get_shared_state

DEFAULT_KEY_PREFIX = "cachelib:"


class SharedStateCache(BaseCache):
    """A :class:`cachelib.BaseCache` whose entries live in the shared state.

    :param address: the server's address; default: the settings (``SHAREDSTATE_ADDRESS``,
        ``.env``), as for :func:`sharedstate.get_shared_state`.
    :param authkey: the server's key; default: the settings.
    :param default_timeout: seconds (or a :class:`datetime.timedelta`) an entry lives
        when ``set`` is given no timeout; 0: entries never expire.
    :param key_prefix: put before every key in the shared state (a str, or a callable
        returning one); it keeps the cache's keys apart from the app's own, and it is
        what :meth:`clear` deletes. ``None`` or ``""``: no prefix, and :meth:`clear`
        deletes nothing (it can't tell the cache's keys from the app's).
    :param ignore_delete_many_errors: as for every cachelib backend.
    :param start: start the server if none is running (else
        :class:`~sharedstate.ServerNotRunning`).
    :param timeout: seconds to wait for connecting (and starting).

    Nothing connects until the first operation, in the process that makes it: a cache
    created at import, in a gunicorn master, works in every forked worker.

    Values are stored as objects (sharedstate pickles them); ``serializer`` is not used.
    A dict or list comes back as a plain copy, never as a view that writes back.
    """

    def __init__(
        self,
        address: str | tuple[str, int] | None = None,
        authkey: bytes | str | None = None,
        default_timeout: int | dt.timedelta = 300,
        key_prefix: str | Callable[[], str] | None = DEFAULT_KEY_PREFIX,
        ignore_delete_many_errors: bool = True,
        *,
        start: bool = True,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(default_timeout)  # cachelib < 0.16 takes nothing else
        self.ignore_delete_many_errors = ignore_delete_many_errors
        self.address = address
        self.authkey = authkey
        self.key_prefix = key_prefix or ""
        self.start = start
        self.timeout = timeout

    @property
    def state(self) -> SharedState:
        """The shared state this cache keeps its entries in (connected on first use)."""
        # get_shared_state remembers its answer per process: this costs a dict lookup.
        return get_shared_state(self.address, self.authkey, start=self.start, timeout=self.timeout)

    def _prefix(self) -> str:
        return self.key_prefix if isinstance(self.key_prefix, str) else self.key_prefix()

    def _key(self, key: str) -> str:
        return f"{self._prefix()}{key}"

    def _ttl(self, timeout: int | dt.timedelta | None) -> float | None:
        """cachelib's timeout as sharedstate's TTL: None never expires, and a negative
        number means the entry is already expired (as in SimpleCache and FileSystemCache)."""
        seconds: float | dt.timedelta = self._normalize_timeout(timeout)
        if isinstance(seconds, dt.timedelta):  # cachelib < 0.17 leaves it to the backend
            seconds = math.ceil(seconds.total_seconds())
        if seconds == 0:
            return None
        return float(seconds) if seconds > 0 else -1.0

    # -- reads ------------------------------------------------------------------------

    def get(self, key: str) -> t.Any:
        return _plain(self.state.get(self._key(key)))

    def get_many(self, *keys: str) -> list[t.Any]:
        stored = [self._key(key) for key in keys]
        found = self.state.get_many(stored)  # one round trip
        return [_plain(found.get(key)) for key in stored]

    def has(self, key: str) -> bool:
        return self._key(key) in self.state

    # -- writes -----------------------------------------------------------------------

    def set(self, key: str, value: t.Any, timeout: int | dt.timedelta | None = None) -> bool:
        ttl = self._ttl(timeout)
        if ttl is not None and ttl < 0:
            self.state.delete_many([self._key(key)])
        else:
            self.state.set(self._key(key), value, ttl=ttl)
        return True

    def add(self, key: str, value: t.Any, timeout: int | dt.timedelta | None = None) -> bool:
        ttl = self._ttl(timeout)
        if ttl is not None and ttl < 0:  # added, and expired at once: nothing to store
            return not self.has(key)
        return self.state.add(self._key(key), value, ttl=ttl)  # atomic: one caller wins

    def set_many(
        self, mapping: dict[str, t.Any], timeout: int | dt.timedelta | None = None
    ) -> list[t.Any]:
        ttl = self._ttl(timeout)
        if ttl is not None and ttl < 0:
            self.state.delete_many([self._key(key) for key in mapping])
        else:  # one round trip, atomic
            self.state.set_many({self._key(key): value for key, value in mapping.items()}, ttl)
        return list(mapping)

    def delete(self, key: str) -> bool:
        return self.state.delete_many([self._key(key)]) == 1

    def delete_many(self, *keys: str) -> list[t.Any]:
        # One atomic round trip; a key that was absent counts as deleted, as in cachelib,
        # so nothing can fail to be deleted and ignore_delete_many_errors has no effect.
        self.state.delete_many([self._key(key) for key in keys])
        return list(keys)

    def clear(self) -> bool:
        """Delete this cache's entries: the str keys that start with its prefix. The
        shared state's other keys stay. Without a prefix nothing is deleted, and the
        result is False (cachelib's answer for a cache that can't be cleared)."""
        prefix = self._prefix()
        if not prefix:
            return False
        state = self.state
        state.delete_many(key for key in state if isinstance(key, str) and key.startswith(prefix))
        return True

    def inc(self, key: str, delta: int = 1) -> t.Any:
        """Add ``delta`` atomically; a missing key starts from 0 and lives for the default
        timeout, an existing key keeps its expiry (Redis's INCR, plus that TTL)."""
        ttl = self._ttl(None)
        if ttl is not None and ttl < 0:
            ttl = None
        return self.state.incr(self._key(key), delta, ttl=ttl)

    def dec(self, key: str, delta: int = 1) -> t.Any:
        """:meth:`inc` by ``-delta``."""
        return self.inc(key, -delta)


def _plain(value: t.Any) -> t.Any:
    # A cache hands out copies: a view would write the caller's changes back.
    if isinstance(value, (SharedDict, SharedList)):
        return value.copy()
    return value
