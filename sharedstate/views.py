"""Nested dicts and lists read from the state, whose writes go to the server.

``state["cfg"]`` fetches the whole value in one round trip. If it is a ``dict`` or a
``list`` (exactly: subclasses such as ``OrderedDict`` or ``Counter`` come back as plain
copies, like any other object), you get a view: a ``dict`` or ``list`` subclass holding
the fetched copy, whose writes are sent to the server as one path operation each
(``state["cfg"]["db"]["port"] = 5432`` is two round trips: the read of
``state["cfg"]`` and the write) and then applied to the copy, so the view shows your
own changes. Other processes' changes appear when you read ``state["cfg"]`` again.

The rule: **reading by key or index** (``v[k]``, ``v.get(k)``, ``v.setdefault(k, d)``)
gives a view whose writes reach the server; **everything else** (iteration,
``keys()``/``values()``/``items()``, ``dict(v)``, ``list(v)``, ``{**v}``, slices, ``+``,
``*``, ``|``, ``.copy()``, pickling, ``json.dumps(v)``, returning it from a Flask view)
gives plain data that never writes back. As for any dict or list, those are shallow:
the dicts and lists inside them are this view's own copies, so changing them changes
what this view object shows, never the server. ``.copy()`` (and ``copy.deepcopy``)
give independent deep copies.

A view holds only what went over the wire: a value you store is pickled once, and the
view keeps the copy decoded from those very bytes, never your object (or another view).

Writes that name a list position (a path through ``users[0]``, ``users[2] = x``,
``del users[2]``, ``users.pop(2)``, ``users.insert(2, x)``, slices, ``users.incr(2)``,
``users.sort(key=...)``) carry what this view read there, and the server refuses them
with :class:`Conflict` if another process moved or changed that element since: a write
lands on the element you indexed or nowhere. Writes by key, ``append``, ``extend``,
``insert(0, x)``, ``pop()``, ``remove(x)``, ``clear``, ``reverse`` and ``sort()``
without a key never conflict.
"""

from __future__ import annotations

import copy
import itertools
import operator
import pickle
import weakref
from collections.abc import Callable, Iterable
from typing import Any, SupportsIndex, overload

from .codec import Where, check_key, checked_pairs, decode, encode, place
from .errors import (
    Conflict,
    IndexOutOfRange,
    InvalidArgument,
    KeyNotFound,
    ValueNotPicklable,
    ValueTooLarge,
    WrongType,
)
from .transport import Transport

_MISSING: Any = object()
_CHUNK = 1024  # items read from an iterator between two checks of its size

# After the server applied a write that names no position, the view applies it to its
# own copy too. If that copy is stale (another process changed the value since it was
# read), the step may not fit (pop() of a list that is empty here); the server's result
# is what counts, so a failed local step is skipped.
_STALE = (LookupError, TypeError, ValueError)


def wrap(transport: Transport, space: str, path: tuple[Any, ...], value: Any) -> Any:
    """A view for a dict or list read from ``path``; other values are returned as they are."""
    if type(value) is dict:
        return SharedDict._top(transport, space, path, value)
    if type(value) is list:
        return SharedList._top(transport, space, path, value)
    return value


