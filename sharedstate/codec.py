"""What crosses the wire: values as pickles, keys checked before they leave.

Values travel pickled on their own (``encode``), inside the request. The server keeps
them as those bytes until an operation needs the object itself (``incr``, a nested
write), so storing an instance of a class the server can't import works, and a plain
``get`` costs the server no unpickling at all.

Keys are restricted to plain hashable types (str, int, float, bytes, bool, None and
tuples of them): they are compared and hashed inside the server, where a custom
``__eq__`` or ``__hash__`` would run foreign code and could break the dict.
"""

from __future__ import annotations

import math
import pickle
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import (
    InvalidArgument,
    InvalidKey,
    ValueNotLoadable,
    ValueNotPicklable,
    ValueTooLarge,
)

PROTOCOL = pickle.HIGHEST_PROTOCOL

# The two top-level dicts of a store: the dict itself, and the Namespace's attributes.
DATA = "data"
NAMESPACE = "namespace"
_PLAIN_KEY_TYPES = (str, int, float, bytes, bool, type(None))
# Deeper tuple keys are refused: nobody needs them, and the server would have to hash,
# compare and pickle them recursively.
MAX_KEY_DEPTH = 100


@dataclass
class Contents:
    """The whole state at one moment, values pickled: what snapshots and dumps hold.

    ``expires`` maps keys of ``data`` that expire to the wall-clock time they expire at
    (a :func:`time.time` value); a key not in it never expires.
    """

    seq: int = 0
    data: dict[Any, bytes] = field(default_factory=dict)
    namespace: dict[str, bytes] = field(default_factory=dict)
    expires: dict[Any, float] = field(default_factory=dict)


# Where a value is going or coming from, for error messages: a description, the key path
# under ``state``, or a function making the description. The last two are cheap to pass
# on every call and are formatted only if something fails.
Where = str | tuple[Any, ...] | Callable[[], str]


def where_text(where: Where) -> str:
    if isinstance(where, str):
        return where
    if isinstance(where, tuple):
        return describe("state", where)
    return where()


def encode(value: Any, where: Where) -> bytes:
    """Pickle ``value``, naming ``where`` it was going if that fails."""
    try:
        return pickle.dumps(value, protocol=PROTOCOL)
    except Exception as error:
        place = where_text(where)
        if isinstance(error, RecursionError):
            # Plain data can fail too, so "make the object picklable" would mislead here.
            levels = sys.getrecursionlimit() // 2  # pickle takes about two frames a level
            reason = (
                f"it is nested too deeply to pickle, over ~{levels} levels ({error}). "
                "Store it flatter, or split it across keys."
            )
        else:
            reason = (
                f"it can't be pickled ({error}). Store plain data, or make the object picklable."
            )
        raise ValueNotPicklable(
            f"can't store {type(value).__name__} value at {place}: {reason}", where=place
        ) from error


def encode_within(value: Any, where: Where, limit: int) -> bytes:
    """Pickle ``value`` to send; refuse it if it is larger than ``limit`` bytes."""
    data = encode(value, where)
    if len(data) > limit:
        place = where_text(where)
        raise ValueTooLarge(
            f"the value for {place} is {len(data):,} bytes pickled, over the limit of "
            f"{limit:,} (SHAREDSTATE_MAX_VALUE_BYTES); it was not sent. "
            "Store it in smaller pieces, or raise the limit",
            where=place,
        )
    return data


_CLIENT_HINT = "is the module defining its class importable in this process?"


def decode(data: bytes, where: Where, hint: str = _CLIENT_HINT, what: str = "the value at") -> Any:
    """Unpickle a value read from ``where``; ``hint`` says what to do if that fails.

    ``what`` names the value in the message, before the place: "the value at
    state['cfg']", "the value passed to append() on state['log']".
    """
    try:
        return pickle.loads(data)
    except Exception as error:
        place = where_text(where)
        raise ValueNotLoadable(
            f"{what} {place} can't be unpickled ({error!r}); {hint}", where=place
        ) from error


