"""The shared state itself: a dict, a namespace, one lock and per-key edits.

Plain Python with no sockets, so it can be tested directly. The server calls these
methods from one thread per client connection; every method takes the ``caller`` (the
connection making the call) first, because the lock and edits belong to a connection
and are released when it drops (:meth:`Store.release_all`).

Values arrive pickled (see :mod:`sharedstate.codec`) and are kept as those bytes. Only
an operation that needs the object (``incr``, a nested write) unpickles it; the entry
then holds the live object (:class:`_Live`) until it is replaced.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .codec import DATA, NAMESPACE, PROTOCOL, decode, describe, place
from .errors import KeyNotFound, LockError, Timeout
from .nested import apply_method, check_method, check_number, step_into

# What to do when the server can't unpickle a value it must work on.
_SERVER_HINT = (
    "the server must load the value for incr and nested writes, so its classes must be "
    "importable there; use state.edit() for objects of your own classes"
)

# How often a waiting call checks whether its client has gone away.
WAIT_POLL_SECONDS = 0.2


class Caller(Protocol):
    """The client connection on whose behalf an operation runs."""

    @property
    def id(self) -> int: ...

    def is_gone(self) -> bool: ...


class LocalCaller:
    """A caller that is always there: for tests and in-process use."""

    def __init__(self, id: int) -> None:
        self.id = id

    def is_gone(self) -> bool:
        return False


class CallerGone(Exception):
    """The client disconnected while its call was waiting; nobody is left to answer."""


class _Live:
    """A value the server has unpickled, with its pickle cached until it changes."""

    __slots__ = ("encoded", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.encoded: bytes | None = None


class Store:
    """All shared data of one server. Thread-safe: one condition guards everything."""

    #: The methods a client may call over the wire.
    EXPOSED = frozenset(
        {
            "lookup", "contains", "length", "keys", "items", "values", "copy",
            "set", "delete", "setdefault", "pop", "update", "clear", "incr", "nested",
            "ns_lookup", "ns_set", "ns_delete", "ns_items",
            "lock_acquire", "lock_release", "lock_locked",
            "edit_begin", "edit_commit", "edit_abort",
        }
    )  # fmt: skip

    def __init__(self) -> None:
        self._spaces: dict[str, dict[Any, bytes | _Live]] = {DATA: {}, NAMESPACE: {}}
        self._data = self._spaces[DATA]
        self._cond = threading.Condition()
        self._lock_owner: int | None = None
        self._editors: dict[Any, int] = {}

    # -- reads ---------------------------------------------------------------------

    def lookup(self, caller: Caller, key: Any) -> bytes | None:
        """The pickled value of ``key``, or ``None`` when it is missing."""
        with self._cond:
            entry = self._data.get(key)
            return None if entry is None else _encoded(entry)

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
            self._wait_until_not_edited(caller, key)
            self._data[key] = data

    def delete(self, caller: Caller, key: Any) -> bool:
        """Remove ``key``; False if it was not there."""
        with self._cond:
            self._wait_until_not_edited(caller, key)
            return self._data.pop(key, None) is not None

    def setdefault(self, caller: Caller, key: Any, data: bytes) -> bytes:
        with self._cond:
            self._wait_until_not_edited(caller, key)
            entry = self._data.setdefault(key, data)
            return _encoded(entry)

    def pop(self, caller: Caller, key: Any) -> bytes | None:
        with self._cond:
            self._wait_until_not_edited(caller, key)
            entry = self._data.pop(key, None)
            return None if entry is None else _encoded(entry)

    def update(self, caller: Caller, pairs: list[tuple[Any, bytes]]) -> None:
        with self._cond:
            for key, _ in pairs:
                self._wait_until_not_edited(caller, key)
            self._data.update(pairs)

    def clear(self, caller: Caller) -> None:
        with self._cond:
            self._wait(lambda: all(owner == caller.id for owner in self._editors.values()), caller)
            self._data.clear()

    def incr(self, caller: Caller, key: Any, amount: int | float) -> int | float:
        """Add ``amount`` to the number at ``key`` (missing counts as 0); return the sum."""
        check_number(amount, "the amount to add")
        with self._cond:
            self._wait_until_not_edited(caller, key)
            if key not in self._data:
                self._data[key] = _Live(amount)
                return amount
            live = self._live(DATA, key)
            check_number(live.value, describe("state", [key]))
            live.value += amount
            live.encoded = None
            return live.value  # type: ignore[no-any-return]

    def nested(
        self, caller: Caller, space: str, path: tuple[Any, ...], method: str, call_data: bytes
    ) -> bytes:
        """Call a container method on the dict or list at ``path``; return its pickled result.

        ``call_data`` is the pickled ``(args, kwargs)``; ``method`` must be one of the
        mutating or reading methods :mod:`sharedstate.nested` allows for the container.
        """
        where = place(space, path)
        args, kwargs = decode(call_data, f"the arguments of {where}.{method}()", _SERVER_HINT)
        with self._cond:
            if space == DATA:
                self._wait_until_not_edited(caller, path[0])
            live = self._live(space, path[0])
            container = live.value
            for depth, step in enumerate(path[1:], start=1):
                container = step_into(container, step, place(space, path[:depth]))
            check_method(container, method, where)
            result = apply_method(container, method, args, kwargs, where)
            live.encoded = None
            return pickle.dumps(result, protocol=PROTOCOL)

    # -- namespace -------------------------------------------------------------------

    def ns_lookup(self, caller: Caller, name: str) -> bytes | None:
        with self._cond:
            entry = self._spaces[NAMESPACE].get(name)
            return None if entry is None else _encoded(entry)

    def ns_set(self, caller: Caller, name: str, data: bytes) -> None:
        with self._cond:
            self._spaces[NAMESPACE][name] = data

    def ns_delete(self, caller: Caller, name: str) -> bool:
        with self._cond:
            return self._spaces[NAMESPACE].pop(name, None) is not None

    def ns_items(self, caller: Caller) -> list[tuple[str, bytes]]:
        with self._cond:
            return [(name, _encoded(entry)) for name, entry in self._spaces[NAMESPACE].items()]

    # -- the shared lock ---------------------------------------------------------------

    def lock_acquire(self, caller: Caller, timeout: float | None) -> bool:
        """Take the lock for ``caller``; wait at most ``timeout`` seconds (None: forever)."""
        with self._cond:
            if self._lock_owner == caller.id:
                raise LockError(
                    "this thread already holds state.lock, which is not reentrant; "
                    "release it before acquiring it again"
                )
            if not self._wait(lambda: self._lock_owner is None, caller, timeout):
                return False
            self._lock_owner = caller.id
            return True

    def lock_release(self, caller: Caller) -> None:
        with self._cond:
            if self._lock_owner != caller.id:
                holder = "nobody" if self._lock_owner is None else "another thread or process"
                raise LockError(
                    f"state.lock.release() by a thread that does not hold it (held by {holder}); "
                    "release the lock from the thread that acquired it"
                )
            self._lock_owner = None
            self._cond.notify_all()

    def lock_locked(self, caller: Caller) -> bool:
        return self._lock_owner is not None

    # -- edits: read-modify-write of one key ---------------------------------------------

    def edit_begin(
        self, caller: Caller, key: Any, default: bytes | None, timeout: float | None
    ) -> bytes:
        """Reserve ``key`` for ``caller`` and return its pickled value (or ``default``).

        Other edits, ``incr`` and writes of that key wait until :meth:`edit_commit` or
        :meth:`edit_abort`, or until the caller's connection drops.
        """
        with self._cond:
            if self._editors.get(key) == caller.id:
                raise LockError(
                    f"this thread is already editing state[{key!r}]; nested edit() of the "
                    "same key would wait for itself forever"
                )
            if not self._wait(lambda: key not in self._editors, caller, timeout):
                raise Timeout(
                    f"state[{key!r}] was being edited by another client for more than "
                    f"{timeout} s; try again, or raise the timeout",
                    key=key,
                )
            entry = self._data.get(key)
            if entry is None and default is None:
                raise KeyNotFound(key)
            self._editors[key] = caller.id
            return default if entry is None else _encoded(entry)  # type: ignore[return-value]

    def edit_commit(self, caller: Caller, key: Any, data: bytes) -> None:
        with self._cond:
            self._end_edit(caller, key)
            self._data[key] = data

    def edit_abort(self, caller: Caller, key: Any) -> None:
        with self._cond:
            if self._editors.get(key) == caller.id:
                self._end_edit(caller, key)

    def _end_edit(self, caller: Caller, key: Any) -> None:
        if self._editors.get(key) != caller.id:
            raise LockError(
                f"no edit of state[{key!r}] is open in this thread (its connection may have "
                "dropped, which ends the edit); the new value was not written",
                key=key,
            )
        del self._editors[key]
        self._cond.notify_all()

    # -- housekeeping ----------------------------------------------------------------------

    def release_all(self, caller: Caller) -> list[str]:
        """Free the lock and the edits ``caller`` holds; say what was freed."""
        released = []
        with self._cond:
            if self._lock_owner == caller.id:
                self._lock_owner = None
                released.append("state.lock")
            for key, owner in list(self._editors.items()):
                if owner == caller.id:
                    del self._editors[key]
                    released.append(f"the edit of state[{key!r}]")
            if released:
                self._cond.notify_all()
        return released

    def stats(self) -> dict[str, Any]:
        """Counts for ``sharedstate status``."""
        with self._cond:
            return {
                "keys": len(self._data),
                "namespace_attributes": len(self._spaces[NAMESPACE]),
                "lock_holder": self._lock_owner,
                "open_edits": len(self._editors),
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
        live = _Live(decode(entry, place(space, (key,)), _SERVER_HINT))
        entries[key] = live
        return live

    def _wait_until_not_edited(self, caller: Caller, key: Any) -> None:
        if self._editors:
            self._wait(lambda: self._editors.get(key, caller.id) == caller.id, caller)

    def _wait(
        self, ready: Callable[[], bool], caller: Caller, timeout: float | None = None
    ) -> bool:
        """Wait (holding ``self._cond``) until ``ready()``; False if ``timeout`` passes first.

        Checks every :data:`WAIT_POLL_SECONDS` that the caller is still connected, so a
        client that gave up does not end up owning the lock or an edit.
        """
        if ready():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            slice_ = WAIT_POLL_SECONDS
            if deadline is not None:
                slice_ = min(slice_, deadline - time.monotonic())
                if slice_ <= 0:
                    return False
            self._cond.wait(slice_)
            if ready():
                return True
            if caller.is_gone():
                raise CallerGone


def _encoded(entry: bytes | _Live) -> bytes:
    if isinstance(entry, bytes):
        return entry
    if entry.encoded is None:
        entry.encoded = pickle.dumps(entry.value, protocol=PROTOCOL)
    return entry.encoded