class _View:
    """What dict and list views share: where the value is, and how writes are sent.

    A view made by reading ``parent[step]`` keeps ``_origin``, the object in the
    parent's copy it was made from, and applies each of its writes to that object too,
    so the parent's copy stays right. Its path is worked out at each write: a list
    element is found where it is now (its list may have been reordered through the
    parent), and a view whose origin is no longer in its parent's copy refuses writes.
    The top-level view has no parent; its ``_step`` holds its whole path.
    """

    __slots__ = ()

    _transport: Transport
    _space: str
    _parent: _View | None
    _step: Any
    _origin: Any
    _views: weakref.WeakValueDictionary[int, _View]

    # -- where the value is ------------------------------------------------------------

    def _steps(self) -> tuple[Any, ...]:
        """The path as last known, without checking it (for messages)."""
        if self._parent is None:
            return tuple(self._step)
        return (*self._parent._steps(), self._step)

    @property
    def _where(self) -> str:
        return place(self._space, self._steps())

    def _where_later(self) -> str:  # for messages formatted only when something fails
        return self._where

    def _located(self) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
        """The path now, and the expectation for its outermost list position, if any.

        That one comparison covers everything below it, so deeper positions need none.
        """
        parent = self._parent
        if parent is None:
            return tuple(self._step), None
        path, expectation = parent._located()
        step = parent._step_of(self)
        if expectation is None and isinstance(parent, list):
            expectation = (len(path), step, self._origin)
        return (*path, step), expectation

    def _step_of(self, child: _View) -> Any:
        raise NotImplementedError

    def _detached(self, child: _View) -> Conflict:
        where = place(self._space, child._steps())
        return Conflict(
            f"{where} was replaced or removed, through this process's view of "
            f"{self._where}, after this view of it was read, so it no longer leads "
            "anywhere: read it again and retry",
            where=where,
        )

    def _child(self, step: Any, value: Any) -> Any:
        """The view of ``value``, found at ``step`` in this view's copy (one per object)."""
        kind = type(value)
        if kind is not dict and kind is not list:
            return value
        view = self._views.get(id(value))
        if view is None or view._origin is not value:
            maker = SharedDict._make if kind is dict else SharedList._make
            view = maker(self._transport, self._space, self, step, value, self._views)
            self._views[id(value)] = view
        elif view._parent is self:
            view._step = step
        return view

    # -- writing -------------------------------------------------------------------------

    def _write(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
        position: tuple[Any, Any] | None = None,
        *,
        keep: bool = False,
    ) -> tuple[Any, tuple[Any, ...]]:
        """Run ``method`` on the server's copy; return its result and ``args`` as sent.

        ``position``: ``(step, value)`` this write names in this list, with what this
        view holds there, for the server to check (unless the path already checks a
        list position above, which covers it). With ``keep``, the arguments come back
        decoded from the very bytes that were sent: what the write stores is kept as
        the server has it, never as the caller's objects (or views).
        """
        path, expectation = self._located()
        if expectation is None and position is not None:
            expectation = (len(path), *position)
        call: tuple[Any, ...] = (args, kwargs or {})
        if expectation is not None:
            call += ((expectation,),)

        def where() -> str:
            return f"{place(self._space, path)}.{method}()"

        try:
            call_data = self._transport.encode(call, where)
        except ValueNotPicklable:
            self._encode_one_by_one(path, method, args, kwargs or {})
            raise
        result = self._transport.call("nested", self._space, path, method, call_data)
        sent: tuple[Any, ...] = pickle.loads(call_data)[0] if keep else args
        return decode(result, lambda: f"the result of {where()}"), sent

    def _encode_one_by_one(
        self, path: tuple[Any, ...], method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Pickle a call's values separately, so a failure names the value and its place."""
        for where, value in self._placed_values(path, method, args):
            encode(value, where)
        for value in (*args, *kwargs.values()):
            encode(value, f"{place(self._space, path)}.{method}()")

    def _placed_values(
        self, path: tuple[Any, ...], method: str, args: tuple[Any, ...]
    ) -> Iterable[tuple[Where, Any]]:
        """The values a write stores, each with the place it was going to."""
        if method in ("__setitem__", "setdefault", "insert") and len(args) == 2:
            step, value = args
            if isinstance(step, slice):
                return [(place(self._space, (*path, step)), item) for item in value]
            return [(place(self._space, (*path, step)), value)]
        if method == "update":
            return [(place(self._space, (*path, key)), value) for key, value in args[0].items()]
        if method in ("append", "extend"):
            values = args[0] if method == "extend" else args
            return [(f"the end of {place(self._space, path)}", value) for value in values]
        return []

    def _apply(self, change: Callable[[Any], object]) -> None:
        """Make a change the server made in this view's copy and in its origin."""
        try:
            change(self)
        except _STALE:
            return  # both copies hold the same items, so the origin would fail alike
        if self._origin is not None:
            change(self._origin)

    def _materialize(self, values: Any, what: Callable[[], str]) -> list[Any]:
        """``list(values)``, reading an iterator only as far as the size limit allows.

        A write is sent whole, in one call, so an iterator is read to its end first; one
        that would pickle past ``max_value_bytes`` stops being read there.
        """
        if isinstance(values, (list, tuple, dict, set, frozenset, str, bytes, range)):
            return list(values)  # already in memory
        try:
            iterator = iter(values)
        except TypeError:
            raise WrongType(f"{what()} needs an iterable, not {type(values).__name__}") from None
        limit: int | None = getattr(self._transport, "max_value_bytes", None)
        items: list[Any] = []
        size = 0
        while chunk := list(itertools.islice(iterator, _CHUNK)):
            items += chunk
            if limit is not None:
                size += len(encode(chunk, what))
                if size > limit:
                    raise ValueTooLarge(
                        f"the values for {what()} pickle to more than {limit:,} bytes "
                        f"(SHAREDSTATE_MAX_VALUE_BYTES) after {len(items):,} items, so "
                        "nothing was sent: a write is sent whole, so the iterator is read "
                        "before anything is sent. Write in smaller batches, or raise the limit",
                        where=what(),
                    )
        return items


class SharedDict(_View, dict[Any, Any]):
    """A dict inside the state: a dict holding the fetched copy; writes go to the server.

    ``v[k]``, ``v.get(k)`` and ``v.setdefault(k, d)`` give views of nested dicts and
    lists; iteration, ``keys()``, ``values()``, ``items()``, ``dict(v)``, ``v | other``,
    ``.copy()`` and pickling give plain data::

        cfg = state["cfg"]
        cfg["db"]["port"] = 5432        # one round trip: changes the port on the server
        plain = dict(cfg)               # plain data: changing it never reaches the server
    """

    __slots__ = ("__weakref__", "_origin", "_parent", "_space", "_step", "_transport", "_views")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "SharedDict views are made by reading a dict from the state (state[key]); "
            "to store a dict, assign it: state[key] = {...}"
        )

    @classmethod
    def _top(
        cls, transport: Transport, space: str, path: tuple[Any, ...], value: dict[Any, Any]
    ) -> SharedDict:
        return cls._make(transport, space, None, path, value, weakref.WeakValueDictionary())

    @classmethod
    def _make(
        cls,
        transport: Transport,
        space: str,
        parent: _View | None,
        step: Any,
        value: dict[Any, Any],
        views: weakref.WeakValueDictionary[int, _View],
    ) -> SharedDict:
        view = dict.__new__(cls)
        dict.update(view, value)
        view._transport, view._space, view._views = transport, space, views
        view._parent, view._step = parent, step
        view._origin = None if parent is None else value
        return view

    def _step_of(self, child: _View) -> Any:
        if dict.get(self, child._step, _MISSING) is not child._origin:
            raise self._detached(child)
        return child._step

    # -- reads that give views ---------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        try:
            value = dict.__getitem__(self, key)
        except KeyError:
            raise KeyNotFound(key, self._where) from None
        except TypeError:
            # Keys are checked only once the lookup failed: a dict stored whole may hold
            # keys writes would refuse (dates, enums...), and reading those must work.
            check_key(key, self._where_later)
            raise
        return self._child(key, value)

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            value = dict.__getitem__(self, key)
        except KeyError:
            return default
        except TypeError:
            check_key(key, self._where_later)
            raise
        return self._child(key, value)

    def __contains__(self, key: object) -> bool:
        try:
            return dict.__contains__(self, key)
        except TypeError:
            check_key(key, self._where_later)  # unhashable, as in __getitem__
            raise

    # -- writes ------------------------------------------------------------------------

    def __setitem__(self, key: Any, value: Any) -> None:
        check_key(key, self._where_later)
        _, (_, sent) = self._write("__setitem__", (key, value), keep=True)
        self._apply(lambda copy: dict.__setitem__(copy, key, sent))

    def __delitem__(self, key: Any) -> None:
        check_key(key, self._where_later)
        self._write("__delitem__", (key,))
        self._apply(lambda copy: dict.pop(copy, key, None))

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """Like ``dict.setdefault``; a dict or list value comes back as an attached view."""
        check_key(key, self._where_later)
        value, _ = self._write("setdefault", (key, default))
        if not dict.__contains__(self, key):
            self._apply(lambda copy: dict.__setitem__(copy, key, value))
        return self._child(key, dict.get(self, key, value))

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        check_key(key, self._where_later)
        args = (key,) if default is _MISSING else (key, default)
        value, _ = self._write("pop", args)
        self._apply(lambda copy: dict.pop(copy, key, None))
        return value

    def popitem(self) -> tuple[Any, Any]:
        (key, value), _ = self._write("popitem", ())
        self._apply(lambda copy: dict.pop(copy, key, None))
        return key, value

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        changes = dict(checked_pairs(other, kwargs, self._where_later))
        if changes:
            _, (sent,) = self._write("update", (changes,), keep=True)
            self._apply(lambda copy: dict.update(copy, sent))

    def __ior__(self, other: Any) -> SharedDict:  # type: ignore[misc]
        self.update(other)
        return self

    def clear(self) -> None:
        self._write("clear", ())
        self._apply(dict.clear)

    def incr(self, key: Any, amount: int | float = 1) -> Any:
        """Atomically add ``amount`` to the number at ``key`` (missing: 0); return the sum."""
        check_key(key, self._where_later)
        value, _ = self._write("incr", (key, amount))
        self._apply(lambda copy: dict.__setitem__(copy, key, value))
        return value

    # -- plain copies --------------------------------------------------------------------

    def copy(self) -> dict[Any, Any]:
        """A plain, deep copy of the value as this view sees it."""
        return copy.deepcopy(dict(self))

    def __copy__(self) -> dict[Any, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[Any, Any]:
        return copy.deepcopy(dict(self), memo)

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        # Pickled as its plain value, never as a view: state["b"] = state["a"] stores data.
        return (dict, (dict(self),))

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))

    @classmethod
    def fromkeys(cls, iterable: Iterable[Any], value: Any = None, /) -> dict[Any, Any]:
        """A plain dict, as ``dict.fromkeys`` gives (a view only comes from the state)."""
        return dict.fromkeys(iterable, value)


