"""CPython's own test suites for list and dict, run against views backed by a real server.

The suites are the ones shipped with the Python running the tests (``test.list_tests``
and ``test.mapping_tests``, from CPython's source release); nothing of them is copied
here. ``type2test``, the class each suite tests, stores the data it is given under a
fresh key of this test's server and reads it back: every instance is a view, and every
write a test makes goes through the server. Each suite runs twice: on views of stored
values, and on views of values stored one list deeper (``state[key]["rows"][0]``), where
every write carries the whole value as the element it expects at ``rows[0]``, and goes
through the parent views' copies.

Where a test can't apply to a view, the test is listed in ``EXCEPTIONS`` with the
reason and the exception it fails with, and marked ``xfail(strict=True)``: if it ever
passes, or fails in another way, the run fails.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from sharedstate import (
    InvalidKey,
    SharedDict,
    SharedList,
    ValueNotPicklable,
    get_shared_state,
)
from sharedstate.codec import DATA

list_tests = pytest.importorskip(
    "test.list_tests",
    reason="CPython's test package is not installed with this Python (Debian: python3.X-test)",
)
mapping_tests = pytest.importorskip(
    "test.mapping_tests",
    reason="CPython's test package is not installed with this Python (Debian: python3.X-test)",
)

_keys = itertools.count()


def _stored(cls: Any, value: Any) -> Any:
    """``value`` stored under a new key, read back from the server as a view of class ``cls``.

    (Views are only made by reading; this makes one of the suite's class, with the
    constructors sharedstate's own reads use.)
    """
    state = get_shared_state(start=False)
    key = f"cpython:{next(_keys)}"
    if not cls.nested:
        state[key] = value
        read = state[key]  # from the server
        plain = dict(read) if isinstance(read, dict) else list(read)
        return cls._top(state._transport, DATA, (key,), plain)
    state[key] = {"rows": [value]}
    rows = state[key]["rows"]
    view = cls._make(state._transport, DATA, rows, 0, list.__getitem__(rows, 0), rows._views)
    rows._views[id(view._origin)] = view
    return view


class ServerList(SharedList):
    """``type2test`` for the list suite: ``ServerList(iterable)`` is a view of a stored list."""

    nested = False

    def __new__(cls, iterable: Iterable[Any] = (), /) -> ServerList:
        return _stored(cls, list(iterable))  # type: ignore[no-any-return]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Python calls __init__ after __new__; calling it again on a view is refused.
        if getattr(self, "_made", False):
            super().__init__(*args, **kwargs)
        self._made = True


class ServerDict(SharedDict):
    """``type2test`` for the mapping suite: ``ServerDict(...)`` is a view of a stored dict."""

    nested = False

    def __new__(cls, *args: Any, **kwargs: Any) -> ServerDict:
        return _stored(cls, dict(*args, **kwargs))  # type: ignore[no-any-return]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if getattr(self, "_made", False):
            super().__init__(*args, **kwargs)
        self._made = True


class NestedServerList(ServerList):
    nested = True


class NestedServerDict(ServerDict):
    nested = True


# The tests that can't pass against a view, why, and the exception each fails with.
UNPICKLABLE = (
    "it stores instances of a class defined inside the test function, which can't be "
    "pickled, so can't be sent to a server"
)
EXCEPTIONS: dict[str, tuple[type[BaseException], str]] = {
    # -- list_tests.CommonTest
    "list.test_init": (
        TypeError,
        "it calls __init__ again on an existing list to refill it; a view can't be "
        "re-initialised (SharedList.__init__ raises TypeError; v[:] = ... does that)",
    ),
    "list.test_repr": (
        AssertionError,
        "a2.append(a2) stores a copy of the list's value, not a reference to the list "
        "itself (views are stored as data), so its repr has no [...]",
    ),
    "list.test_repr_deep": (
        ValueNotPicklable,
        "it nests 1,100 lists, deeper than a value can be pickled to reach the server",
    ),
    "list.test_remove": (ValueNotPicklable, UNPICKLABLE + " (BadCmp)"),
    "list.test_index": (ValueNotPicklable, UNPICKLABLE + " (EvilCmp)"),
    "list.test_contains_order": (ValueNotPicklable, UNPICKLABLE + " (StopCompares)"),
    # -- mapping_tests.TestHashMappingProtocol
    "mapping.test_fromkeys": (
        AssertionError,
        "fromkeys() of a view class returns a plain dict by design (a view only comes "
        "from reading the state); the test wants an instance of its subclass",
    ),
    "mapping.test_copy": (
        AssertionError,
        "copy() returns a plain dict by design (a copy never writes back); the test wants "
        "an instance of the view class",
    ),
    "mapping.test_getitem": (
        InvalidKey,
        "it uses instances of a test class as keys; keys must be plain data (str, int, "
        "float, bytes, bool, None, tuples), compared inside the server",
    ),
    "mapping.test_pop": (InvalidKey, "keys must be plain data (a BadHash key)"),
    "mapping.test_setdefault": (InvalidKey, "keys must be plain data (a BadHash key)"),
    "mapping.test_eq": (InvalidKey, "keys must be plain data (a BadCmp key)"),
    "mapping.test_repr": (
        AssertionError,
        "d[1] = d stores a copy of d's value, not a reference to d itself (views are "
        "stored as data), so its repr has no {...}",
    ),
    "mapping.test_repr_deep": (
        ValueNotPicklable,
        "it nests 1,100 dicts, deeper than a value can be pickled to reach the server",
    ),
}


def _with_exceptions(suite: str) -> Callable[[type[Any]], type[Any]]:
    """Mark each test listed for ``suite`` as a strict expected failure, with its reason."""

    def mark(cls: type[Any]) -> type[Any]:
        for qualified, (raises, reason) in EXCEPTIONS.items():
            kind, name = qualified.split(".")
            if kind != suite:
                continue
            inherited: Callable[..., Any] = getattr(cls, name)

            def test(self: Any, inherited: Callable[..., Any] = inherited) -> None:
                inherited(self)

            test.__name__ = name
            marked = pytest.mark.xfail(strict=True, raises=raises, reason=reason)(test)
            setattr(cls, name, marked)
        return cls

    return mark


@_with_exceptions("list")
@pytest.mark.usefixtures("server")
class ListSuite(list_tests.CommonTest):  # type: ignore[misc,name-defined]
    type2test = ServerList


@_with_exceptions("list")
@pytest.mark.usefixtures("server")
class NestedListSuite(list_tests.CommonTest):  # type: ignore[misc,name-defined]
    type2test = NestedServerList


@_with_exceptions("mapping")
@pytest.mark.usefixtures("server")
class MappingSuite(mapping_tests.TestHashMappingProtocol):  # type: ignore[misc,name-defined]
    type2test = ServerDict


@_with_exceptions("mapping")
@pytest.mark.usefixtures("server")
class NestedMappingSuite(mapping_tests.TestHashMappingProtocol):  # type: ignore[misc,name-defined]
    type2test = NestedServerDict
