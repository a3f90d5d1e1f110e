"""Writes inside a stored value: walking a path, and the container methods allowed there.

``state["cfg"]["db"]["port"] = 5432`` reaches the server as one call: the path
``("cfg", "db")``, the method ``__setitem__`` and its arguments. Only dicts and lists
can be walked into and changed this way, and only with the methods listed here.
"""

from __future__ import annotations

from typing import Any

from .codec import Where, where_text
from .errors import (
    IndexOutOfRange,
    KeyNotFound,
    SharedStateError,
    ValueNotFound,
    ValueNotPicklable,
    WrongType,
)

DICT_METHODS = frozenset(
    {"__setitem__", "__delitem__", "pop", "popitem", "setdefault", "update", "clear", "incr"}
)
LIST_METHODS = frozenset(
    {
        "__setitem__", "__delitem__", "append", "extend", "insert", "pop", "remove",
        "clear", "reverse", "sort", "incr",
    }
)  # fmt: skip


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
        raise ValueNotFound(f"{where_text(where)}.{method}(): {error}") from None
    except TypeError as error:
        raise WrongType(f"{where_text(where)}.{method}(): {error}") from None


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
