"""Where the store keeps its values: a :class:`Keyspace` per top-level dict, of entries.

Every read and write of a stored value goes through a keyspace, so what is kept for a
key, and the bookkeeping that must stay in step with it, lives in this one module.

Most entries are just the value's pickle, as the client sent it: the server stores it
and sends it back without ever looking inside. Such an entry is kept as those bytes
alone, with no object around them; an object per key would cost an allocation on every
``set`` (a quarter of its time) and about 64 bytes per key.

An entry that holds more is an :class:`Entry`: a value the server unpickled to work on
(``incr``, nested writes), with its pickle cached until the value changes, and slots for
what later features keep per key (an expiry time, access data for eviction). The
keyspace remembers which keys hold an :class:`Entry`, so that copying the state out
(snapshots, dumps) only has to look at those.

A keyspace is not thread-safe: the store calls it with its lock held.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Iterable, Mapping
from typing import Any

from ..codec import NAMESPACE, PROTOCOL, decode, place
from ..errors import KeyNotFound

# What to do when the server can't unpickle a value it must work on.
SERVER_HINT = (
    "the server must load the value for incr and nested writes, so its classes must be "
    "importable there; use state.edit() for objects of your own classes"
)

_MISSING: Any = object()


class Entry:
    """A stored value the server holds as an object, with its pickle cached.

    Whoever changes :attr:`value` in place calls :meth:`changed`, so the next read
    pickles it again.
    """

    __slots__ = ("access", "encoded", "expires_at", "value")

    value: Any
    encoded: bytes | None  # the pickle of ``value``; None once ``value`` changed
    expires_at: float | None  # reserved for key expiry (a time.time()); unused yet
    access: int  # reserved for eviction (an LRU clock or an LFU count); unused yet

    def __init__(self, value: Any, encoded: bytes | None = None) -> None:
        self.value = value
        self.encoded = encoded
        self.expires_at = None
        self.access = 0

    def pickled(self) -> bytes:
        """The value's pickle, made now if the value changed since the last one."""
        if self.encoded is None:
            self.encoded = pickle.dumps(self.value, protocol=PROTOCOL)
        return self.encoded

    def changed(self) -> None:
        """The value is about to change, or changed, in place: its pickle is stale."""
        self.encoded = None


class Keyspace:
    """The entries of one top-level dict of the store: the state, or the namespace.

    Values go in and come out pickled (bytes); :meth:`live` is the one way to the
    object, for the operations that work on it.
    """

    __slots__ = ("_boxed", "_entries", "space")

    def __init__(self, space: str) -> None:
        self.space = space  # DATA or NAMESPACE, for messages
        self._entries: dict[Any, bytes | Entry] = {}
        self._boxed: set[Any] = set()  # the keys whose entry is an Entry, not bare bytes

    # -- reads ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Any) -> bool:
        return key in self._entries

    def keys(self) -> list[Any]:
        return list(self._entries)

    def encoded(self, key: Any) -> bytes | None:
        """The pickled value of ``key``, or None when it is missing."""
        entry = self._entries.get(key)
        if entry is None or isinstance(entry, bytes):  # missing, or the usual bare bytes
            return entry
        return entry.pickled()

    def encoded_dict(self) -> dict[Any, bytes]:
        """Every key with its pickled value: a shallow copy, plus pickling the objects."""
        copy = self._entries.copy()
        for key in self._boxed:
            copy[key] = copy[key].pickled()  # type: ignore[union-attr]
        return copy  # type: ignore[return-value]

    def live(self, key: Any) -> Entry:
        """The entry of ``key`` as an object, unpickling it on first use.

        Raises :class:`KeyNotFound` if it is missing, :class:`ValueNotLoadable` if the
        server can't unpickle it.
        """
        entry = self._entries.get(key)
        if isinstance(entry, Entry):
            return entry
        if entry is None:
            raise KeyNotFound(key, "state.namespace" if self.space == NAMESPACE else "state")
        where = functools.partial(place, self.space, (key,))  # formatted only on failure
        live = Entry(decode(entry, where, SERVER_HINT), entry)
        self._entries[key] = live
        self._boxed.add(key)
        return live

    # -- writes --------------------------------------------------------------------

    def put(self, key: Any, data: bytes) -> None:
        """Set ``key`` to the pickled value ``data``."""
        self._entries[key] = data
        if self._boxed:
            self._boxed.discard(key)

    def put_many(self, pairs: Iterable[tuple[Any, bytes]]) -> None:
        for key, data in pairs:
            self.put(key, data)

    def put_object(self, key: Any, value: Any) -> Entry:
        """Set ``key`` to ``value``, an object the server made (``incr`` of a new key)."""
        entry = self._entries[key] = Entry(value)
        self._boxed.add(key)
        return entry

    def discard(self, key: Any) -> bool:
        """Remove ``key``; False if it was not there."""
        if self._boxed:
            self._boxed.discard(key)
        return self._entries.pop(key, _MISSING) is not _MISSING

    def pop(self, key: Any) -> bytes | None:
        """Remove ``key`` and return its pickled value (None if it was not there)."""
        entry = self._entries.pop(key, None)
        if isinstance(entry, Entry):
            self._boxed.discard(key)
            return entry.pickled()
        return entry

    def clear(self) -> None:
        self._entries.clear()
        self._boxed.clear()

    def load(self, pairs: Mapping[Any, bytes]) -> None:
        """Replace every entry with ``pairs`` of keys and pickled values."""
        self.clear()
        self._entries.update(pairs)