class SharedList(_View, list[Any]):
    """A list inside the state: a list holding the fetched copy; writes go to the server.

    ``v[i]`` gives a view of a nested dict or list; iteration, slices, ``list(v)``,
    ``v + other``, ``v * n``, ``.copy()`` and pickling give plain data. A write naming a
    position raises :class:`Conflict` if another process moved or changed that element
    since it was read::

        users = state["users"]
        users[0]["name"] = "Alice"      # lands on the user read at 0, or raises Conflict
        users.append({"name": "eve"})   # never conflicts
    """

    __slots__ = ("__weakref__", "_origin", "_parent", "_space", "_step", "_transport", "_views")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "SharedList views are made by reading a list from the state (state[key]); "
            "to store a list, assign it: state[key] = [...]"
        )

    @classmethod
    def _top(
        cls, transport: Transport, space: str, path: tuple[Any, ...], value: list[Any]
    ) -> SharedList:
        return cls._make(transport, space, None, path, value, weakref.WeakValueDictionary())

    @classmethod
    def _make(
        cls,
        transport: Transport,
        space: str,
        parent: _View | None,
        step: Any,
        value: list[Any],
        views: weakref.WeakValueDictionary[int, _View],
    ) -> SharedList:
        view = list.__new__(cls)
        list.extend(view, value)
        view._transport, view._space, view._views = transport, space, views
        view._parent, view._step = parent, step
        view._origin = None if parent is None else value
        return view

    def _step_of(self, child: _View) -> Any:
        step, origin = child._step, child._origin
        if step < list.__len__(self) and list.__getitem__(self, step) is origin:
            return step
        for index, item in enumerate(list.__iter__(self)):  # moved by a reorder here
            if item is origin:
                child._step = index
                return index
        raise self._detached(child)

    def _position(self, index: Any) -> int:
        """``index`` as a position in this view's copy (negative ones counted from its end)."""
        try:
            position = operator.index(index)
        except TypeError:
            raise WrongType(
                f"list indices must be integers or slices, not {type(index).__name__}: "
                f"{self._where} is a list"
            ) from None
        length = list.__len__(self)
        if position < 0:
            position += length
        if not 0 <= position < length:
            raise IndexOutOfRange(
                f"index {index} is out of range for {self._where} (length {length})"
            )
        return position

    def _slice(self, index: slice) -> tuple[slice, int]:
        """``index`` in absolute positions of this view's copy, and how many items it selects.

        The server's list may be longer or shorter by now; the positions are the ones
        this process saw.
        """
        try:
            start, stop, step = index.indices(list.__len__(self))
        except ValueError as error:
            raise InvalidArgument(f"{self._where}[{index}]: {error}") from None
        except TypeError:
            raise WrongType(
                f"{self._where}[{index}]: slice indices must be integers or None"
            ) from None
        count = len(range(start, stop, step))
        if step == 1:
            return slice(start, max(start, stop)), count
        return slice(start, stop if stop >= 0 else None, step), count

    # -- reads that give views ---------------------------------------------------------

    @overload
    def __getitem__(self, index: SupportsIndex) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> Any:
        if isinstance(index, slice):
            return list.__getitem__(self, index)  # a plain list
        position = self._position(index)
        return self._child(position, list.__getitem__(self, position))

    # -- writes ------------------------------------------------------------------------

    @overload
    def __setitem__(self, index: SupportsIndex, value: Any) -> None: ...
    @overload
    def __setitem__(self, index: slice, value: Iterable[Any]) -> None: ...
    def __setitem__(self, index: SupportsIndex | slice, value: Any) -> None:
        if isinstance(index, slice):
            self._set_slice(index, value)
            return
        position = self._position(index)
        held = list.__getitem__(self, position)
        _, (_, sent) = self._write(
            "__setitem__", (position, value), position=(position, held), keep=True
        )
        self._apply(lambda copy: list.__setitem__(copy, position, sent))

    def _set_slice(self, index: slice, values: Any) -> None:
        items = self._materialize(values, lambda: f"{self._where}[{index}] = ...")
        target, count = self._slice(index)
        if target.step is not None and len(items) != count:
            raise InvalidArgument(
                f"attempt to assign sequence of size {len(items)} to extended slice of size "
                f"{count} ({self._where}[{index}])"
            )
        if target.step is not None and count == 0:
            return  # nothing selected, nothing given
        length = list.__len__(self)
        if count == 0 and target.start >= length:
            self.extend(items)  # at the end: lands at the end of the server's list too
            return
        if count == 0 and target.start == 0:
            checked = None  # at the front: nothing to check
        elif count == 0:  # an insertion: check the item it goes before, as insert() does
            before = slice(target.start, target.start + 1)
            checked = (before, list.__getitem__(self, before))
        else:
            checked = (target, list.__getitem__(self, target))
        _, (_, sent) = self._write("__setitem__", (target, items), position=checked, keep=True)
        self._apply(lambda copy: list.__setitem__(copy, target, sent))

    def __delitem__(self, index: SupportsIndex | slice) -> None:
        if isinstance(index, slice):
            target, count = self._slice(index)
            if count == 0:
                return
            checked = (target, list.__getitem__(self, target))
            self._write("__delitem__", (target,), position=checked)
            self._apply(lambda copy: list.__delitem__(copy, target))
            return
        position = self._position(index)
        held = list.__getitem__(self, position)
        self._write("__delitem__", (position,), position=(position, held))
        self._apply(lambda copy: list.__delitem__(copy, position))

    def append(self, value: Any) -> None:
        _, (sent,) = self._write("append", (value,), keep=True)
        self._apply(lambda copy: list.append(copy, sent))

    def extend(self, values: Iterable[Any]) -> None:
        """Append every item of ``values``, in one write.

        An iterator is read to its end before anything is sent (a write is sent whole),
        or until its items pickle past ``SHAREDSTATE_MAX_VALUE_BYTES``: then
        :class:`ValueTooLarge` is raised and nothing is written.
        """
        items = self._materialize(values, lambda: f"{self._where}.extend()")
        if items:
            _, (sent,) = self._write("extend", (items,), keep=True)
            self._apply(lambda copy: list.extend(copy, sent))

    def __iadd__(self, values: Iterable[Any]) -> SharedList:  # type: ignore[misc]
        self.extend(values)
        return self

    def __imul__(self, times: SupportsIndex) -> SharedList:
        try:
            count = operator.index(times)
        except TypeError:
            raise WrongType(
                f"can't multiply sequence by non-int of type {type(times).__name__} "
                f"({self._where} *= ...)"
            ) from None
        if count == 1:
            return self
        if count > 1:
            # The copies are references to the same items: pickled, about 5 bytes each.
            size = len(encode(list(self), self._where_later))
            size += (count - 1) * list.__len__(self) * 5
            limit: int | None = getattr(self._transport, "max_value_bytes", None)
            if limit is not None and size > limit:
                raise ValueTooLarge(
                    f"{self._where} *= {count} would make a list of about {size:,} bytes "
                    f"pickled, over the limit of {limit:,} (SHAREDSTATE_MAX_VALUE_BYTES); "
                    "nothing was changed",
                    where=self._where,
                )
        self._write("__imul__", (count,))
        self._apply(lambda copy: list.__imul__(copy, count))
        return self

    def insert(self, index: SupportsIndex, value: Any) -> None:
        """Insert ``value`` before the item at ``index``, as this view has it.

        Past the end it is appended to the server's list, wherever that ends now; at 0
        it goes to the front; in between, the item it goes before is checked
        (:class:`Conflict` if another process moved or changed it).
        """
        try:
            position = operator.index(index)
        except TypeError:
            raise WrongType(
                f"{self._where}.insert() needs an int position, not {type(index).__name__}"
            ) from None
        length = list.__len__(self)
        if position < 0:
            position = max(0, position + length)
        position = min(position, length)
        if position == length:
            _, (sent,) = self._write("append", (value,), keep=True)
        elif position == 0:
            _, (_, sent) = self._write("insert", (0, value), keep=True)
        else:
            held = list.__getitem__(self, position)
            _, (_, sent) = self._write(
                "insert", (position, value), position=(position, held), keep=True
            )
        self._apply(lambda copy: list.insert(copy, position, sent))

    def pop(self, index: SupportsIndex = _MISSING) -> Any:
        """Remove and return the item at ``index``; without one, the server's last item."""
        if index is _MISSING:
            value, _ = self._write("pop", ())
            self._apply(list.pop)
            return value
        position = self._position(index)
        held = list.__getitem__(self, position)
        value, _ = self._write("pop", (position,), position=(position, held))
        self._apply(lambda copy: list.pop(copy, position))
        return value

    def remove(self, value: Any) -> None:
        self._write("remove", (value,))
        self._apply(lambda copy: list.remove(copy, value))

    def clear(self) -> None:
        self._write("clear", ())
        self._apply(list.clear)

    def reverse(self) -> None:
        self._write("reverse", ())
        self._apply(list.reverse)

    def sort(self, *, key: Callable[[Any], Any] | None = None, reverse: bool = False) -> None:
        """Sort the list, atomically: a sort that fails leaves it as it was.

        Without a ``key`` the server sorts its list. With one, the key runs here, on
        this view's copy (no function is sent to the server), and the sorted copy
        replaces the server's list if that still equals this copy; if another process
        changed it meanwhile, :class:`Conflict`.
        """
        backwards = bool(operator.index(reverse))
        if key is None:
            self._write("sort", (), {"reverse": backwards})
            try:
                ordered = sorted(list.__iter__(self), reverse=backwards)
            except _STALE:
                return
            self._apply(lambda copy: list.__setitem__(copy, slice(None), ordered))
            return
        before = list(self)
        ordered = sorted(before, key=key, reverse=backwards)
        if list.__len__(self) != len(before) or any(
            mine is not theirs for mine, theirs in zip(list.__iter__(self), before, strict=True)
        ):
            raise InvalidArgument(
                f"{self._where} was changed while sort() ran (by its key function?), so it "
                "was not sorted"
            )
        self._write("__setitem__", (slice(None), ordered), position=(slice(None), before))
        self._apply(lambda copy: list.__setitem__(copy, slice(None), ordered))

    def incr(self, index: SupportsIndex, amount: int | float = 1) -> Any:
        """Atomically add ``amount`` to the number at ``index``; return the sum.

        Like every write naming a position, it raises :class:`Conflict` if the number
        there changed since this view read it: for counters several processes update,
        use a dict (``incr`` by key never conflicts).
        """
        position = self._position(index)
        held = list.__getitem__(self, position)
        value, _ = self._write("incr", (position, amount), position=(position, held))
        self._apply(lambda copy: list.__setitem__(copy, position, value))
        return value

    # -- plain copies --------------------------------------------------------------------

    def copy(self) -> list[Any]:
        """A plain, deep copy of the value as this view sees it."""
        return copy.deepcopy(list(self))

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return copy.deepcopy(list(self), memo)

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        # Pickled as its plain value, never as a view: state["b"] = state["a"] stores data.
        return (list, (list(self),))

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))
