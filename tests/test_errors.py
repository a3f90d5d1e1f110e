"""The error hierarchy: one root, the matching builtin, and every error survives pickle."""

from __future__ import annotations

import inspect
import pickle
import pickletools
from types import ModuleType

import pytest

import sharedstate
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


def pickled_class_path(error: Exception) -> str:
    """Where a pickle of ``error`` tells the loader to import its class from."""
    names: list[str] = []
    for opcode, argument, _ in pickletools.genops(pickle.dumps(error)):
        if opcode.name == "STACK_GLOBAL":  # module and class name, the two strings before
            return ".".join(names[-2:])
        if isinstance(argument, str):
            names.append(argument)
    raise AssertionError("no class in the pickle")


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_pickles_by_its_path_in_sharedstate_errors(cls: type[SharedStateError]) -> None:
    # The client loads what the server pickled: the path must be the defining module's,
    # whatever name the package re-exports the class under.
    assert pickled_class_path(make(cls)) == f"sharedstate.errors.{cls.__name__}"


def test_the_package_exports_every_error_itself() -> None:
    exported = {
        name: value
        for name, value in vars(sharedstate).items()
        if isinstance(value, type) and issubclass(value, SharedStateError)
    }
    assert exported == {cls.__name__: cls for cls in ERROR_CLASSES}


def test_star_import_gives_the_public_api_and_no_submodules() -> None:
    namespace: dict[str, object] = {}
    exec("from sharedstate import *", namespace)  # noqa: S102 - the behaviour under test
    namespace.pop("__builtins__")
    assert not [name for name, value in namespace.items() if isinstance(value, ModuleType)]
    client_api = {
        "SharedState", "SharedLock", "SharedNamespace", "SharedDict", "SharedList",
        "get_shared_state",
        "forget_settings",
    }  # fmt: skip
    assert set(namespace) == client_api | {cls.__name__ for cls in ERROR_CLASSES}
    assert all(namespace[name] is getattr(sharedstate, name) for name in namespace)


@pytest.mark.parametrize(
    "cls",
    [cls for cls in ERROR_CLASSES if cls is not SharedStateError],
    ids=lambda cls: cls.__name__,
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
