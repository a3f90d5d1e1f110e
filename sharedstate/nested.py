"""Writes inside a stored value: walking a path, and the container methods allowed there.

``state["cfg"]["db"]["port"] = 5432`` reaches the server as one call: the path
``("cfg", "db")``, the method ``__setitem__`` and its arguments. Only dicts and lists
can be walked into and changed this way, and only with the methods listed here.

A write that names list positions (a path through ``users[0]``, ``del users[2]``...)
also carries what the client read there: an *expectation* ``(depth, step, value)``
says that ``container[step]`` of the container ``depth`` steps down the path must equal
``value``. If another process moved or changed that element since, the write would
land on a different one, so it is refused with :class:`Conflict` instead.
"""

from __future__ import annotations

import functools
import pickle
from typing import Any

from .codec import PROTOCOL, Where, place, where_text
from .errors import (
    Conflict,
    IndexOutOfRange,
    InvalidArgument,
    KeyNotFound,
    SharedStateError,
    ValueNotFound,
    ValueNotPicklable,
    ValueTooLarge,
    WrongType,
)
from .protocol import MAX_REQUEST_BYTES

DICT_METHODS = frozenset(
    {"__setitem__", "__delitem__", "pop", "popitem", "setdefault", "update", "clear", "incr"}
)
LIST_METHODS = frozenset(
    {
        "__setitem__", "__delitem__", "append", "extend", "insert", "pop", "remove",
        "clear", "reverse", "sort", "incr", "__imul__",
    }
)  # fmt: skip

# The longest list ``*=`` may make: its references alone take a GiB in the server.
MAX_REPEATED_ITEMS = MAX_REQUEST_BYTES // 8

_MISSING: Any = object()


def unpack_call(call: Any, where: Where) -> tuple[tuple[Any, ...], dict[str, Any], tuple[Any, ...]]:
    """``(args, kwargs, expectations)`` from a call's decoded data.

    Each expectation is ``(depth, step, value)``: the container ``depth`` steps down the
    path (1: the stored value itself) must hold ``value`` at ``step``, an int or a
    slice. Older clients (and the journals they left) send ``(args, kwargs)``: none.
    """
    if type(call) is tuple and len(call) in (2, 3):
        args, kwargs, *more = call
        expectations = more[0] if more else ()
        if (
            type(args) is tuple
            and type(kwargs) is dict
            and type(expectations) is tuple
            and all(_is_expectation(item) for item in expectations)
        ):
            return args, kwargs, expectations
    raise WrongType(
        f"the call data of {where_text(where)} is not (args, kwargs[, expectations]); "
        "send nested writes through the views of sharedstate"
    )


def _is_expectation(item: Any) -> bool:
    return (
        type(item) is tuple
        and len(item) == 3
        and type(item[0]) is int
        and (type(item[1]) is int or type(item[1]) is slice)
    )


def walk(root: Any, space: str, path: tuple[Any, ...], expectations: tuple[Any, ...]) -> Any:
    """The container at ``path``, where ``root`` is the value of ``path[0]``.

    On the way down, each expectation is checked at its depth, the last depth being the
    container itself (for the positions the method names).
    """
    container = root
    for depth in range(1, len(path) + 1):
        for at, step, value in expectations:
            if at == depth:
                check_expectation(container, step, value, space, path[:depth])
        if depth < len(path):
            where = functools.partial(place, space, path[:depth])
            container = step_into(container, path[depth], where)
    return container


def check_expectation(
    container: Any, step: Any, value: Any, space: str, path: tuple[Any, ...]
) -> None:
    """Raise :class:`Conflict` unless the list ``container`` holds ``value`` at ``step``."""
    try:
        found = container[step] if isinstance(container, list) else _MISSING
    except IndexError:
        found = _MISSING
    if found is _MISSING or not _same(found, value):
        at = path if step == slice(None) else (*path, step)
        where = place(space, at)
        raise Conflict(
            f"{where} changed since you read it (another process moved or changed it), so "
            "the write was refused rather than applied to what is there now: read it "
            "again and retry",
            where=where,
        )


def _same(found: Any, expected: Any) -> bool:
    """``found == expected``, also for values that are not equal to themselves (NaN) or
    that don't answer ``==`` with a bool (numpy arrays): those compare by their pickles."""
    try:
        if found == expected:
            return True
    except Exception:  # noqa: S110 (any __eq__ may fail; the pickles decide then)
        pass
    try:
        return pickle.dumps(found, PROTOCOL) == pickle.dumps(expected, PROTOCOL)
    except Exception:
        return False


