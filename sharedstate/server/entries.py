"""Where the store keeps its values: a :class:`Keyspace` per top-level dict, of entries.

Every read and write of a stored value goes through a keyspace, so what is kept for a
key, and the bookkeeping that must stay in step with it, lives in this one module.

Most entries are just the value's pickle, as the client sent it: the server stores it
and sends it back without ever looking inside. Such an entry is kept as those bytes
alone, with no object around them; an object per key would cost an allocation on every
``set`` (a quarter of its time) and about 64 bytes per key.

An entry that holds more is an :class:`Entry`: a value the server unpickled to work on
(``incr``, nested writes), with its pickle cached until the value changes. The keyspace
remembers which keys hold an :class:`Entry`, so that copying the state out (snapshots,
dumps) only has to look at those.

Beside the entries, a keyspace keeps what must stay in step with them: each expiring
key's deadline (:mod:`sharedstate.server.deadlines`), the memory the entries take, and,
with an LRU eviction policy, the order keys were used in
(:mod:`sharedstate.server.eviction`). A key whose deadline has passed is *hidden*: every
read treats it as missing, at once, before the store removes it (on a write that needs
to, or by the background reaper; removals are journaled, so the keyspace leaves them to
the store).

Memory is counted as each value's pickled size plus :data:`KEY_OVERHEAD` per key and
:data:`DEADLINE_OVERHEAD` per deadline: what the server's process holds for them, as
measured in ``bench/expiry.py``. A value changed in place (an ``incr``, a nested write)
is measured again, by pickling it, when the count is next needed.

A keyspace is not thread-safe: the store calls it with its lock held.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import math
import pickle
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..codec import NAMESPACE, PROTOCOL, decode, place
from ..errors import KeyNotFound
from .deadlines import Deadlines
from .eviction import Recency

# What to do when the server can't unpickle a value it must work on.
SERVER_HINT = (
    "the server must load the value for incr and nested writes, so its classes must be "
    "importable there; use state.edit() for objects of your own classes"
)

_MISSING: Any = object()


class Entry:
    """A stored value the server holds as an object, with its pickle cached.

    Whoever changes :attr:`value` in place calls :meth:`Keyspace.changed`, so the next
    read pickles it again.
    """

    __slots__ = ("encoded", "size", "value")

    value: Any
    encoded: bytes | None  # the pickle of ``value``; None once ``value`` changed
    size: int  # the length of the last pickle of ``value``: what the keyspace counts

    def __init__(self, value: Any, encoded: bytes | None = None) -> None:
        self.value = value
        self.encoded = encoded
        self.size = 0 if encoded is None else len(encoded)

    def pickled(self) -> bytes:
        """The value's pickle, made now if the value changed since the last one."""
        if self.encoded is None:
            self.encoded = pickle.dumps(self.value, protocol=PROTOCOL)
        return self.encoded

    def changed(self) -> None:
        """The value is about to change, or changed, in place: its pickle is stale."""
        self.encoded = None


# Bytes the server's process holds per key beyond its pickle (the dict slot, the key
# object, the bytes object's header), and per deadline (a dict slot, a heap entry).
KEY_OVERHEAD = 100
DEADLINE_OVERHEAD = 120


def _return_free_memory_to_the_os() -> None:
    """Hand memory freed by removed keys back to the system, not only to Python.

    A full garbage collection empties Python's free lists, so that its memory pools
    holding nothing else can be released (measured: after a million expiring keys went,
    the server held 100 MiB more without it); glibc then keeps freed memory for its own
    reuse, which ``malloc_trim`` hands back (Linux with glibc; elsewhere it is skipped).
    """
    gc.collect()
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _libc = False
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


_libc: Any = None


def _value_size(entry: bytes | Entry) -> int:
    return len(entry) if isinstance(entry, bytes) else entry.size


def _always_later() -> float:
    return -math.inf  # no deadline has passed: replaying a journal


