"""The shared state itself: a dict, a namespace, one lock and per-key edits.

Plain Python with no sockets, so it can be tested directly. The server calls these
methods from one thread per client connection; every method takes the ``caller`` (the
connection making the call) first, because the lock and edits belong to a connection
and are released when it drops (:meth:`Store.release_all`).

Values arrive pickled (see :mod:`sharedstate.codec`) and are kept as those bytes. Only
an operation that needs the object (``incr``, a nested write) unpickles it. Every value
is read and written through a :class:`~sharedstate.server.entries.Keyspace`, one for the
dict and one for the namespace, which knows how each entry is held.

Every write is numbered (:attr:`Store.seq`) and, when a journal is attached, recorded
in it under the lock, after its checks and before it changes anything: a write the
journal refuses never happens, and replaying the journal in order repeats the state.
Records are of the kinds :mod:`sharedstate.persistence.records` defines, not method
calls, and :data:`APPLY` says how each kind is replayed.
"""

from __future__ import annotations

import functools
import pickle
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from ..codec import DATA, NAMESPACE, PROTOCOL, Contents, check_ttl, decode, place
from ..errors import (
    Conflict,
    KeyNotFound,
    ServerStopping,
    SharedStateError,
    ValueNotLoadable,
)
from ..nested import apply_method, check_method, check_nesting, check_number, unpack_call, walk
from ..persistence.records import (
    CLEAR,
    DELETE,
    DELETE_MANY,
    EXPIRE_AT,
    INCR,
    INCR_EXPIRING,
    NESTED,
    NS_DELETE,
    NS_SET,
    PERSIST,
    RESTORE,
    RESTORE_EXPIRING,
    SET,
    SET_EXPIRING,
    UPDATE,
    UPDATE_EXPIRING,
)
from ..protocol import OPERATIONS
from .entries import DEADLINE_OVERHEAD, SERVER_HINT, Keyspace
from .eviction import NOEVICTION, MemoryBound
from .reservations import Caller, LocalCaller, Reservations


class Recorder(Protocol):
    """Where writes are recorded before they are applied: the journal."""

    def append(self, seq: int, kind: str, fields: tuple[Any, ...]) -> None:
        """Record write ``seq``, a record of ``kind`` (:mod:`sharedstate.persistence.records`)."""
        ...


REPLAY = LocalCaller(0)


