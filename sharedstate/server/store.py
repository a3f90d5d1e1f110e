"""The shared state itself: a dict, a namespace, one lock and per-key edits.

Plain Python with no sockets, so it can be tested directly. The server calls these
methods from one thread per client connection; every method takes the ``caller`` (the
connection making the call) first, because the lock and edits belong to a connection
and are released when it drops (:meth:`Store.release_all`).

Values arrive pickled (see :mod:`sharedstate.codec`) and are kept as those bytes. Only
an operation that needs the object (``incr``, a nested write) unpickles it; the entry
then holds the live object (:class:`_Live`) until it is replaced.

Every write is numbered (:attr:`Store.seq`) and, when a journal is attached, recorded
in it under the lock, after its checks and before it changes anything: a write the
journal refuses never happens, and replaying the journal in order repeats the state.
"""

from __future__ import annotations

import functools
import pickle
import threading
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from ..codec import DATA, NAMESPACE, PROTOCOL, Contents, decode, place
from ..errors import KeyNotFound, ServerStopping, SharedStateError, ValueNotLoadable
from ..protocol import OPERATIONS, WRITES
from .nested import apply_method, check_method, check_nesting, check_number, unpack_call, walk
from .reservations import Caller, LocalCaller, Reservations

# What to do when the server can't unpickle a value it must work on.
_SERVER_HINT = (
    "the server must load the value for incr and nested writes, so its classes must be "
    "importable there; use state.edit() for objects of your own classes"
)


class Recorder(Protocol):
    """Where writes are recorded before they are applied: the journal."""

    def append(self, seq: int, method: str, args: tuple[Any, ...]) -> None: ...


REPLAY = LocalCaller(0)

# Store methods a journal record may name: the writes.
REPLAYABLE = WRITES