def step_into(container: Any, step: Any, where: Where) -> Any:
    """``container[step]``, with an error naming ``where`` when that is impossible."""
    if isinstance(container, dict):
        try:
            return container[step]
        except KeyError:
            raise KeyNotFound(step, where_text(where)) from None
    if isinstance(container, list):
        if type(step) is not int:
            raise WrongType(f"{where_text(where)} is a list; index it with an int, not {step!r}")
        try:
            return container[step]
        except IndexError:
            raise IndexOutOfRange(
                f"index {step} is out of range for {where_text(where)} (length {len(container)})"
            ) from None
    kind = type(container).__name__
    raise WrongType(
        f"{where_text(where)} is a {kind}, not a dict or list, so {step!r} can't be looked up in it"
    )


def check_method(container: Any, method: str, where: Where) -> None:
    """Refuse anything but the listed methods of a dict or list."""
    if isinstance(container, dict):
        allowed = DICT_METHODS
    elif isinstance(container, list):
        allowed = LIST_METHODS
    else:
        kind = type(container).__name__
        raise WrongType(
            f"{where_text(where)} is a {kind}; only dicts and lists can be changed in place. "
            "Use state.edit() to change other objects"
        )
    if method not in allowed:
        raise WrongType(
            f"{method}() is not an operation on {where_text(where)}, a {type(container).__name__}"
        )


# How deep a stored value may become through nested writes. Pickle recurses once per
# level and gives up near 500 levels on CPython 3.11; past that, the value could be
# neither read nor saved in a snapshot. Plain writes need no check: the client pickled
# the value already.
MAX_NESTING = 300


def check_nesting(path: tuple[Any, ...], args: Any, kwargs: Any, where: Where) -> None:
    """Refuse arguments that would nest the value at ``path`` deeper than :data:`MAX_NESTING`."""
    room = MAX_NESTING - len(path)
    if _nests_deeper_than((args, kwargs), room):  # the pair itself is one level
        raise ValueNotPicklable(
            f"this write into {where_text(where)} would nest the stored value more than "
            f"{MAX_NESTING} levels deep, too deep to pickle reliably; store it flatter",
            where=where_text(where),
        )


def _nests_deeper_than(value: Any, limit: int) -> bool:
    # Iterative, so a deep value can't overflow the stack of the check itself.
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if type(item) in (list, tuple, set, frozenset):
            children: Any = item
        elif type(item) is dict:
            children = [*item.keys(), *item.values()]
        else:
            continue
        if depth >= limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def apply_method(container: Any, method: str, args: Any, kwargs: Any, where: Where) -> Any:
    """Run an allowed ``method`` on ``container``; turn its errors into ours."""
    try:
        if method == "incr":
            return _incr(container, *args, where=where)
        if method == "sort":
            # Sorted aside and assigned only on success: list.sort() leaves a list it
            # failed to sort (a comparison raised) partly sorted, live and on replay.
            container[:] = sorted(container, **kwargs)
            return None
        if method == "__imul__":
            _check_repeat(container, *args, where=where)
            container *= args[0]
            return None
        return getattr(container, method)(*args, **kwargs)
    except SharedStateError:
        raise
    except KeyError as error:
        if method == "popitem":
            raise KeyNotFound("popitem(): the dict is empty", where_text(where)) from None
        raise KeyNotFound(error.args[0] if error.args else None, where_text(where)) from None
    except IndexError as error:
        raise IndexOutOfRange(f"{where_text(where)}.{method}(): {error}") from None
    except ValueError as error:
        if method == "remove":
            raise ValueNotFound(f"{where_text(where)}.{method}(): {error}") from None
        raise InvalidArgument(f"{where_text(where)}.{method}(): {error}") from None
    except TypeError as error:
        raise WrongType(f"{where_text(where)}.{method}(): {error}") from None


def _check_repeat(container: list[Any], times: Any, *, where: Where) -> None:
    """Refuse ``*=`` that would make a list too long to keep (the items are references)."""
    if type(times) is not int:
        return  # fails in the operation itself
    items = len(container) * times
    if items > MAX_REPEATED_ITEMS:
        raise ValueTooLarge(
            f"{where_text(where)} *= {times} would make a list of {items:,} items, more than "
            f"{MAX_REPEATED_ITEMS:,} (a GiB of references in the server); nothing was changed"
        )


def _incr(container: Any, key: Any, amount: Any, *, where: Where) -> Any:
    def place() -> str:  # formatted only on error
        return f"{where_text(where)}[{key!r}]"

    if isinstance(container, dict):
        current = container.get(key, 0)
    else:
        current = step_into(container, key, where)
    check_number(amount, "the amount to add")
    check_number(current, place)
    container[key] = current + amount
    return container[key]


def check_number(value: Any, what: Where) -> None:
    """``incr`` works on ints and floats only (not bools, which would quietly become ints)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = type(value).__name__
        raise WrongType(f"{where_text(what)} is a {kind}, not a number; incr needs an int or float")