def check_ttl(ttl: Any, what: str = "ttl") -> float:
    """``ttl`` as seconds, or :class:`InvalidArgument` unless it is a positive, finite
    int or float (no expiry is ``ttl=None``, checked by the caller)."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise InvalidArgument(
            f"{what} must be a number of seconds (int or float), not {type(ttl).__name__} "
            f"{ttl!r}; pass None for no expiry"
        )
    if isinstance(ttl, int) and ttl > 1 << 62:
        ttl = math.inf  # past any date; float() of a huge int would overflow
    if not 0 < ttl < math.inf:
        raise InvalidArgument(
            f"{what} must be more than 0 seconds and finite, not {ttl!r}; pass None for no "
            "expiry, or delete the key"
        )
    return float(ttl)


def check_key(key: Any, where: Where = "state") -> None:
    """Raise :class:`InvalidKey` unless ``key`` is plain hashable data."""
    kind = type(key)
    if kind is str or kind in _PLAIN_KEY_TYPES:
        return
    if kind is tuple:
        if all(type(part) in _PLAIN_KEY_TYPES for part in key):
            return  # a flat tuple, the usual case
        if _nested_deeper_than(key, MAX_KEY_DEPTH):
            place = where_text(where)
            raise InvalidKey(
                f"tuple key nested more than {MAX_KEY_DEPTH} levels deep can't be used in "
                f"{place}: keys must be str, int, float, bytes, bool, None, or tuples of "
                f"those, at most {MAX_KEY_DEPTH} levels deep",
                where=place,
            )
        if is_plain_key(key):  # recursive, but now known to be shallow
            return
    place = where_text(where)
    raise InvalidKey(
        f"{kind.__name__} key {key!r} can't be used in {place}: keys must be str, int, "
        "float, bytes, bool, None, or tuples of those",
        where=place,
    )


def _nested_deeper_than(key: tuple[Any, ...], limit: int) -> bool:
    # Iterative: a key nested 100,000 deep must be refused, not overflow the stack.
    pending = [(key, 1)]
    while pending:
        parts, depth = pending.pop()
        if depth > limit:
            return True
        pending += [(part, depth + 1) for part in parts if type(part) is tuple]
    return False


def is_plain_key(key: Any) -> bool:
    """Whether ``key`` is plain data (see :func:`check_key`, which also bounds its depth)."""
    if type(key) in _PLAIN_KEY_TYPES:
        return True
    return type(key) is tuple and all(is_plain_key(part) for part in key)


def checked_pairs(
    other: Any, kwargs: Mapping[str, Any], where: Where = "state"
) -> list[tuple[Any, Any]]:
    """The ``(key, value)`` pairs ``dict.update(other, **kwargs)`` would set, keys checked.

    The keys are checked before anything hashes them, so an unhashable key is an
    :class:`InvalidKey` like everywhere else, not a bare ``TypeError`` from ``dict()``.
    """
    if hasattr(other, "keys"):  # dict.update's own rule, so any mapping-like works
        pairs = [(key, other[key]) for key in other.keys()]  # noqa: SIM118
    else:
        pairs = [(key, value) for key, value in other]
    pairs += kwargs.items()
    for key, _ in pairs:
        check_key(key, where)
    return pairs


def place(space: str, path: tuple[Any, ...]) -> str:
    """Name the value at ``path`` for messages: ``state['cfg'][0]``, ``state.namespace.x``."""
    if space == NAMESPACE:
        return describe(f"state.namespace.{path[0]}", path[1:])
    return describe("state", path)


def describe(root: str, path: Iterable[Any]) -> str:
    """Name a place in the state for error messages: ``state['cfg']['db']``."""
    text = root
    for step in path:
        if isinstance(step, slice):
            text += f"[{_slice_text(step)}]"
        else:
            text += f"[{step!r}]"
    return text


def _slice_text(step: slice) -> str:
    parts = ["" if part is None else repr(part) for part in (step.start, step.stop, step.step)]
    return ":".join(parts[:2]) + (f":{parts[2]}" if step.step is not None else "")