class _Live:
    """A value the server has unpickled, with its pickle cached until it changes."""

    __slots__ = ("encoded", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.encoded: bytes | None = None


class Store:
    """All shared data of one server. Thread-safe: one condition guards everything."""

    #: The methods a client may call over the wire.
    EXPOSED = frozenset(OPERATIONS)

    def __init__(self) -> None:
        self._spaces: dict[str, dict[Any, bytes | _Live]] = {DATA: {}, NAMESPACE: {}}
        self._data = self._spaces[DATA]
        self._live_keys: set[Any] = set()  # keys of _data holding a _Live entry
        self._cond = threading.Condition()
        self._reservations = Reservations(self._cond)
        self.seq = 0  # the number of the last write
        self.journal: Recorder | None = None
        self._frozen = False

    # -- reads ---------------------------------------------------------------------

    def lookup(self, caller: Caller, key: Any) -> bytes | None:
        """The pickled value of ``key``, or ``None`` when it is missing."""
        with self._cond:
            entry = self._data.get(key)
            return None if entry is None else _encoded(entry)

    def get_many(self, caller: Caller, keys: list[Any]) -> list[bytes | None]:
        """The pickled values of ``keys`` (``None`` where missing), at one moment."""
        with self._cond:
            found = [self._data.get(key) for key in keys]
            return [None if entry is None else _encoded(entry) for entry in found]

    def contains(self, caller: Caller, key: Any) -> bool:
        return key in self._data

    def length(self, caller: Caller) -> int:
        return len(self._data)

    def keys(self, caller: Caller) -> list[Any]:
        with self._cond:
            return list(self._data)

    def items(self, caller: Caller) -> list[tuple[Any, bytes]]:
        with self._cond:
            return [(key, _encoded(entry)) for key, entry in self._data.items()]

    def values(self, caller: Caller) -> list[bytes]:
        with self._cond:
            return [_encoded(entry) for entry in self._data.values()]

    def copy(self, caller: Caller) -> dict[Any, bytes]:
        with self._cond:
            return {key: _encoded(entry) for key, entry in self._data.items()}

    # -- writes --------------------------------------------------------------------

    def set(self, caller: Caller, key: Any, data: bytes) -> None:
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            self._record("set", key, data)
            self._put(key, data)

    def delete(self, caller: Caller, key: Any) -> bool:
        """Remove ``key``; False if it was not there."""
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            self._record("delete", key)
            return self._remove(key) is not None

    def setdefault(self, caller: Caller, key: Any, data: bytes) -> bytes:
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            entry = self._data.get(key)
            if entry is not None:
                return _encoded(entry)
            self._record("setdefault", key, data)
            self._put(key, data)
            return data

    def pop(self, caller: Caller, key: Any) -> bytes | None:
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            if key not in self._data:
                return None
            self._record("pop", key)
            entry = self._remove(key)
            return None if entry is None else _encoded(entry)

    def update(self, caller: Caller, pairs: list[tuple[Any, bytes]]) -> None:
        with self._cond:
            for key, _ in pairs:
                self._reservations.wait_until_not_edited(caller, key)
            self._record("update", pairs)
            for key, data in pairs:
                self._put(key, data)

    def delete_many(self, caller: Caller, keys: list[Any]) -> int:
        """Remove ``keys``; return how many were there."""
        with self._cond:
            for key in keys:
                self._reservations.wait_until_not_edited(caller, key)
            present = [key for key in keys if key in self._data]
            if not present:
                return 0
            self._record("delete_many", present)
            for key in present:
                self._remove(key)
            return len(present)

    def clear(self, caller: Caller) -> None:
        with self._cond:
            self._reservations.wait_until_no_edits_but(caller)
            self._record("clear")
            self._data.clear()
            self._live_keys.clear()

    def incr(self, caller: Caller, key: Any, amount: int | float) -> int | float:
        """Add ``amount`` to the number at ``key`` (missing counts as 0); return the sum."""
        check_number(amount, "the amount to add")
        with self._cond:
            self._reservations.wait_until_not_edited(caller, key)
            if key not in self._data:
                self._record("incr", key, amount)
                self._data[key] = _Live(amount)
                self._live_keys.add(key)
                return amount
            live = self._live(DATA, key)
            check_number(live.value, (key,))
            self._record("incr", key, amount)
            live.value += amount
            live.encoded = None
            return live.value  # type: ignore[no-any-return]

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
        call = decode(call_data, lambda: f"the arguments of {where()}.{method}()", _SERVER_HINT)
        args, kwargs, expectations = unpack_call(call, lambda: f"{where()}.{method}()")
        with self._cond:
            if space == DATA:
                self._reservations.wait_until_not_edited(caller, path[0])
            live = self._live(space, path[0])
            container = walk(live.value, space, path, expectations)
            check_method(container, method, where)
            check_nesting(path, args, kwargs, where)
            self._record("nested", space, path, method, call_data)
            live.encoded = None
            result = apply_method(container, method, args, kwargs, where)
            return pickle.dumps(result, protocol=PROTOCOL)

    # -- namespace -------------------------------------------------------------------

    def ns_lookup(self, caller: Caller, name: str) -> bytes | None:
        with self._cond:
            entry = self._spaces[NAMESPACE].get(name)
            return None if entry is None else _encoded(entry)

    def ns_set(self, caller: Caller, name: str, data: bytes) -> None:
        with self._cond:
            self._record("ns_set", name, data)
            self._spaces[NAMESPACE][name] = data

    def ns_delete(self, caller: Caller, name: str) -> bool:
        with self._cond:
            if name not in self._spaces[NAMESPACE]:
                return False
            self._record("ns_delete", name)
            del self._spaces[NAMESPACE][name]
            return True

    def ns_items(self, caller: Caller) -> list[tuple[str, bytes]]:
        with self._cond:
            return [(name, _encoded(entry)) for name, entry in self._spaces[NAMESPACE].items()]

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
            entry = self._data.get(key)
            if entry is None and default is None:
                raise KeyNotFound(key)
            self._reservations.start_edit(caller, key)
            return default if entry is None else _encoded(entry)  # type: ignore[return-value]

    def edit_commit(self, caller: Caller, key: Any, data: bytes) -> None:
        """Write the edited value and end the edit (it ends even if the write is refused)."""
        with self._cond:
            self._reservations.check_editing(caller, key)
            try:
                self._record("set", key, data)
                self._put(key, data)
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
            self._record("restore", pairs, attributes, replace)
            if replace:
                self._data.clear()
                self._live_keys.clear()
                self._spaces[NAMESPACE].clear()
            for key, data in pairs:
                self._put(key, data)
            self._spaces[NAMESPACE].update(attributes)

    def export(self, while_locked: Callable[[], None] | None = None) -> Contents:
        """A consistent copy of the whole state, taken under the lock.

        The lock is held only for a shallow copy (the values are immutable bytes) plus
        pickling the few values held live; ``while_locked`` runs at that same moment
        (the journal starts a new segment there).
        """
        with self._cond:
            data = self._data.copy()
            for key in self._live_keys:
                data[key] = _encoded(data[key])
            namespace = {name: _encoded(entry) for name, entry in self._spaces[NAMESPACE].items()}
            if while_locked is not None:
                while_locked()
            return Contents(self.seq, data, namespace)  # type: ignore[arg-type]

    def load(self, contents: Contents) -> None:
        """Replace the whole state (at start-up, before any client connects)."""
        with self._cond:
            self._data.clear()
            self._data.update(contents.data)
            self._live_keys.clear()
            self._spaces[NAMESPACE].clear()
            self._spaces[NAMESPACE].update(contents.namespace)
            self.seq = contents.seq

    def replay(self, seq: int, method: str, args: tuple[Any, ...]) -> None:
        """Repeat a journal record. Writes that failed when made fail again, harmlessly;
        a value that can't be loaded here (an import missing) stops recovery."""
        if method not in REPLAYABLE:
            raise ValueError(f"journal record {seq} names an unknown operation {method!r}")
        try:
            getattr(self, method)(REPLAY, *args)
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
                "namespace_attributes": len(self._spaces[NAMESPACE]),
                "lock_holder": self._reservations.lock_owner,
                "open_edits": len(self._reservations.editors),
                "seq": self.seq,
            }

    # -- internals ---------------------------------------------------------------------------

    def _live(self, space: str, key: Any) -> _Live:
        """The entry at ``key`` as a live object, unpickling it on first use."""
        entries = self._spaces[space]
        entry = entries.get(key)
        if entry is None:
            raise KeyNotFound(key, "state.namespace" if space == NAMESPACE else "state")
        if isinstance(entry, _Live):
            return entry
        live = _Live(decode(entry, functools.partial(place, space, (key,)), _SERVER_HINT))
        entries[key] = live
        if space == DATA:
            self._live_keys.add(key)
        return live

    def _record(self, method: str, *args: Any) -> None:
        """Number a write and journal it; if either is refused, the write doesn't happen."""
        if self._frozen:
            raise ServerStopping("the server is stopping, so the write was refused")
        seq = self.seq + 1
        if self.journal is not None:
            self.journal.append(seq, method, args)
        self.seq = seq

    def _put(self, key: Any, data: bytes) -> None:
        self._data[key] = data
        if self._live_keys:
            self._live_keys.discard(key)

    def _remove(self, key: Any) -> bytes | _Live | None:
        if self._live_keys:
            self._live_keys.discard(key)
        return self._data.pop(key, None)


def _encoded(entry: bytes | _Live) -> bytes:
    if isinstance(entry, bytes):
        return entry
    if entry.encoded is None:
        entry.encoded = pickle.dumps(entry.value, protocol=PROTOCOL)
    return entry.encoded
