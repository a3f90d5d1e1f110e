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
import operator
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, SupportsIndex, overload

from ..codec import check_key, checked_pairs, encode
from ..errors import IndexOutOfRange, InvalidArgument, KeyNotFound, ValueTooLarge, WrongType
from .writethrough import STALE, WriteThrough

if TYPE_CHECKING:
    from ..backends import Transport

_MISSING: Any = object()


def wrap(transport: Transport, space: str, path: tuple[Any, ...], value: Any) -> Any:
    """A view for a dict or list read from ``path``; other values are returned as they are."""
    if type(value) is dict:
        return SharedDict._top(transport, space, path, value)
    if type(value) is list:
        return SharedList._top(transport, space, path, value)
    return value


def _child(parent: WriteThrough, step: Any, value: Any) -> Any:
    """The view of ``value``, found at ``step`` in ``parent``'s copy: one per object, so
    ``v[k] is v[k]``; other values are returned as they are."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return value
    view = parent._views.get(id(value))
    if view is None or view._origin is not value:
        maker = SharedDict._make if kind is dict else SharedList._make
        view = maker(parent._transport, parent._space, parent, step, value, parent._views)
        parent._views[id(value)] = view
    elif view._parent is parent:
        view._step = step
    return view


class SharedDict(WriteThrough, dict[Any, Any]):
    """A dict inside the state: a dict holding the fetched copy; writes go to the server.

    ``v[k]``, ``v.get(k)`` and ``v.setdefault(k, d)`` give views of nested dicts and
    lists; iteration, ``keys()``, ``values()``, ``items()``, ``dict(v)``, ``v | other``,
    ``.copy()`` and pickling give plain data::

        cfg = state["cfg"]
        cfg["db"]["port"] = 5432        # one round trip: changes the port on the server
        plain = dict(cfg)               # plain data: changing it never reaches the server
    """

    __slots__ = ("__weakref__", "_origin", "_parent", "_space", "_step", "_transport", "_views")

    def __new__(cls, *args: Any, **kwargs: Any) -> dict[Any, Any]:  # type: ignore[misc]
        """``SharedDict(...)`` makes a plain dict: a view only comes from reading the state.

        So code that rebuilds a container as ``type(v)(...)`` (``dataclasses.asdict``...)
        gets plain data, as conversions do.
        """
        return dict(*args, **kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "a SharedDict can't be re-initialised: it is a view of a dict in the state; "
            "assign to it (v.clear(); v.update(...)) or store a new dict: state[key] = {...}"
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
        parent: WriteThrough | None,
        step: Any,
        value: dict[Any, Any],
        views: weakref.WeakValueDictionary[int, WriteThrough],
    ) -> SharedDict:
        view = dict.__new__(cls)
        dict.update(view, value)
        view._transport, view._space, view._views = transport, space, views
        view._parent, view._step = parent, step
        view._origin = None if parent is None else value
        return view

    def _step_of(self, child: WriteThrough) -> Any:
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
        return _child(self, key, value)

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            value = dict.__getitem__(self, key)
        except KeyError:
            return default
        except TypeError:
            check_key(key, self._where_later)
            raise
        return _child(self, key, value)

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
        self._apply(lambda local_copy: dict.__setitem__(local_copy, key, sent))

    def __delitem__(self, key: Any) -> None:
        check_key(key, self._where_later)
        self._write("__delitem__", (key,))
        self._apply(lambda local_copy: dict.pop(local_copy, key, None))

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """Like ``dict.setdefault``; a dict or list value comes back as an attached view."""
        check_key(key, self._where_later)
        value, _ = self._write("setdefault", (key, default))
        if not dict.__contains__(self, key):
            self._apply(lambda local_copy: dict.__setitem__(local_copy, key, value))
        return _child(self, key, dict.get(self, key, value))

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        check_key(key, self._where_later)
        args = (key,) if default is _MISSING else (key, default)
        value, _ = self._write("pop", args)
        self._apply(lambda local_copy: dict.pop(local_copy, key, None))
        return value

    def popitem(self) -> tuple[Any, Any]:
        (key, value), _ = self._write("popitem", ())
        self._apply(lambda local_copy: dict.pop(local_copy, key, None))
        return key, value

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        changes = dict(checked_pairs(other, kwargs, self._where_later))
        if changes:
            _, (sent,) = self._write("update", (changes,), keep=True)
            self._apply(lambda local_copy: dict.update(local_copy, sent))

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
        self._apply(lambda local_copy: dict.__setitem__(local_copy, key, value))
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


class SharedList(WriteThrough, list[Any]):
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

    def __new__(cls, *args: Any, **kwargs: Any) -> list[Any]:  # type: ignore[misc]
        """``SharedList(...)`` makes a plain list: a view only comes from reading the state."""
        return list(*args, **kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "a SharedList can't be re-initialised: it is a view of a list in the state; "
            "assign to it (v[:] = ...) or store a new list: state[key] = [...]"
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
        parent: WriteThrough | None,
        step: Any,
        value: list[Any],
        views: weakref.WeakValueDictionary[int, WriteThrough],
    ) -> SharedList:
        view = list.__new__(cls)
        list.extend(view, value)
        view._transport, view._space, view._views = transport, space, views
        view._parent, view._step = parent, step
        view._origin = None if parent is None else value
        return view

    def _step_of(self, child: WriteThrough) -> Any:
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
            raise InvalidArgument(f"{self._where_at(index)}: {error}") from None
        except TypeError:
            raise WrongType(
                f"{self._where_at(index)}: slice indices must be integers or None"
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
        return _child(self, position, list.__getitem__(self, position))

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
        self._apply(lambda local_copy: list.__setitem__(local_copy, position, sent))

    def _set_slice(self, index: slice, values: Any) -> None:
        items = self._materialize(values, lambda: f"{self._where_at(index)} = ...")
        target, count = self._slice(index)
        if target.step is not None and len(items) != count:
            raise InvalidArgument(
                f"attempt to assign sequence of size {len(items)} to extended slice of size "
                f"{count} ({self._where_at(index)})"
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
        self._apply(lambda local_copy: list.__setitem__(local_copy, target, sent))

    def __delitem__(self, index: SupportsIndex | slice) -> None:
        if isinstance(index, slice):
            target, count = self._slice(index)
            if count == 0:
                return
            checked = (target, list.__getitem__(self, target))
            self._write("__delitem__", (target,), position=checked)
            self._apply(lambda local_copy: list.__delitem__(local_copy, target))
            return
        position = self._position(index)
        held = list.__getitem__(self, position)
        self._write("__delitem__", (position,), position=(position, held))
        self._apply(lambda local_copy: list.__delitem__(local_copy, position))

    def append(self, value: Any) -> None:
        _, (sent,) = self._write("append", (value,), keep=True)
        self._apply(lambda local_copy: list.append(local_copy, sent))

    def extend(self, values: Iterable[Any]) -> None:
        """Append every item of ``values``, in one write.

        An iterator is read to its end before anything is sent (a write is sent whole),
        or until its items pickle past ``SHAREDSTATE_MAX_VALUE_BYTES``: then
        :class:`ValueTooLarge` is raised and nothing is written.
        """
        items = self._materialize(values, lambda: f"{self._where}.extend()")
        if items:
            _, (sent,) = self._write("extend", (items,), keep=True)
            self._apply(lambda local_copy: list.extend(local_copy, sent))

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
        self._apply(lambda local_copy: list.__imul__(local_copy, count))
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
        self._apply(lambda local_copy: list.insert(local_copy, position, sent))

    def pop(self, index: SupportsIndex = _MISSING) -> Any:
        """Remove and return the item at ``index``; without one, the server's last item."""
        if index is _MISSING:
            value, _ = self._write("pop", ())
            self._apply(list.pop)
            return value
        position = self._position(index)
        held = list.__getitem__(self, position)
        value, _ = self._write("pop", (position,), position=(position, held))
        self._apply(lambda local_copy: list.pop(local_copy, position))
        return value

    def remove(self, value: Any) -> None:
        self._write("remove", (value,))
        self._apply(lambda local_copy: list.remove(local_copy, value))

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
            except STALE:
                return
            self._apply(lambda local_copy: list.__setitem__(local_copy, slice(None), ordered))
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
        self._apply(lambda local_copy: list.__setitem__(local_copy, slice(None), ordered))

    def incr(self, index: SupportsIndex, amount: int | float = 1) -> Any:
        """Atomically add ``amount`` to the number at ``index``; return the sum.

        Like every write naming a position, it raises :class:`Conflict` if the number
        there changed since this view read it: for counters several processes update,
        use a dict (``incr`` by key never conflicts).
        """
        position = self._position(index)
        held = list.__getitem__(self, position)
        value, _ = self._write("incr", (position, amount), position=(position, held))
        self._apply(lambda local_copy: list.__setitem__(local_copy, position, value))
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
