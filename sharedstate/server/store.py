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
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from ..codec import DATA, NAMESPACE, PROTOCOL, Contents, decode, place
from ..errors import KeyNotFound, ServerStopping, SharedStateError, ValueNotLoadable
from ..persistence.records import (
    CLEAR,
    DELETE,
    DELETE_MANY,
    INCR,
    NESTED,
    NS_DELETE,
    NS_SET,
    RESTORE,
    SET,
    UPDATE,
)
from ..protocol import OPERATIONS
from .entries import SERVER_HINT, Keyspace
from .nested import apply_method, check_method, check_nesting, check_number, unpack_call, walk
from .reservations import Caller, LocalCaller, Reservations


class Recorder(Protocol):
    """Where writes are recorded before they are applied: the journal."""

    def append(self, seq: int, kind: str, fields: tuple[Any, ...]) -> None:
        """Record write ``seq``, a record of ``kind`` (:mod:`sharedstate.persistence.records`)."""
        ...


REPLAY = LocalCaller(0)


class Store:
    """All shared data of one server. Thread-safe: one condition guards everything."""

    #: The methods a client may call over the wire.
    EXPOSED = frozenset(OPERATIONS)

    def __init__(self) -> None:
        self._data = Keyspace(DATA)
        self._namespace = Keyspace(NAMESPACE)
        self._spaces = {DATA: self._data, NAMESPACE: self._namespace}
        self._cond = threading.Condition()
        self._reservations = Reservations(self._cond)
        self.seq = 0  # the number of the last write
        self.journal: Recorder | None = None
        self._frozen = False

    # -- reads ---------------------------------------------------------------------

    def lookup(self, caller: Caller, key: Any) -> bytes | None:
        """The pickled value of ``key``, or ``None`` when it is missing."""
        with self._cond:
            return self._data.encoded(key)

    def get_many(self, caller: Caller, keys: list[Any]) -> list[bytes | None]:
        """The pickled values of ``keys`` (``None`` where missing), at one moment."""
        with self._cond:
            encoded = self._data.encoded
            return [encoded(key) for key in keys]

    def contains(self, caller: Caller, key: Any) -> bool:
        return key in self._data

    def length(self, caller: Caller) -> int:
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

    # -- writes --------------------------------------------------------------------

    def set(self, caller: Caller, key: Any, data: bytes) -> None:
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            self._record(SET, key, data)
            self._data.put(key, data)

    def delete(self, caller: Caller, key: Any) -> bool:
        """Remove ``key``; False if it was not there."""
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            self._record(DELETE, key)
            return self._data.discard(key)

    def setdefault(self, caller: Caller, key: Any, data: bytes) -> bytes:
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            found = self._data.encoded(key)
            if found is not None:
                return found
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

    def update(self, caller: Caller, pairs: list[tuple[Any, bytes]]) -> None:
        with self._cond:
            for key, _ in pairs:
                self._reservations.wait_until_not_edited(caller, key)
            self._record(UPDATE, pairs)
            self._data.put_many(pairs)

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

    def incr(self, caller: Caller, key: Any, amount: int | float) -> int | float:
        """Add ``amount`` to the number at ``key`` (missing counts as 0); return the sum."""
        check_number(amount, "the amount to add")
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            if key not in self._data:
                self._record(INCR, key, amount)
                self._data.put_object(key, amount)
                return amount
            entry = self._data.live(key)
            check_number(entry.value, (key,))
            self._record(INCR, key, amount)
            entry.value += amount
            entry.changed()
            return entry.value  # type: ignore[no-any-return]

    def nested(
        self, caller: Caller, space: str, path: tuple[Any, ...], method: str, call_data: bytes
    ) -> bytes:
        """Call a container method on the dict or list at ``path``; return its pickled result.

        ``call_data`` is the pickled ``(args, kwargs)``, or ``(args, kwargs,
        expectations)`` when the write names list positions: what the client read there,
        checked on the way down (:func:`sharedstate.server.nested.walk`) before anything is
        recorded. ``method`` must be one of the methods :mod:`sharedstate.server.nested` allows
        for the container.
        """
        where = functools.partial(place, space, path)  # formatted only if needed
        what = f"the value passed to {method}() on"
        call = decode(call_data, where, SERVER_HINT, what)
        args, kwargs, expectations = unpack_call(call, lambda: f"{where()}.{method}()")
        with self._cond:
            if space == DATA:
                self._reservations.wait_until_not_edited(caller, path[0])
            entry = self._spaces[space].live(path[0])
            container = walk(entry.value, space, path, expectations)
            check_method(container, method, where)
            check_nesting(path, args, kwargs, where)
            self._record(NESTED, space, path, method, call_data)
            entry.changed()
            result = apply_method(container, method, args, kwargs, where)
            return pickle.dumps(result, protocol=PROTOCOL)

    # -- namespace -------------------------------------------------------------------

    def ns_lookup(self, caller: Caller, name: str) -> bytes | None:
        with self._cond:
            return self._namespace.encoded(name)

    def ns_set(self, caller: Caller, name: str, data: bytes) -> None:
        with self._cond:
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
            return default if found is None else found  # type: ignore[return-value]

    def edit_commit(self, caller: Caller, key: Any, data: bytes) -> None:
        """Write the edited value and end the edit (it ends even if the write is refused)."""
        with self._cond:
            self._reservations.check_editing(caller, key)
            try:
                self._record(SET, key, data)
                self._data.put(key, data)
            finally:
                self._reservations.end_edit(caller, key)

    def edit_abort(self, caller: Caller, key: Any) -> None:
        with self._cond:
            self._reservations.end_edit(caller, key)

    # -- whole-state operations: dump, restore, snapshots, recovery ----------------------

    def export_all(self, caller: Caller) -> tuple[list[tuple[Any, bytes]], list[tuple[str, bytes]]]:
        """Every key and namespace attribute with its pickled value, at one moment."""
        contents = self.export()
        return list(contents.data.items()), list(contents.namespace.items())

    def restore(
        self,
        caller: Caller,
        pairs: list[tuple[Any, bytes]],
        attributes: list[tuple[str, bytes]],
        replace: bool,
    ) -> None:
        """Load a dump: replace everything with it, or merge it into what is there."""
        with self._cond:
            self._reservations.wait_until_no_edits_but(caller)
            replace = bool(replace)  # the record's field is a bool
            self._record(RESTORE, pairs, attributes, replace)
            if replace:
                self._data.clear()
                self._namespace.clear()
            self._data.put_many(pairs)
            self._namespace.put_many(attributes)

    def export(self, while_locked: Callable[[], None] | None = None) -> Contents:
        """A consistent copy of the whole state, taken under the lock.

        The lock is held only for a shallow copy (the values are immutable bytes) plus
        pickling the few values held live; ``while_locked`` runs at that same moment
        (the journal starts a new segment there).
        """
        with self._cond:
            data = self._data.encoded_dict()
            namespace = self._namespace.encoded_dict()
            if while_locked is not None:
                while_locked()
            return Contents(self.seq, data, namespace)

    def load(self, contents: Contents) -> None:
        """Replace the whole state (at start-up, before any client connects)."""
        with self._cond:
            self._data.load(contents.data)
            self._namespace.load(contents.namespace)
            self.seq = contents.seq

    def replay(self, seq: int, kind: str, fields: tuple[Any, ...]) -> None:
        """Repeat journal record ``seq``, of ``kind`` with ``fields`` (checked beforehand
        with :func:`sharedstate.persistence.records.problem`).

        Writes that failed when made fail again, harmlessly; a value that can't be loaded
        here (an import missing) stops recovery.
        """
        apply = APPLY.get(kind)
        if apply is None:
            raise ValueError(f"journal record {seq} is of an unknown kind {kind!r}")
        try:
            apply(self, *fields)
        except ValueNotLoadable:
            raise
        except SharedStateError:
            pass
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
            }

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
}