class Store:
    """All shared data of one server. Thread-safe: one condition guards everything.

    With ``max_memory`` (bytes), a write that would take the data past it first makes
    room as ``eviction`` says (:mod:`sharedstate.server.eviction`), or is refused with
    :class:`MemoryLimitReached`.
    """

    #: The methods a client may call over the wire.
    EXPOSED = frozenset(OPERATIONS)

    def __init__(self, max_memory: int | None = None, eviction: str = NOEVICTION) -> None:
        self._data = Keyspace(DATA)
        self._namespace = Keyspace(NAMESPACE)
        self._spaces = {DATA: self._data, NAMESPACE: self._namespace}
        self._cond = threading.Condition()
        self._reservations = Reservations(self._cond)
        self.seq = 0  # the number of the last write
        self.journal: Recorder | None = None
        self._frozen = False
        self._bound = MemoryBound(self._data, self._namespace, max_memory, eviction)
        # The deadline a key had when its edit began: the write-back keeps it.
        self._edit_deadlines: dict[Any, float] = {}
        self.hits = self.misses = self.expired = self.evicted = 0
        self._largest_size = 0  # the most keys seen by remove_expired, to know to compact

    # -- reads ---------------------------------------------------------------------

    def lookup(self, caller: Caller, key: Any) -> bytes | None:
        """The pickled value of ``key``, or ``None`` when it is missing."""
        with self._cond:
            data = self._data.encoded(key)
            if data is None:
                self.misses += 1
            else:
                self.hits += 1
            return data

    def get_many(self, caller: Caller, keys: list[Any]) -> list[bytes | None]:
        """The pickled values of ``keys`` (``None`` where missing), at one moment."""
        with self._cond:
            encoded = self._data.encoded
            found = [encoded(key) for key in keys]
            misses = found.count(None)
            self.misses += misses
            self.hits += len(found) - misses
            return found

    def contains(self, caller: Caller, key: Any) -> bool:
        with self._cond:
            return key in self._data

    def length(self, caller: Caller) -> int:
        with self._cond:
            return len(self._data)

    def keys(self, caller: Caller) -> list[Any]:
        with self._cond:
            return self._data.keys()

    def items(self, caller: Caller) -> list[tuple[Any, bytes]]:
        with self._cond:
            return list(self._data.encoded_dict().items())

    def values(self, caller: Caller) -> list[bytes]:
        with self._cond:
            return list(self._data.encoded_dict().values())

    def copy(self, caller: Caller) -> dict[Any, bytes]:
        with self._cond:
            return self._data.encoded_dict()

    def ttl(self, caller: Caller, key: Any) -> float | None:
        """Seconds until ``key`` expires; None if it doesn't. Raises :class:`KeyNotFound`."""
        with self._cond:
            if key not in self._data:
                raise KeyNotFound(key)
            deadline = self._data.deadline(key)
            return None if deadline is None else max(0.0, deadline - time.time())

    # -- writes --------------------------------------------------------------------

    def set(self, caller: Caller, key: Any, data: bytes, ttl: float | None = None) -> None:
        self._set(caller, key, data, _deadline(ttl))

    def _set(self, caller: Caller, key: Any, data: bytes, expires_at: float | None) -> None:
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            self._make_room(lambda: self._data.growth(key, data, expires_at))
            self._record_set(key, data, expires_at)
            self._data.put(key, data, expires_at)

    def add(self, caller: Caller, key: Any, data: bytes, ttl: float | None = None) -> bool:
        """Set ``key`` only if it is missing (or expired); say whether it did."""
        expires_at = _deadline(ttl)
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            if key in self._data:
                return False
            self._make_room(lambda: self._data.growth(key, data, expires_at))
            self._record_set(key, data, expires_at)  # what it did: replay needs no check
            self._data.put(key, data, expires_at)
            return True

    def delete(self, caller: Caller, key: Any) -> bool:
        """Remove ``key``; False if it was not there (or had expired)."""
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            present = key in self._data
            self._record(DELETE, key)
            self._data.discard(key)
            return present

    def setdefault(self, caller: Caller, key: Any, data: bytes) -> bytes:
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            found = self._data.encoded(key)
            if found is not None:
                return found
            self._make_room(lambda: self._data.growth(key, data))
            self._record(SET, key, data)  # what it did: replay needs no check
            self._data.put(key, data)
            return data

    def pop(self, caller: Caller, key: Any) -> bytes | None:
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            if key not in self._data:
                return None
            self._record(DELETE, key)  # what it did: replay needs no check
            return self._data.pop(key)

    def update(
        self, caller: Caller, pairs: list[tuple[Any, bytes]], ttl: float | None = None
    ) -> None:
        self._update(caller, pairs, _deadline(ttl))

    def _update(
        self, caller: Caller, pairs: list[tuple[Any, bytes]], expires_at: float | None
    ) -> None:
        with self._cond:
            for key, _ in pairs:
                self._reservations.wait_until_not_edited(caller, key)
            growth = self._data.growth
            self._make_room(lambda: sum(growth(key, data, expires_at) for key, data in pairs))
            if expires_at is None:
                self._record(UPDATE, pairs)
            else:
                self._record(UPDATE_EXPIRING, pairs, expires_at)
            self._data.put_many(pairs, expires_at)

    def delete_many(self, caller: Caller, keys: list[Any]) -> int:
        """Remove ``keys``; return how many were there."""
        with self._cond:
            for key in keys:
                self._reservations.wait_until_not_edited(caller, key)
            present = [key for key in keys if key in self._data]
            if not present:
                return 0
            self._record(DELETE_MANY, present)
            for key in present:
                self._data.discard(key)
            return len(present)

    def clear(self, caller: Caller) -> None:
        with self._cond:
            self._reservations.wait_until_no_edits_but(caller)
            self._record(CLEAR)
            self._data.clear()

    def incr(
        self, caller: Caller, key: Any, amount: int | float, ttl: float | None = None
    ) -> int | float:
        """Add ``amount`` to the number at ``key`` (missing counts as 0); return the sum.

        A key it creates expires after ``ttl`` seconds (a fixed-window counter); an
        existing key keeps its expiry.
        """
        return self._incr(caller, key, amount, _deadline(ttl))

    def _incr(
        self, caller: Caller, key: Any, amount: int | float, expires_at: float | None
    ) -> int | float:
        check_number(amount, "the amount to add")
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            if key not in self._data:
                data = pickle.dumps(amount, protocol=PROTOCOL)
                self._make_room(lambda: self._data.growth(key, data, expires_at))
                if self._data.hidden(key):
                    # Replay keeps the expired value: record the new one, not the sum.
                    self._record_set(key, data, expires_at)
                elif expires_at is None:
                    self._record(INCR, key, amount)
                else:
                    self._record(INCR_EXPIRING, key, amount, expires_at)
                self._data.put_object(key, amount, expires_at)
                return amount
            entry = self._data.live(key)
            check_number(entry.value, (key,))
            self._record(INCR, key, amount)
            self._data.changed(key, entry)
            entry.value += amount
            return entry.value  # type: ignore[no-any-return]

    def expire(self, caller: Caller, key: Any, ttl: float) -> bool:
        """Make ``key`` expire ``ttl`` seconds from now; False if it is missing.

        A ``ttl`` of 0 or less removes the key now, as Redis's EXPIRE does.
        """
        if not isinstance(ttl, bool) and isinstance(ttl, (int, float)) and ttl <= 0:
            return self.delete(caller, key)
        return self._expire_at(caller, key, _deadline(check_ttl(ttl)))

    def _expire_at(self, caller: Caller, key: Any, expires_at: float | None) -> bool:
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            if key not in self._data:
                return False
            if expires_at is None:
                self._record(PERSIST, key)
            else:
                if self._data.deadline(key) is None:
                    self._make_room(lambda: DEADLINE_OVERHEAD)
                self._record(EXPIRE_AT, key, expires_at)
            self._data.set_deadline(key, expires_at)
            return True

    def persist(self, caller: Caller, key: Any) -> bool:
        """Make ``key`` never expire; False if it is missing or had no expiry."""
        with self._cond:
            if self._data.deadline(key) is None:
                return False
            return self._expire_at(caller, key, None)

    def nested(
        self, caller: Caller, space: str, path: tuple[Any, ...], method: str, call_data: bytes
    ) -> bytes:
        """Call a container method on the dict or list at ``path``; return its pickled result.

        ``call_data`` is the pickled ``(args, kwargs)``, or ``(args, kwargs,
        expectations)`` when the write names list positions: what the client read there,
        checked on the way down (:func:`sharedstate.nested.walk`) before anything is
        recorded. ``method`` must be one of the methods :mod:`sharedstate.nested` allows
        for the container. The value keeps its expiry.
        """
        where = functools.partial(place, space, path)  # formatted only if needed
        what = f"the value passed to {method}() on"
        call = decode(call_data, where, SERVER_HINT, what)
        args, kwargs, expectations = unpack_call(call, lambda: f"{where()}.{method}()")
        keyspace = self._spaces[space]
        with self._cond:
            if space == DATA:
                self._reservations.wait_until_not_edited(caller, path[0])
            entry = keyspace.live(path[0])
            container = walk(entry.value, space, path, expectations)
            check_method(container, method, where)
            check_nesting(path, args, kwargs, where)
            self._make_room(lambda: _nested_growth(container, method, args, call_data))
            self._record(NESTED, space, path, method, call_data)
            keyspace.changed(path[0], entry)
            result = apply_method(container, method, args, kwargs, where)
            return pickle.dumps(result, protocol=PROTOCOL)

    # -- namespace -------------------------------------------------------------------

    def ns_lookup(self, caller: Caller, name: str) -> bytes | None:
        with self._cond:
            return self._namespace.encoded(name)

    def ns_set(self, caller: Caller, name: str, data: bytes) -> None:
        with self._cond:
            self._make_room(lambda: self._namespace.growth(name, data))
            self._record(NS_SET, name, data)
            self._namespace.put(name, data)

    def ns_delete(self, caller: Caller, name: str) -> bool:
        with self._cond:
            if name not in self._namespace:
                return False
            self._record(NS_DELETE, name)
            return self._namespace.discard(name)

    def ns_items(self, caller: Caller) -> list[tuple[str, bytes]]:
        with self._cond:
            return list(self._namespace.encoded_dict().items())

    # -- the shared lock ---------------------------------------------------------------

    def lock_acquire(
        self, caller: Caller, timeout: float | None, lease: float | None = None
    ) -> bool:
        """Take the lock for ``caller``; wait at most ``timeout`` seconds (None: forever).

        With a ``lease`` (seconds), the lock is taken back from ``caller`` once the lease
        runs out, so a hung holder can't block everyone; its late release then fails.
        """
        with self._cond:
            return self._reservations.acquire_lock(caller, timeout, lease)

    def lock_release(self, caller: Caller) -> None:
        with self._cond:
            self._reservations.release_lock(caller)

    def lock_locked(self, caller: Caller) -> bool:
        with self._cond:
            return not self._reservations.lock_is_free()

    # -- edits: read-modify-write of one key ---------------------------------------------

    def edit_begin(
        self, caller: Caller, key: Any, default: bytes | None, timeout: float | None
    ) -> bytes:
        """Reserve ``key`` for ``caller`` and return its pickled value (or ``default``).

        Other edits, ``incr`` and writes of that key wait until :meth:`edit_commit` or
        :meth:`edit_abort`, or until the caller's connection drops.
        """
        with self._cond:
            self._reservations.wait_to_edit(caller, key, timeout)
            found = self._data.encoded(key)
            if found is None and default is None:
                raise KeyNotFound(key)
            self._reservations.start_edit(caller, key)
            self._edit_deadlines.pop(key, None)
            deadline = self._data.deadline(key) if found is not None else None
            if deadline is not None:
                self._edit_deadlines[key] = deadline
            return default if found is None else found  # type: ignore[return-value]

    def edit_commit(self, caller: Caller, key: Any, data: bytes, ttl: float | None = None) -> None:
        """Write the edited value and end the edit (it ends even if the write is refused).

        The value keeps the expiry the key had when the edit began, or with ``ttl``
        expires that many seconds from now; if the key's time passed during the edit,
        nothing is written and :class:`Conflict` says so.
        """
        with self._cond:
            self._reservations.check_editing(caller, key)
            try:
                began_with = self._edit_deadlines.pop(key, None)
                deadline = began_with if ttl is None else _deadline(ttl)
                if began_with is not None and began_with <= time.time():
                    raise Conflict(
                        f"state[{key!r}] expired while it was being edited, so the edit was "
                        "not written; give the key a longer ttl, or edit it again"
                    )
                self._make_room(lambda: self._data.growth(key, data, deadline))
                self._record_set(key, data, deadline)
                self._data.put(key, data, deadline)
            finally:
                self._reservations.end_edit(caller, key)

    def edit_abort(self, caller: Caller, key: Any) -> None:
        with self._cond:
            self._edit_deadlines.pop(key, None)
            self._reservations.end_edit(caller, key)

    # -- whole-state operations: dump, restore, snapshots, recovery ----------------------

    def export_all(
        self, caller: Caller, with_expires: bool = False
    ) -> (
        tuple[list[tuple[Any, bytes]], list[tuple[str, bytes]]]
        | tuple[list[tuple[Any, bytes]], list[tuple[str, bytes]], list[tuple[Any, float]]]
    ):
        """Every key and namespace attribute with its pickled value, at one moment, and
        (``with_expires``) when the expiring keys expire."""
        contents = self.export()
        pairs, attributes = list(contents.data.items()), list(contents.namespace.items())
        if with_expires:
            return pairs, attributes, list(contents.expires.items())
        return pairs, attributes

    def restore(
        self,
        caller: Caller,
        pairs: list[tuple[Any, bytes]],
        attributes: list[tuple[str, bytes]],
        replace: bool,
        expires: list[tuple[Any, float]] | None = None,
    ) -> None:
        """Load a dump: replace everything with it, or merge it into what is there.

        ``expires`` gives the keys that expire (wall-clock times); a key whose time has
        passed is loaded hidden, as if it had expired in the server.
        """
        with self._cond:
            self._reservations.wait_until_no_edits_but(caller)
            replace = bool(replace)  # the record's field is a bool
            deadlines = dict(expires or ())

            def growth() -> int:
                added = sum(
                    self._data.growth(key, data, deadlines.get(key)) for key, data in pairs
                ) + sum(self._namespace.growth(name, data) for name, data in attributes)
                if replace:
                    added -= self._data.measure() + self._namespace.measure()
                return added

            self._make_room(growth)
            if expires:
                self._record(RESTORE_EXPIRING, pairs, attributes, replace, list(expires))
            else:
                self._record(RESTORE, pairs, attributes, replace)
            if replace:
                self._data.clear()
                self._namespace.clear()
            for key, data in pairs:
                self._data.put(key, data, deadlines.get(key))
            self._namespace.put_many(attributes)

    def export(self, while_locked: Callable[[], None] | None = None) -> Contents:
        """A consistent copy of the whole state, taken under the lock (expired keys left
        out).

        The lock is held only for a shallow copy (the values are immutable bytes) plus
        pickling the few values held live; ``while_locked`` runs at that same moment
        (the journal starts a new segment there).
        """
        with self._cond:
            data, expires = self._data.export()
            namespace = self._namespace.encoded_dict()
            if while_locked is not None:
                while_locked()
            return Contents(self.seq, data, namespace, expires)

    def load(self, contents: Contents) -> None:
        """Replace the whole state (at start-up, before any client connects)."""
        with self._cond:
            self._data.load(contents.data, contents.expires)
            self._namespace.load(contents.namespace)
            self.seq = contents.seq

    def replay(self, seq: int, kind: str, fields: tuple[Any, ...]) -> None:
        """Repeat journal record ``seq``, of ``kind`` with ``fields`` (checked beforehand
        with :func:`sharedstate.persistence.records.problem`).

        No time passes while a record is replayed: what expired before it, the journal
        says with delete records. Writes that failed when made fail again, harmlessly;
        a value that can't be loaded here (an import missing) stops recovery.
        """
        apply = APPLY.get(kind)
        if apply is None:
            raise ValueError(f"journal record {seq} is of an unknown kind {kind!r}")
        self._data.stop_clock()
        limit, self._bound.max_memory = self._bound.max_memory, None  # it fitted then
        try:
            apply(self, *fields)
        except ValueNotLoadable:
            raise
        except SharedStateError:
            pass
        finally:
            self._data.start_clock()
            self._bound.max_memory = limit
        self.seq = seq

    def freeze(self) -> None:
        """Refuse every write from now on: the server is stopping."""
        with self._cond:
            self._frozen = True

    # -- housekeeping ----------------------------------------------------------------------

    def release_all(self, caller: Caller) -> list[str]:
        """Free the lock and the edits ``caller`` holds; say what was freed."""
        with self._cond:
            return self._reservations.release_all(caller)

    def call_when_freed(self, callback: Callable[[tuple[Hashable, ...]], None]) -> None:
        """Have ``callback(resources)`` called whenever the lock or edits are freed."""
        with self._cond:
            self._reservations.on_free = callback

    def stats(self) -> dict[str, Any]:
        """Counts for ``sharedstate status``."""
        with self._cond:
            return {
                "keys": len(self._data),
                "namespace_attributes": len(self._namespace),
                "lock_holder": self._reservations.lock_owner,
                "open_edits": len(self._reservations.editors),
                "seq": self.seq,
                "expiring_keys": self._data.expiring_count(),
                "expired": self.expired,
                "evicted": self.evicted,
                "hits": self.hits,
                "misses": self.misses,
                "memory_used": self._data.measure() + self._namespace.measure(),
                "max_memory": self._bound.max_memory,
                "eviction": self._bound.policy,
            }

    def remove_expired(self, limit: int = 500) -> int:
        """Remove up to ``limit`` keys whose time has passed, soonest first, in one
        journaled write; return how many (the background reaper calls this)."""
        with self._cond:
            taken = self._data.take_passed(limit)
            if taken:
                self._remove_expired_keys(taken)
            size = self._data.stored()
            self._largest_size = max(self._largest_size, size)
            if not taken and self._largest_size > _COMPACT_FROM and size < self._largest_size // 4:
                self._data.compact()  # the dicts shrink only when copied
                self._largest_size = size
            return len(taken)

    # -- internals ---------------------------------------------------------------------------

    def _record(self, kind: str, *fields: Any) -> None:
        """Number a write and journal it as a record of ``kind``; if either is refused,
        the write doesn't happen."""
        if self._frozen:
            raise ServerStopping("the server is stopping, so the write was refused")
        seq = self.seq + 1
        if self.journal is not None:
            self.journal.append(seq, kind, fields)
        self.seq = seq

    def _record_set(self, key: Any, data: bytes, expires_at: float | None) -> None:
        if expires_at is None:
            self._record(SET, key, data)
        else:
            self._record(SET_EXPIRING, key, data, expires_at)

    def _make_room(self, growth_of_write: Callable[[], int]) -> None:
        """Before a write that adds ``growth_of_write()`` bytes: keep under the memory
        bound (:class:`~sharedstate.server.eviction.MemoryBound`)."""
        self._bound.make_room(growth_of_write, self._remove_expired_keys, self._evict)

    def _remove_expired_keys(self, taken: list[tuple[Any, float]]) -> None:
        """Remove the keys :meth:`Keyspace.take_passed` gave, in one journaled write; if
        the journal refuses it, give them their deadlines back (they stay hidden)."""
        keys = [key for key, _ in taken]
        try:
            self._record(DELETE_MANY, keys)
        except BaseException:
            for key, deadline in taken:
                self._data.set_deadline(key, deadline)
            raise
        for key in keys:
            self._data.discard(key)
        self.expired += len(keys)

    def _evict(self, keys: list[Any]) -> None:
        self._record(DELETE_MANY, keys)
        for key in keys:
            self._data.discard(key)
        self.evicted += len(keys)


