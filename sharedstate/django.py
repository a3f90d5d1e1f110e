"""A Django cache backend on the shared state: one cache for every worker, no Redis.

::

    CACHES = {
        "default": {
            "BACKEND": "sharedstate.django.SharedStateCache",
            "LOCATION": "",   # the server's address; empty: SHAREDSTATE_ADDRESS, .env, default
        }
    }

``OPTIONS`` may hold ``authkey``, ``start`` (start a server when none runs, default
True) and ``connect_timeout`` (seconds, default 10): the arguments of
:func:`sharedstate.get_shared_state`. Sessions work across workers with
``SESSION_ENGINE = "django.contrib.sessions.backends.cache"``.

Each entry is the shared-state key ``("django.cache", KEY_PREFIX, made_key)``, where
``made_key`` is Django's versioned key. :meth:`SharedStateCache.clear` deletes the keys
with this cache's ``KEY_PREFIX``, every version, and nothing else; docs/django.md has
the timeout rules and what differs from Django's Redis backend.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

from . import (
    SharedDict,
    SharedList,
    SharedState,
    ValueNotPicklable,
    get_shared_state,
)

NAMESPACE = "django.cache"  # first part of every key this backend writes

_MISSING = object()
_AT_ONCE = 1e-9  # a ttl that has run out by the time anyone reads the key


class UnpicklableValue(ValueNotPicklable, pickle.PicklingError):
    """A value could not be pickled for the cache.

    Django's own backends raise :class:`pickle.PickleError` there, sharedstate raises
    :class:`~sharedstate.ValueNotPicklable`; this is both, so either ``except`` works.
    """


class SharedStateCache(BaseCache):  # type: ignore[misc]  # Django has no type hints
    """Django's cache API on a sharedstate server (see the module docstring)."""

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        options = params.get("OPTIONS", {})
        self._address = location or None
        self._authkey = options.get("authkey")
        self._start = bool(options.get("start", True))
        self._connect_timeout = float(options.get("connect_timeout", 10.0))

    @property
    def _state(self) -> SharedState:
        # get_shared_state() returns the process's cached state (reconnected after a
        # fork), so this costs a dict lookup and gunicorn workers never share a socket.
        return get_shared_state(
            self._address, self._authkey, start=self._start, timeout=self._connect_timeout
        )

    # -- keys and timeouts ------------------------------------------------------------

    def _key(self, key: Any, version: int | None) -> tuple[str, str, str]:
        return (NAMESPACE, self.key_prefix, self.make_and_validate_key(key, version=version))

    def _ttl(self, timeout: Any) -> float | None:
        """Django's timeout as seconds to live: None forever, 0 or less already expired."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else float(timeout)

    # -- reading ----------------------------------------------------------------------

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        value = self._state.get(self._key(key, version), _MISSING)
        return default if value is _MISSING else _plain(value)

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        wanted = {self._key(key, version): key for key in keys}
        found = self._state.get_many(wanted)
        return {wanted[stored]: _plain(value) for stored, value in found.items()}

    def has_key(self, key: Any, version: int | None = None) -> bool:
        return self._key(key, version) in self._state

    # -- writing ----------------------------------------------------------------------

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        stored, ttl = self._key(key, version), self._ttl(timeout)
        with _picklable():
            if ttl is not None and ttl <= 0:
                self._state.delete_many([stored])  # expires at once: nothing to keep
            else:
                self._state.set(stored, value, ttl=ttl)

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        stored, ttl = self._key(key, version), self._ttl(timeout)
        if ttl is not None and ttl <= 0:
            # Stored and expired at once, as Django's Redis backend does: it "adds"
            # (True) exactly when the key is missing, and leaves nothing behind.
            pickle.dumps(value)  # an unpicklable value fails as it would with a ttl
            return stored not in self._state
        with _picklable():
            return self._state.add(stored, value, ttl=ttl)

    def set_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        pairs = {self._key(key, version): value for key, value in data.items()}
        ttl = self._ttl(timeout)
        with _picklable():
            if ttl is not None and ttl <= 0:
                self._state.delete_many(pairs)
            elif pairs:
                self._state.set_many(pairs, ttl=ttl)
        return []  # all or nothing: sharedstate sets them in one atomic step

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        stored, ttl = self._key(key, version), self._ttl(timeout)
        if ttl is not None:
            return self._state.expire(stored, ttl)  # 0 or less deletes it now
        # persist() is False both for a missing key and for one that never expired.
        return self._state.persist(stored) or stored in self._state

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Add ``delta`` atomically; ValueError if the key is missing, as Django wants.

        sharedstate's ``incr`` creates a missing key, and has no "only if it exists"
        form, so the key is checked first (as Django's Redis backend does). The
        increment itself is one atomic call, so no concurrent increment is lost. If the
        key is deleted or expires between the check and the increment, the ``ttl``
        (which only applies to a key the call creates) makes the recreated key expire
        at once, instead of bringing it back for good as a plain INCR would.
        """
        state, stored = self._state, self._key(key, version)
        if stored not in state:
            raise ValueError(f"Key {key!r} not found.")
        return state.incr(stored, delta, ttl=_AT_ONCE)

    # decr() is BaseCache's: incr(key, -delta).

    def delete(self, key: Any, version: int | None = None) -> bool:
        return self._state.delete_many([self._key(key, version)]) == 1

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        stored = [self._key(key, version) for key in keys]
        if stored:
            self._state.delete_many(stored)

    def clear(self) -> None:
        """Delete this cache's entries: every version under its ``KEY_PREFIX``.

        Other keys of the shared state (the app's own, other caches' with another
        prefix) stay. It lists every key of the state once, so it costs as much as
        ``state.keys()``.
        """
        state = self._state
        state.delete_many(
            key
            for key in state  # the keys, listed at one moment
            if type(key) is tuple
            and len(key) == 3
            and key[0] == NAMESPACE
            and key[1] == self.key_prefix
        )

    def close(self, **kwargs: Any) -> None:
        """Nothing to do: Django calls it after every request, and the connection stays."""


def _plain(value: Any) -> Any:
    """A cached dict or list as plain data: changing it must not change the cache."""
    if isinstance(value, (SharedDict, SharedList)):
        return copy.deepcopy(value)
    return value


@contextlib.contextmanager
def _picklable() -> Iterator[None]:
    """Turns sharedstate's ValueNotPicklable into :class:`UnpicklableValue`."""
    try:
        yield
    except ValueNotPicklable as error:
        raise UnpicklableValue(str(error), **vars(error)) from error
