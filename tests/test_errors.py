"""The error hierarchy: one root, the matching builtin, and every error survives pickle."""

from __future__ import annotations

import inspect
import pickle

import pytest

import sharedstate.errors as errors
from sharedstate.errors import KeyNotFound, ServerNotRunning, SharedStateError

ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, SharedStateError)
]


def make(cls: type[SharedStateError]) -> SharedStateError:
    if cls is KeyNotFound:
        return KeyNotFound("port", "state['cfg']")
    return cls("something failed at /tmp/x; do this", address="/tmp/x")


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_survives_pickling_with_its_context(cls: type[SharedStateError]) -> None:
    error = make(cls)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__
    assert copy.args == error.args


@pytest.mark.parametrize(
    "cls", [c for c in ERROR_CLASSES if c is not SharedStateError], ids=lambda cls: cls.__name__
)
def test_every_error_also_derives_from_a_builtin(cls: type[SharedStateError]) -> None:
    builtin_bases = [
        base for base in cls.__mro__[1:] if base.__module__ == "builtins" and base is not object
    ]
    assert any(base not in (Exception, BaseException) for base in builtin_bases)


def test_key_not_found_behaves_like_key_error() -> None:
    error = KeyNotFound("hits")
    assert isinstance(error, KeyError)
    assert error.args[0] == "hits"
    assert str(error) == "key 'hits' not found in state"


def test_context_is_available_as_attributes() -> None:
    error = ServerNotRunning("no server at /run/x", address="/run/x")
    assert error.address == "/run/x"  # type: ignore[attr-defined]
    assert isinstance(error, ConnectionError)


def test_a_missing_key_too_deep_to_repr_still_has_a_message() -> None:
    key: tuple[object, ...] = ()
    for _ in range(100_000):
        key = (key,)
    assert str(KeyNotFound(key)).startswith("key ((((")