def _nested_growth(container: Any, method: str, args: Any, call_data: bytes) -> int:
    """About how many bytes a nested write adds: what it sends, or for ``*=`` the copies."""
    if method == "__imul__" and args and type(args[0]) is int and args[0] > 1:
        return len(pickle.dumps(container, protocol=PROTOCOL)) * (args[0] - 1)
    return len(call_data)


def _deadline(ttl: float | None) -> float | None:
    """The wall-clock time ``ttl`` seconds from now (None: no expiry)."""
    return None if ttl is None else time.time() + check_ttl(ttl)


_COMPACT_FROM = 50_000  # keys: below this, a dict's unused slots are not worth a copy


# How a journal record of each kind is applied on replay: by the store operation that
# does what it records, so that replay repeats its checks. The kinds and their fields are
# defined in sharedstate.persistence.records; when an operation gains an argument, the
# record keeps its fields and the entry here passes the default.
APPLY: dict[str, Callable[..., object]] = {
    SET: lambda store, key, value: store.set(REPLAY, key, value),
    DELETE: lambda store, key: store.delete(REPLAY, key),
    INCR: lambda store, key, amount: store.incr(REPLAY, key, amount),
    NESTED: lambda store, space, path, method, call: store.nested(
        REPLAY, space, path, method, call
    ),
    UPDATE: lambda store, pairs: store.update(REPLAY, pairs),
    DELETE_MANY: lambda store, keys: store.delete_many(REPLAY, keys),
    CLEAR: lambda store: store.clear(REPLAY),
    RESTORE: lambda store, pairs, attributes, replace: store.restore(
        REPLAY, pairs, attributes, replace
    ),
    NS_SET: lambda store, name, value: store.ns_set(REPLAY, name, value),
    NS_DELETE: lambda store, name: store.ns_delete(REPLAY, name),
    SET_EXPIRING: lambda store, key, value, expires_at: store._set(REPLAY, key, value, expires_at),
    UPDATE_EXPIRING: lambda store, pairs, expires_at: store._update(REPLAY, pairs, expires_at),
    INCR_EXPIRING: lambda store, key, amount, expires_at: store._incr(
        REPLAY, key, amount, expires_at
    ),
    EXPIRE_AT: lambda store, key, expires_at: store._expire_at(REPLAY, key, expires_at),
    PERSIST: lambda store, key: store._expire_at(REPLAY, key, None),
    RESTORE_EXPIRING: lambda store, pairs, attributes, replace, expires: store.restore(
        REPLAY, pairs, attributes, replace, expires
    ),
}
