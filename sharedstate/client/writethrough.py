"""A local copy whose writes go through to one place on the server: what views share.

A view (:mod:`sharedstate.client.views`) holds a copy of a value read from the server. Each
write is sent as one nested operation on the value's path, then made in the copy too.
This module knows where a view's value is now, which list positions a write names
(and so what the server must check is still there), and how the arguments are sent and
kept: as decoded from the very bytes sent.
"""

from __future__ import annotations

import itertools
import pickle
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..codec import Where, decode, encode, place
from ..errors import Conflict, ValueNotPicklable, ValueTooLarge, WrongType

if TYPE_CHECKING:
    from ..backends import Transport

_CHUNK = 1024  # items read from an iterator between two checks of its size

# After the server applied a write that names no position, the view applies it to its
# own copy too. If that copy is stale (another process changed the value since it was
# read), the step may not fit (pop() of a list that is empty here); the server's result
# is what counts, so a failed local step is skipped.
STALE = (LookupError, TypeError, ValueError)


class WriteThrough:
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
    _parent: WriteThrough | None
    _step: Any
    _origin: Any
    _views: weakref.WeakValueDictionary[int, WriteThrough]

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

    def _where_at(self, step: Any) -> str:
        """Name ``self[step]`` for messages: ``state['l'][2]``, ``state['l'][1:3]``."""
        return place(self._space, (*self._steps(), step))

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

    def _step_of(self, child: WriteThrough) -> Any:
        raise NotImplementedError

    def _detached(self, child: WriteThrough) -> Conflict:
        where = place(self._space, child._steps())
        return Conflict(
            f"{where} was replaced or removed, through this process's view of "
            f"{self._where}, after this view of it was read, so it no longer leads "
            "anywhere: read it again and retry",
            where=where,
        )

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
        except STALE:
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
