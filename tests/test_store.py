"""The store's logic on its own: no sockets, no processes."""

from __future__ import annotations

import pickle
import sys
import threading
import types
from typing import Any

import pytest

from sharedstate.codec import DATA, NAMESPACE
from sharedstate.errors import (
    IndexOutOfRange,
    KeyNotFound,
    LockError,
    Timeout,
    ValueNotFound,
    ValueNotLoadable,
    WrongType,
)
from sharedstate.server.reservations import LocalCaller
from sharedstate.server.store import Store

from .support.processes import wait_until
from .support.stores import RecordingJournal, value_of

ALICE = LocalCaller(1)
BOB = LocalCaller(2)


def p(value: Any) -> bytes:
    return pickle.dumps(value)


def nested(store: Store, path: tuple[Any, ...], method: str, *args: Any, **kwargs: Any) -> Any:
    return pickle.loads(store.nested(ALICE, DATA, path, method, p((args, kwargs))))


def pickle_of_unimportable_class() -> bytes:
    module = types.ModuleType("not_a_module")

    class Thing:
        pass

    Thing.__module__ = module.__name__
    Thing.__qualname__ = "Thing"
    module.Thing = Thing  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        return pickle.dumps(Thing())
    finally:
        del sys.modules[module.__name__]


@pytest.fixture
def store() -> Store:
    return Store()


def test_set_lookup_delete(store: Store) -> None:
    store.set(ALICE, "a", p(1))
    assert value_of(store, "a") == 1
    assert store.contains(ALICE, "a")
    assert store.length(ALICE) == 1
    assert store.delete(ALICE, "a") is True
    assert store.delete(ALICE, "a") is False
    assert store.lookup(ALICE, "a") is None


def test_values_stay_pickled_until_an_operation_needs_them(store: Store) -> None:
    # A pickle of a class the server can't import: storing and reading it must work.
    foreign = pickle_of_unimportable_class()
    store.set(ALICE, "thing", foreign)
    assert store.lookup(ALICE, "thing") == foreign
    assert store.items(ALICE) == [("thing", foreign)]
    with pytest.raises(ValueNotLoadable, match="not_a_module"):
        store.incr(ALICE, "thing", 1)
    assert store.lookup(ALICE, "thing") == foreign


def test_incr_starts_missing_keys_at_zero_and_returns_the_sum(store: Store) -> None:
    assert store.incr(ALICE, "n", 1) == 1
    assert store.incr(ALICE, "n", 5) == 6
    assert store.incr(ALICE, "n", -2) == 4
    assert store.incr(ALICE, "f", 0.5) == 0.5
    assert value_of(store, "n") == 4


@pytest.mark.parametrize("stored", ["text", True, [1], None])
def test_incr_refuses_values_that_are_not_numbers(store: Store, stored: Any) -> None:
    store.set(ALICE, "x", p(stored))
    with pytest.raises(WrongType, match=r"state\['x'\]"):
        store.incr(ALICE, "x", 1)


def test_incr_refuses_an_amount_that_is_not_a_number(store: Store) -> None:
    with pytest.raises(WrongType, match="amount"):
        store.incr(ALICE, "x", "1")  # type: ignore[arg-type]


def test_setdefault_pop_update_clear(store: Store) -> None:
    assert pickle.loads(store.setdefault(ALICE, "a", p(1))) == 1
    assert pickle.loads(store.setdefault(ALICE, "a", p(2))) == 1
    store.update(ALICE, [("b", p(2)), ("c", p(3))])
    assert sorted(store.keys(ALICE)) == ["a", "b", "c"]
    assert pickle.loads(store.pop(ALICE, "b") or b"") == 2
    assert store.pop(ALICE, "b") is None
    store.clear(ALICE)
    assert store.length(ALICE) == 0


def test_nested_writes_reach_any_depth(store: Store) -> None:
    store.set(ALICE, "cfg", p({"db": {"hosts": ["a", "b"]}}))
    nested(store, ("cfg", "db"), "__setitem__", "port", 5432)
    nested(store, ("cfg", "db", "hosts"), "__setitem__", 1, "c")
    nested(store, ("cfg", "db", "hosts"), "append", "d")
    assert value_of(store, "cfg") == {"db": {"hosts": ["a", "c", "d"], "port": 5432}}
    assert nested(store, ("cfg", "db", "hosts"), "pop") == "d"
    assert nested(store, ("cfg", "db"), "incr", "port", 1) == 5433