class Keyspace:
    """The entries of one top-level dict of the store: the state, or the namespace.

    Values go in and come out pickled (bytes); :meth:`live` is the one way to the
    object, for the operations that work on it. Reads skip hidden keys (their deadline
    passed); writes never look at deadlines but take an ``expires_at`` (None: the key
    doesn't expire) where they set a value whole.
    """

    __slots__ = (
        "_boxed",
        "_dirty",
        "_entries",
        "deadlines",
        "now",
        "recency",
        "recency_of_all",
        "space",
        "used",
    )

    def __init__(self, space: str) -> None:
        self.space = space  # DATA or NAMESPACE, for messages
        self._entries: dict[Any, bytes | Entry] = {}
        self._boxed: set[Any] = set()  # the keys whose entry is an Entry, not bare bytes
        self._dirty: set[Any] = set()  # boxed keys changed since they were last measured
        self.deadlines = Deadlines()
        self.used = 0  # bytes, as the module docstring counts them
        # The clock deadlines are compared with; the store stops it while replaying.
        self.now: Callable[[], float] = time.time
        # With an LRU eviction policy: the order keys were used in, of every key
        # (recency_of_all) or only of those with a deadline.
        self.recency: Recency | None = None
        self.recency_of_all = True

    def stop_clock(self) -> None:
        """Let no deadline pass (replay: the journal says what expired, when it did)."""
        self.now = _always_later

    def start_clock(self) -> None:
        self.now = time.time

    # -- reads ---------------------------------------------------------------------

    def __len__(self) -> int:
        if not self.deadlines:
            return len(self._entries)
        return len(self._entries) - self.deadlines.count_passed(self.now())

    def __contains__(self, key: Any) -> bool:
        if key not in self._entries:
            return False
        return not (self.deadlines and self.deadlines.passed(key, self.now()))

    def stored(self) -> int:
        """How many keys are stored, hidden ones included."""
        return len(self._entries)

    def hidden(self, key: Any) -> bool:
        """Whether ``key`` is stored but its deadline has passed."""
        return bool(self.deadlines) and self.deadlines.passed(key, self.now())

    def keys(self) -> list[Any]:
        if not self.deadlines:
            return list(self._entries)
        passed, now = self.deadlines.passed, self.now()
        return [key for key in self._entries if not passed(key, now)]

    def encoded(self, key: Any) -> bytes | None:
        """The pickled value of ``key``, or None when it is missing (or hidden)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.deadlines and self.deadlines.passed(key, self.now()):
            return None
        if self.recency is not None:
            self._touch(key)
        if isinstance(entry, bytes):  # the usual bare bytes
            return entry
        return entry.pickled()

    def encoded_dict(self) -> dict[Any, bytes]:
        """Every key with its pickled value: a shallow copy, plus pickling the objects."""
        return self.export()[0]

    def export(self) -> tuple[dict[Any, bytes], dict[Any, float]]:
        """Every key with its pickled value, and the deadlines of those that expire: at
        one moment (a key whose deadline passes meanwhile is in neither)."""
        copy = self._entries.copy()
        for key in self._boxed:
            copy[key] = copy[key].pickled()  # type: ignore[union-attr]
        deadlines: dict[Any, float] = {}
        if self.deadlines:
            now = self.now()
            for key, when in self.deadlines.items():
                if when <= now:
                    del copy[key]
                else:
                    deadlines[key] = when
        return copy, deadlines  # type: ignore[return-value]

    def deadline(self, key: Any) -> float | None:
        """When ``key`` expires (a ``time.time()``), or None if it doesn't."""
        return self.deadlines.get(key)

    def expiring_count(self) -> int:
        """How many keys have a deadline that has not passed."""
        return len(self.deadlines) - self.deadlines.count_passed(self.now())

    def live(self, key: Any) -> Entry:
        """The entry of ``key`` as an object, unpickling it on first use.

        Raises :class:`KeyNotFound` if it is missing or hidden, :class:`ValueNotLoadable`
        if the server can't unpickle it.
        """
        entry = self._entries.get(key)
        if entry is None or (self.deadlines and self.deadlines.passed(key, self.now())):
            raise KeyNotFound(key, "state.namespace" if self.space == NAMESPACE else "state")
        if self.recency is not None:
            self._touch(key)
        if isinstance(entry, Entry):
            return entry
        where = functools.partial(place, self.space, (key,))  # formatted only on failure
        live = Entry(decode(entry, where, SERVER_HINT), entry)
        self._entries[key] = live
        self._boxed.add(key)
        return live

    def growth(self, key: Any, data: bytes, expires_at: float | None = None) -> int:
        """How many bytes :meth:`put` of ``data`` at ``key`` would add (may be negative)."""
        had_deadline = key in self.deadlines
        change = len(data)
        if expires_at is not None and not had_deadline:
            change += DEADLINE_OVERHEAD
        elif expires_at is None and had_deadline:
            change -= DEADLINE_OVERHEAD
        old = self._entries.get(key)
        return change + KEY_OVERHEAD if old is None else change - _value_size(old)

    def size_of(self, key: Any, deadline_taken: bool = False) -> int:
        """The bytes ``key`` (which is stored) counts for, with its deadline (also when
        :meth:`take_passed` has just taken it: ``deadline_taken``)."""
        size = _value_size(self._entries[key]) + KEY_OVERHEAD
        return size + (DEADLINE_OVERHEAD if deadline_taken or key in self.deadlines else 0)

    def measure(self) -> int:
        """Bring :attr:`used` up to date for values changed in place, and return it."""
        for key in self._dirty:
            entry = self._entries[key]
            assert isinstance(entry, Entry)
            before = entry.size
            entry.size = len(entry.pickled())
            self.used += entry.size - before
        self._dirty.clear()
        return self.used

    # -- writes --------------------------------------------------------------------

    def put(self, key: Any, data: bytes, expires_at: float | None = None) -> None:
        """Set ``key`` to the pickled value ``data``, expiring at ``expires_at``."""
        size = len(data)  # first: what isn't bytes is refused before anything changes
        entries = self._entries
        old = entries.get(key)
        entries[key] = data
        if old is None:
            self.used += size + KEY_OVERHEAD
        else:
            self.used += size - _value_size(old)
            if self._boxed and isinstance(old, Entry):
                self._boxed.discard(key)
                self._dirty.discard(key)
        self._set_deadline(key, expires_at)

    def put_many(self, pairs: Iterable[tuple[Any, bytes]], expires_at: float | None = None) -> None:
        for key, data in pairs:
            self.put(key, data, expires_at)

    def put_object(self, key: Any, value: Any, expires_at: float | None = None) -> Entry:
        """Set ``key`` to ``value``, an object the server made (``incr`` of a new key)."""
        self.discard(key)
        entry = self._entries[key] = Entry(value)
        self._boxed.add(key)
        self._dirty.add(key)
        self.used += KEY_OVERHEAD
        self._set_deadline(key, expires_at)
        return entry

    def changed(self, key: Any, entry: Entry) -> None:
        """``entry``, the live entry of ``key``, is about to change in place."""
        entry.changed()
        self._dirty.add(key)

    def set_deadline(self, key: Any, expires_at: float | None) -> None:
        """Make ``key`` (which is stored) expire at ``expires_at``; None: never."""
        self._set_deadline(key, expires_at)

    def discard(self, key: Any) -> bool:
        """Remove ``key``; False if it was not there."""
        old = self._entries.pop(key, None)
        if old is None:
            return False
        self._forget(key, old)
        return True

    def pop(self, key: Any) -> bytes | None:
        """Remove ``key`` and return its pickled value (None if it was not there)."""
        old = self._entries.pop(key, None)
        if old is None:
            return None
        self._forget(key, old)
        return old.pickled() if isinstance(old, Entry) else old

    def take_passed(self, limit: int, now: float | None = None) -> list[tuple[Any, float]]:
        """Up to ``limit`` keys whose deadline passed by ``now`` (default: the clock),
        soonest first, with the deadlines they no longer have: for the store to remove
        (or, if it can't, to give back with :meth:`set_deadline`)."""
        taken = self.deadlines.pop_passed(self.now() if now is None else now, limit)
        self.used -= DEADLINE_OVERHEAD * len(taken)
        return taken

    def clear(self) -> None:
        self._entries.clear()
        self._boxed.clear()
        self._dirty.clear()
        self.deadlines.clear()
        if self.recency is not None:
            self.recency.clear()
        self.used = 0

    def load(self, pairs: Mapping[Any, bytes], expires: Mapping[Any, float] | None = None) -> None:
        """Replace every entry with ``pairs`` of keys and pickled values, and their
        deadlines (``expires``)."""
        self.clear()
        deadlines = expires or {}
        for key, data in pairs.items():
            self.put(key, data, deadlines.get(key))

    def compact(self) -> None:
        """Give back the memory of dicts that once held many more keys than now.

        A dict never shrinks when keys are removed, only when it is copied.
        """
        self._entries = dict(self._entries)
        self.deadlines.compact()
        _return_free_memory_to_the_os()

    # -- internals -----------------------------------------------------------------

    def _forget(self, key: Any, old: bytes | Entry) -> None:
        self.used -= _value_size(old) + KEY_OVERHEAD
        if key in self.deadlines:
            self.used -= DEADLINE_OVERHEAD
        if isinstance(old, Entry):
            self._boxed.discard(key)
            self._dirty.discard(key)
        self.deadlines.discard(key)
        if self.recency is not None:
            self.recency.forget(key)

    def _set_deadline(self, key: Any, expires_at: float | None) -> None:
        deadlines = self.deadlines
        had = key in deadlines if deadlines else False
        if expires_at is None:
            if had:
                deadlines.discard(key)
                self.used -= DEADLINE_OVERHEAD
        else:
            deadlines.set(key, expires_at)
            if not had:
                self.used += DEADLINE_OVERHEAD
        if self.recency is not None:
            if self.recency_of_all or expires_at is not None:
                self.recency.touch(key)
            else:
                self.recency.forget(key)

    def _touch(self, key: Any) -> None:
        assert self.recency is not None
        if self.recency_of_all or key in self.deadlines:
            self.recency.touch(key)
