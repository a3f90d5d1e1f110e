"""Each operation of the state API written once, for the sync and the asyncio clients.

A command checks its arguments, pickles the values and says what to send: a
:class:`Call`, the store method and its arguments, and ``finish``, what turns the server's
result into the caller's (decoding values, raising :class:`KeyNotFound`). Sending is the
client's business: :class:`~sharedstate.client.state.SharedState` runs a call with
``finish(transport.call(...))``, :class:`~sharedstate.aio.AsyncSharedState` with ``await``.
Nothing here does I/O (redis-py's commands mixin is the model).

The two clients differ in one thing, so it is passed in: how a value read by key comes
back (``load``). The sync client gives views of dicts and lists whose writes reach the
server; the asyncio client gives plain data, and writes inside values by path
(:meth:`Commands.set_in` and the other ``*_in`` commands), as the sync client can too.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from ..codec import (
    DATA,
    Contents,
    Where,
    check_key,
    check_ttl,
    checked_pairs,
    decode,
    place,
)
from ..errors import (
    AttributeNotFound,
    ConfigError,
    InvalidArgument,
    KeyNotFound,
    WrongType,
)

MISSING: Any = object()


def _same(result: Any) -> Any:
    return result


class Call(NamedTuple):
    """One store call to make: ``method(*args)``, then ``finish(result)``.

    ``waits``: seconds the server may hold the reply on purpose (a lock or edit
    timeout), None for as long as it takes.
    """

    method: str
    args: tuple[Any, ...]
    finish: Callable[[Any], Any] = _same
    waits: float | None = 0.0


Encode = Callable[[Any, Where], bytes]
# How a value read by key comes back: (key, its pickle) -> the caller's value.
Load = Callable[[Any, bytes], Any]


class Commands:
    """The calls behind every operation of :class:`SharedState` and its asyncio twin."""

    __slots__ = ("_encode", "_load")

    def __init__(self, encode: Encode, load: Load) -> None:
        self._encode = encode
        self._load = load

    # -- the dict protocol ----------------------------------------------------------

    def getitem(self, key: Any) -> Call:
        check_key(key)
        load = self._load

        def finish(data: bytes | None) -> Any:
            if data is None:
                raise KeyNotFound(key)
            return load(key, data)

        return Call("lookup", (key,), finish)

    def get(self, key: Any, default: Any = None) -> Call:
        check_key(key)
        load = self._load
        return Call("lookup", (key,), lambda data: default if data is None else load(key, data))

    def set(self, key: Any, value: Any, ttl: float | None = None) -> Call:
        check_key(key)
        data = self._encode(value, (key,))
        if ttl is None:
            return Call("set", (key, data))
        return Call("set", (key, data, check_ttl(ttl)))

    def delete(self, key: Any) -> Call:
        check_key(key)

        def finish(existed: bool) -> None:
            if not existed:
                raise KeyNotFound(key)

        return Call("delete", (key,), finish)

    def contains(self, key: Any) -> Call:
        check_key(key)
        return Call("contains", (key,), bool)

    def length(self) -> Call:
        return Call("length", (), int)

    def keys(self) -> Call:
        return Call("keys", (), list)

    def items(self) -> Call:
        return Call("items", (), _decoded_pairs)

    def values(self) -> Call:
        return Call("items", (), lambda pairs: [value for _, value in _decoded_pairs(pairs)])

    def setdefault(self, key: Any, default: Any = None) -> Call:
        check_key(key)
        load = self._load
        data = self._encode(default, (key,))
        return Call("setdefault", (key, data), lambda stored: load(key, stored))

    def pop(self, key: Any, default: Any = MISSING) -> Call:
        check_key(key)

        def finish(data: bytes | None) -> Any:
            if data is not None:
                return decode(data, (key,))
            if default is MISSING:
                raise KeyNotFound(key)
            return default

        return Call("pop", (key,), finish)

    def update(self, other: Any = (), kwargs: Mapping[str, Any] | None = None) -> Call:
        changes = dict(checked_pairs(other, kwargs or {}))  # the last value of a key wins
        return Call("update", (self._encoded_pairs(changes),))

    def clear(self) -> Call:
        return Call("clear", ())

    # -- batches --------------------------------------------------------------------

    def get_many(self, keys: Iterable[Any]) -> Call:
        wanted = list(keys)
        for key in wanted:
            check_key(key)
        load = self._load

        def finish(found: list[bytes | None]) -> dict[Any, Any]:
            return {
                key: load(key, data)
                for key, data in zip(wanted, found, strict=True)
                if data is not None
            }

        return Call("get_many", (wanted,), finish)

    def set_many(self, mapping: Mapping[Any, Any], ttl: float | None = None) -> Call:
        changes = dict(checked_pairs(mapping, {}))
        if ttl is None:
            return Call("update", (self._encoded_pairs(changes),))
        return Call("update", (self._encoded_pairs(changes), check_ttl(ttl)))

    def delete_many(self, keys: Iterable[Any]) -> Call:
        wanted = list(keys)
        for key in wanted:
            check_key(key)
        return Call("delete_many", (wanted,), int)

    def _encoded_pairs(self, changes: dict[Any, Any]) -> list[tuple[Any, bytes]]:
        return [(key, self._encode(value, (key,))) for key, value in changes.items()]

    # -- beyond dict ----------------------------------------------------------------

    def incr(self, key: Any, amount: int | float = 1, ttl: float | None = None) -> Call:
        check_key(key)
        if ttl is None:
            return Call("incr", (key, amount))
        return Call("incr", (key, amount, check_ttl(ttl)))

    def add(self, key: Any, value: Any, ttl: float | None = None) -> Call:
        check_key(key)
        data = self._encode(value, (key,))
        return Call("add", (key, data, None if ttl is None else check_ttl(ttl)), bool)

    def expire(self, key: Any, ttl: float) -> Call:
        check_key(key)
        if isinstance(ttl, (int, float)) and not isinstance(ttl, bool) and ttl <= 0:
            return Call("expire", (key, ttl), bool)  # deletes the key, as Redis does
        return Call("expire", (key, check_ttl(ttl)), bool)

    def ttl(self, key: Any) -> Call:
        check_key(key)
        return Call("ttl", (key,), lambda seconds: None if seconds is None else float(seconds))

    def persist(self, key: Any) -> Call:
        check_key(key)
        return Call("persist", (key,), bool)

    def to_dict(self) -> Call:
        return Call("copy", (), lambda pairs: dict(_decoded_pairs(pairs.items())))

    def export(self) -> Call:
        def finish(result: Any) -> Contents:
            pairs, attributes, expires = result
            return Contents(0, dict(pairs), dict(attributes), dict(expires))

        return Call("export_all", (True,), finish)

    def pickled(self, key: Any) -> Call:
        check_key(key)

        def finish(data: bytes | None) -> bytes:
            if data is None:
                raise KeyNotFound(key)
            return bytes(data)

        return Call("lookup", (key,), finish)

    def restore(self, contents: Contents, *, replace: bool) -> Call:
        pairs = list(contents.data.items())
        for key, _ in pairs:
            check_key(key)
        attributes = list(contents.namespace.items())
        expires = list(contents.expires.items())
        return Call("restore", (pairs, attributes, replace, expires))

    # -- inside values, by path -----------------------------------------------------

    def get_in(self, path: Any, default: Any = None) -> Call:
        """The value at ``path`` (plain data), or ``default`` if any step is missing."""
        steps = _path(path, shortest=1)

        def finish(data: bytes | None) -> Any:
            if data is None:
                return default
            value = decode(data, steps[:1])
            for depth, step in enumerate(steps[1:], start=1):
                try:
                    value = value[step]
                except (KeyError, IndexError):
                    return default
                except TypeError:
                    raise WrongType(
                        f"{place(DATA, steps[:depth])} holds a {type(value).__name__}, "
                        f"which can't be indexed by {step!r}",
                        where=place(DATA, steps[:depth]),
                    ) from None
            return value

        return Call("lookup", (steps[0],), finish)

    def set_in(self, path: Any, value: Any) -> Call:
        """``state[a][b][c] = value`` in one call: ``set_in((a, b, c), value)``."""
        steps = _path(path, shortest=2)
        return self._nested(steps[:-1], "__setitem__", (steps[-1], value))

    def delete_in(self, path: Any) -> Call:
        steps = _path(path, shortest=2)
        return self._nested(steps[:-1], "__delitem__", (steps[-1],))

    def pop_in(self, path: Any, default: Any = MISSING) -> Call:
        steps = _path(path, shortest=2)
        args = (steps[-1],) if default is MISSING else (steps[-1], default)
        return self._nested(steps[:-1], "pop", args)

    def incr_in(self, path: Any, amount: int | float = 1) -> Call:
        steps = _path(path, shortest=2)
        return self._nested(steps[:-1], "incr", (steps[-1], amount))

    def append_in(self, path: Any, value: Any) -> Call:
        return self._nested(_path(path, shortest=1), "append", (value,))

    def extend_in(self, path: Any, values: Iterable[Any]) -> Call:
        return self._nested(_path(path, shortest=1), "extend", (list(values),))

    def update_in(
        self, path: Any, other: Any = (), kwargs: Mapping[str, Any] | None = None
    ) -> Call:
        steps = _path(path, shortest=1)
        changes = dict(checked_pairs(other, kwargs or {}, lambda: place(DATA, steps)))
        return self._nested(steps, "update", (changes,))

    def _nested(self, path: tuple[Any, ...], method: str, args: tuple[Any, ...]) -> Call:
        def where() -> str:
            return f"{place(DATA, path)}.{method}()"

        call_data = self._encode((args, {}), where)
        return Call(
            "nested",
            (DATA, path, method, call_data),
            lambda result: decode(result, lambda: f"the result of {where()}"),
        )

    # -- the namespace --------------------------------------------------------------

    def ns_get(self, name: str, default: Any = MISSING) -> Call:
        def finish(data: bytes | None) -> Any:
            if data is not None:
                return decode(data, f"state.namespace.{name}")
            if default is MISSING:
                raise AttributeNotFound(f"state.namespace has no attribute {name!r}", name=name)
            return default

        return Call("ns_lookup", (name,), finish)

    def ns_set(self, name: str, value: Any) -> Call:
        return Call("ns_set", (name, self._encode(value, f"state.namespace.{name}")))

    def ns_delete(self, name: str) -> Call:
        def finish(existed: bool) -> None:
            if not existed:
                raise AttributeNotFound(f"state.namespace has no attribute {name!r}", name=name)

        return Call("ns_delete", (name,), finish)

    def ns_to_dict(self) -> Call:
        def finish(pairs: list[tuple[str, bytes]]) -> dict[str, Any]:
            return {name: decode(data, f"state.namespace.{name}") for name, data in pairs}

        return Call("ns_items", (), finish)

    # -- the lock and edits: taken and freed by the client's context managers --------

    def lock_acquire(
        self, blocking: bool = True, timeout: float | None = None, lease: float | None = None
    ) -> Call:
        wait = 0.0 if not blocking else seconds_to_wait(timeout, "lock timeout")
        if lease is not None:
            lease = float(lease)
            if not 0 < lease < float("inf"):
                raise ConfigError(f"lock lease must be a positive number of seconds, not {lease}")
        return Call("lock_acquire", (wait, lease), bool, waits=wait)

    def lock_release(self) -> Call:
        return Call("lock_release", ())

    def lock_locked(self) -> Call:
        return Call("lock_locked", (), bool)

    def edit_begin(
        self, key: Any, default: Any, timeout: float | None, ttl: float | None = None
    ) -> Call:
        """Start editing ``key``; the finished call gives its value, decoded.

        ``ttl`` is the one the commit will set: checked now, before anything is held.
        """
        check_key(key)
        if ttl is not None:
            check_ttl(ttl)
        wait = seconds_to_wait(timeout, "edit timeout")
        default_data = None if default is MISSING else self._encode(default, (key,))
        return Call(
            "edit_begin", (key, default_data, wait), lambda data: decode(data, (key,)), waits=wait
        )

    def edit_commit(self, key: Any, value: Any, ttl: float | None) -> Call:
        data = self._encode(value, (key,))
        if ttl is None:
            return Call("edit_commit", (key, data))
        return Call("edit_commit", (key, data, check_ttl(ttl)))

    def edit_abort(self, key: Any) -> Call:
        return Call("edit_abort", (key,))


def _decoded_pairs(pairs: Iterable[tuple[Any, bytes]]) -> list[tuple[Any, Any]]:
    return [(key, decode(data, (key,))) for key, data in pairs]


def _path(path: Any, *, shortest: int) -> tuple[Any, ...]:
    """``path`` as a tuple of steps, the first a valid key; InvalidArgument if it isn't."""
    if not isinstance(path, (tuple, list)):
        raise InvalidArgument(
            f"a path is a tuple of steps, the key first: ('cfg', 'db', 'port'), not {path!r}"
        )
    steps = tuple(path)
    if len(steps) < shortest:
        raise InvalidArgument(
            f"this operation needs a path of at least {shortest} steps (the key, then the "
            f"place inside its value), not {steps!r}"
            + ("; to set or delete a whole key, use set() or delete()" if shortest > 1 else "")
        )
    check_key(steps[0])
    return steps


def seconds_to_wait(timeout: float | None, what: str) -> float | None:
    """A wait the caller asked for, in seconds; None (or -1, or infinity) is forever."""
    if timeout is None:
        return None
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        seconds = float("nan")
    if seconds != seconds:  # NaN
        raise ConfigError(f"{what} must be a number of seconds or None, not {timeout!r}")
    if seconds < 0 or seconds == float("inf"):
        return None
    return seconds


def load_plain(key: Any, data: bytes) -> Any:
    """A value read by key, as plain data; the error names ``key`` if it can't be loaded."""
    try:
        return pickle.loads(data)
    except Exception:
        return decode(data, (key,))  # raises, naming the key