def test_nested_errors_name_the_place(store: Store) -> None:
    store.set(ALICE, "cfg", p({"db": {"port": 1}, "list": [1]}))
    with pytest.raises(KeyNotFound, match=r"state\['cfg'\]"):
        nested(store, ("cfg", "missing"), "__setitem__", "x", 1)
    with pytest.raises(WrongType, match=r"state\['cfg'\]\['db'\]\['port'\] is a int"):
        nested(store, ("cfg", "db", "port"), "__setitem__", "x", 1)
    with pytest.raises(IndexOutOfRange):
        nested(store, ("cfg", "list"), "__setitem__", 5, 1)
    with pytest.raises(ValueNotFound):
        nested(store, ("cfg", "list"), "remove", 99)
    with pytest.raises(WrongType, match="not an operation"):
        nested(store, ("cfg", "list"), "__class__")
    with pytest.raises(KeyNotFound):
        nested(store, ("absent",), "__setitem__", "x", 1)


def test_namespace_is_separate_from_the_dict(store: Store) -> None:
    store.ns_set(ALICE, "cfg", p({"a": 1}))
    assert store.lookup(ALICE, "cfg") is None
    store.nested(ALICE, NAMESPACE, ("cfg",), "__setitem__", p((("b", 2), {})))
    assert pickle.loads(store.ns_lookup(ALICE, "cfg") or b"") == {"a": 1, "b": 2}
    assert store.ns_delete(ALICE, "cfg") is True
    assert store.ns_lookup(ALICE, "cfg") is None


def test_lock_belongs_to_its_caller(store: Store) -> None:
    assert store.lock_acquire(ALICE, 0) is True
    assert store.lock_acquire(BOB, 0) is False
    with pytest.raises(LockError, match="not reentrant"):
        store.lock_acquire(ALICE, 0)
    with pytest.raises(LockError, match="does not hold it"):
        store.lock_release(BOB)
    store.lock_release(ALICE)
    assert store.lock_acquire(BOB, 0) is True


def test_release_all_frees_the_lock_and_edits_of_a_caller(store: Store) -> None:
    store.set(ALICE, "k", p(1))
    store.lock_acquire(ALICE, None)
    store.edit_begin(ALICE, "k", None, None)
    assert sorted(store.release_all(ALICE)) == ["state.lock", "the edit of state['k']"]
    assert store.lock_acquire(BOB, 0) is True
    assert pickle.loads(store.edit_begin(BOB, "k", None, 0)) == 1


def test_an_edit_makes_incr_of_that_key_wait(store: Store) -> None:
    store.set(ALICE, "n", p(1))
    store.edit_begin(ALICE, "n", None, None)
    done = threading.Event()
    results = []

    def bump() -> None:
        results.append(store.incr(BOB, "n", 1))
        done.set()

    thread = threading.Thread(target=bump)
    thread.start()
    wait_until(lambda: len(store._cond._waiters) == 1)  # type: ignore[attr-defined]
    assert not done.is_set()
    store.edit_commit(ALICE, "n", p(10))
    thread.join(5)
    assert results == [11]


def test_edit_timeout_and_misuse(store: Store) -> None:
    store.set(ALICE, "k", p(1))
    store.edit_begin(ALICE, "k", None, None)
    with pytest.raises(Timeout):
        store.edit_begin(BOB, "k", None, 0.05)
    with pytest.raises(LockError, match="already editing"):
        store.edit_begin(ALICE, "k", None, None)
    with pytest.raises(LockError, match="no edit"):
        store.edit_commit(BOB, "k", p(2))
    with pytest.raises(KeyNotFound):
        store.edit_begin(BOB, "missing", None, None)


def test_replaying_the_journal_rebuilds_the_same_state(store: Store) -> None:
    journal = RecordingJournal()
    store.journal = journal
    store.set(ALICE, "a", p(1))
    store.update(ALICE, [("b", p([1, 2])), ("c", p({"x": 1})), ("d", p(4))])
    store.incr(ALICE, "n", 5)
    nested(store, ("b",), "append", 3)
    nested(store, ("c",), "__setitem__", "y", 2)
    store.setdefault(ALICE, "e", p("e"))
    store.pop(ALICE, "a")
    store.delete(ALICE, "zzz")
    store.delete_many(ALICE, ["d", "missing"])
    store.ns_set(ALICE, "mode", p("live"))
    store.edit_begin(ALICE, "n", None, None)
    store.edit_commit(ALICE, "n", p(50))
    store.restore(ALICE, [("r", p("restored"))], [], False)
    with pytest.raises(WrongType):
        store.incr(ALICE, "e", 1)  # refused before it is journaled
    copy = Store()
    for seq, method, args in journal.records:
        copy.replay(seq, method, args)
    original, rebuilt = store.export(), copy.export()
    assert rebuilt.seq == original.seq
    assert {k: pickle.loads(v) for k, v in rebuilt.data.items()} == {
        k: pickle.loads(v) for k, v in original.data.items()
    }
    assert rebuilt.namespace == original.namespace
