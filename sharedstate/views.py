"""Nested dicts and lists read from the state, whose writes go to the server.

``state["cfg"]`` fetches the whole value in one round trip. If it is a dict or a list,
you get a view: it reads from the copy just fetched (no further round trips) and
sends each write to the server as one path operation (``state["cfg"]["db"]["port"] =
5432`` is two round trips: the read of ``state["cfg"]`` and the write). Each write is
also applied to the view's copy, so the view shows your own changes; changes made by
other processes since the read appear when you read ``state["cfg"]`` again.

``.copy()`` gives plain Python objects, and pickling a view pickles its plain value, so
``state["b"] = state["a"]`` copies the data, not the view.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, MutableMapping, MutableSequence
from typing import Any, overload

from .codec import Where, check_key, checked_pairs, decode, encode, place
from .errors import IndexOutOfRange, KeyNotFound, ValueNotPicklable, WrongType
from .transport import Transport

_MISSING: Any = object()

# After the server applied a write, the view applies it to its own copy too. If that
# copy is stale (another process changed the value since it was read), the local step
# may not fit; the server's result is what counts, so a failed local step is ignored.
_stale_copy_ok = contextlib.suppress(LookupError, TypeError, ValueError)


def wrap(transport: Transport, space: str, path: tuple[Any, ...], value: Any) -> Any:
    """A view for dicts and lists; other values are returned as they are."""
    if isinstance(value, dict):
        return SharedDict(transport, space, path, value)
    if isinstance(value, list):
        return SharedList(transport, space, path, value)
    return value


class _View:
    """What dict and list views share: where the value lives, and the remote call."""

    __slots__ = ("_data", "_path", "_space", "_transport")

    def __init__(self, transport: Transport, space: str, path: tuple[Any, ...], data: Any) -> None:
        self._transport = transport
        self._space = space
        self._path = path
        self._data = data

    def _remote(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``method`` on the server's copy of this container; return its result."""
        try:
            call_data = self._transport.encode((args, kwargs), lambda: f"{self._where}.{method}()")
        except ValueNotPicklable:
            # The arguments were pickled as one tuple; the caller wants to hear which of
            # their values failed, and where it was going.
            self._encode_one_by_one(method, args, kwargs)
            raise
        result = self._transport.call("nested", self._space, self._path, method, call_data)
        return decode(result, lambda: f"the result of {self._where}.{method}()")

    def _encode_one_by_one(self, method: str, args: Any, kwargs: dict[str, Any]) -> None:
        """Pickle a call's values separately, so a failure names the value and its place."""
        for where, value in self._placed_values(method, args):
            encode(value, where)
        for value in (*args, *kwargs.values()):
            encode(value, f"{self._where}.{method}()")

    def _placed_values(self, method: str, args: Any) -> Iterator[tuple[Where, Any]]:
        """The values a write stores, each with the place it was going to."""
        if method in ("__setitem__", "setdefault", "insert") and len(args) == 2:
            step, value = args
            if isinstance(step, slice):  # a list made from the caller's iterable
                yield from ((place(self._space, (*self._path, step)), item) for item in value)
            else:
                yield place(self._space, (*self._path, step)), value
        elif method == "update":
            for key, value in args[0].items():
                yield place(self._space, (*self._path, key)), value
        elif method in ("append", "extend"):
            values = args[0] if method == "extend" else args
            yield from ((f"the end of {self._where}", value) for value in values)

    def _child(self, step: Any, value: Any) -> Any:
        return wrap(self._transport, self._space, (*self._path, step), value)

    @property
    def _where(self) -> str:
        return place(self._space, self._path)

    def _where_later(self) -> str:  # for messages formatted only when something fails
        return self._where

    def copy(self) -> Any:
        """A plain, deep copy of the value as this view sees it."""
        return copy.deepcopy(self._data)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its plain value (rebuilt with a shallow copy.copy, which any
        # process can import), never as a view.
        return (copy.copy, (self._data,))

    def __eq__(self, other: object) -> bool:
        return bool(self._data == (other._data if isinstance(other, _View) else other))

    def __repr__(self) -> str:
        return repr(self._data)

    __hash__ = None  # type: ignore[assignment]


class SharedDict(_View, MutableMapping[Any, Any]):
    """A dict inside the state: reads from the fetched copy, writes go to the server."""

    __slots__ = ()

    def __getitem__(self, key: Any) -> Any:
        try:
            value = self._data[key]
        except KeyError:
            raise KeyNotFound(key, self._where) from None
        except TypeError:
            # Keys are checked only once the lookup failed: a dict stored whole may hold
            # keys writes would refuse (dates, enums...), and reading those must work.
            check_key(key, self._where_later)
            raise
        return self._child(key, value)

    def __setitem__(self, key: Any, value: Any) -> None:
        check_key(key, self._where_later)
        self._remote("__setitem__", key, value)
        self._data[key] = value

    def __delitem__(self, key: Any) -> None:
        check_key(key, self._where_later)
        self._remote("__delitem__", key)
        self._data.pop(key, None)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._data
        except TypeError:
            check_key(key, self._where_later)  # unhashable, as in __getitem__
            raise

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        check_key(key, self._where_later)
        args = (key,) if default is _MISSING else (key, default)
        value = self._remote("pop", *args)
        self._data.pop(key, None)
        return value

    def popitem(self) -> tuple[Any, Any]:
        key, value = self._remote("popitem")
        self._data.pop(key, None)
        return key, value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        check_key(key, self._where_later)
        value = self._remote("setdefault", key, default)
        self._data.setdefault(key, value)
        return self._child(key, value)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        changes = dict(checked_pairs(other, kwargs, self._where_later))
        self._remote("update", changes)
        self._data.update(changes)

    def clear(self) -> None:
        self._remote("clear")
        self._data.clear()

    def incr(self, key: Any, amount: int | float = 1) -> Any:
        """Atomically add ``amount`` to the number at ``key`` (missing: 0); return the sum."""
        check_key(key, self._where_later)
        value = self._remote("incr", key, amount)
        self._data[key] = value
        return value


class SharedList(_View, MutableSequence[Any]):
    """A list inside the state: reads from the fetched copy, writes go to the server."""

    __slots__ = ()

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return copy.deepcopy(self._data[index])
        try:
            value = self._data[index]
        except IndexError:
            raise IndexOutOfRange(
                f"index {index} is out of range for {self._where} (length {len(self._data)})"
            ) from None
        except TypeError:
            raise WrongType(
                f"{self._where} is a list; index it with an int or a slice, not {index!r}"
            ) from None
        return self._child(index, value)

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            value = list(value)
        self._remote("__setitem__", index, value)
        with _stale_copy_ok:
            self._data[index] = value

    def __delitem__(self, index: Any) -> None:
        self._remote("__delitem__", index)
        with _stale_copy_ok:
            del self._data[index]

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[Any]:
        for index, value in enumerate(self._data):
            yield self._child(index, value)

    def __contains__(self, value: object) -> bool:
        return value in self._data

    def insert(self, index: int, value: Any) -> None:
        self._remote("insert", index, value)
        self._data.insert(index, value)

    def append(self, value: Any) -> None:
        self._remote("append", value)
        self._data.append(value)

    def extend(self, values: Iterable[Any]) -> None:
        values = list(values)
        self._remote("extend", values)
        self._data.extend(values)

    def __iadd__(self, values: Iterable[Any]) -> SharedList:
        self.extend(values)
        return self

    def pop(self, index: int = -1) -> Any:
        value = self._remote("pop", index)
        with _stale_copy_ok:
            del self._data[index]
        return value

    def remove(self, value: Any) -> None:
        self._remote("remove", value)
        with _stale_copy_ok:
            self._data.remove(value)

    def clear(self) -> None:
        self._remote("clear")
        self._data.clear()

    def reverse(self) -> None:
        self._remote("reverse")
        self._data.reverse()

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        self._remote("sort", key=key, reverse=reverse)
        with _stale_copy_ok:
            self._data.sort(key=key, reverse=reverse)

    def incr(self, index: int, amount: int | float = 1) -> Any:
        """Atomically add ``amount`` to the number at ``index``; return the sum."""
        value = self._remote("incr", index, amount)
        with _stale_copy_ok:
            self._data[index] = value
        return value
