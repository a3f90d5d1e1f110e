"""Entries and keyspaces: how the store holds each value, on their own and through it."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from sharedstate.codec import DATA, NAMESPACE
from sharedstate.errors import Conflict, KeyNotFound, ValueNotLoadable
from sharedstate.server.entries import Entry, Keyspace
from sharedstate.server.reservations import LocalCaller
from sharedstate.server.store import Store

CLIENT = LocalCaller(1)


def p(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


def plain(pairs: dict[Any, bytes]) -> dict[Any, Any]:
    return {key: pickle.loads(data) for key, data in pairs.items()}


def test_a_stored_pickle_comes_back_as_the_same_bytes_object() -> None:
    keyspace = Keyspace(DATA)
    data = p({"a": 1})
    keyspace.put("k", data)
    assert keyspace.encoded("k") is data, "never unpickled nor copied"
    assert keyspace.encoded("missing") is None
    assert "k" in keyspace
    assert len(keyspace) == 1


def test_a_live_entry_keeps_its_pickle_until_its_value_changes() -> None:
    keyspace = Keyspace(DATA)
    data = p([1, 2])
    keyspace.put("k", data)
    entry = keyspace.live("k")
    assert entry.value == [1, 2]
    assert keyspace.encoded("k") is data, "unpickling alone changes nothing"
    entry.value.append(3)
    entry.changed()
    assert pickle.loads(keyspace.encoded("k") or b"") == [1, 2, 3]
    assert keyspace.live("k") is entry, "unpickled once"


def test_every_copy_out_holds_the_current_value_of_live_entries() -> None:
    keyspace = Keyspace(DATA)
    keyspace.put_many([("a", p(1)), ("b", p([1])), ("c", p("c"))])
    keyspace.live("b").value.append(2)
    keyspace.live("b").changed()
    keyspace.put_object("n", 5)
    assert plain(keyspace.encoded_dict()) == {"a": 1, "b": [1, 2], "c": "c", "n": 5}
    assert list(keyspace.encoded_dict()) == ["a", "b", "c", "n"], "insertion order kept"


def test_a_live_entry_replaced_or_removed_leaves_no_stale_value_behind() -> None:
    keyspace = Keyspace(DATA)
    keyspace.put_object("n", 1)
    keyspace.put("n", p("replaced"))
    assert plain(keyspace.encoded_dict()) == {"n": "replaced"}
    keyspace.put_object("m", 2)
    assert keyspace.pop("m") == p(2)
    assert keyspace.pop("m") is None
    keyspace.put_object("o", 3)
    assert keyspace.discard("o") is True
    assert keyspace.discard("o") is False
    assert plain(keyspace.encoded_dict()) == {"n": "replaced"}
    keyspace.put_object("p", 4)
    keyspace.clear()
    keyspace.put("p", p("after clear"))
    assert plain(keyspace.encoded_dict()) == {"p": "after clear"}


def test_load_replaces_every_entry_live_ones_too() -> None:
    keyspace = Keyspace(NAMESPACE)
    keyspace.put_object("old", 1)
    keyspace.load({"mode": p("x")})
    assert plain(keyspace.encoded_dict()) == {"mode": "x"}
    assert keyspace.keys() == ["mode"]


def test_a_missing_key_or_an_unloadable_value_is_a_clear_error() -> None:
    keyspace = Keyspace(NAMESPACE)
    with pytest.raises(KeyNotFound, match="state.namespace"):
        keyspace.live("nope")
    keyspace.put("junk", b"not a pickle")
    with pytest.raises(ValueNotLoadable, match=r"state\.namespace\.junk"):
        keyspace.live("junk")
    assert keyspace.encoded("junk") == b"not a pickle", "left as it was"


def test_an_entry_holds_its_value_pickle_and_size_and_nothing_else() -> None:
    entry = Entry([1])
    assert (entry.value, entry.encoded, entry.size) == ([1], None, 0)
    assert entry.pickled() == p([1])
    assert Entry([1], p([1])).size == len(p([1]))
    with pytest.raises(AttributeError):
        entry.other = 1  # type: ignore[attr-defined]


# -- through the store -------------------------------------------------------------------


def test_incr_and_nested_writes_then_plain_writes_read_back_and_export_alike() -> None:
    store = Store()
    store.incr(CLIENT, "n", 2)
    store.set(CLIENT, "cfg", p({"db": {}}))
    store.nested(CLIENT, DATA, ("cfg", "db"), "__setitem__", p((("port", 1), {})))
    store.ns_set(CLIENT, "settings", p({"debug": False}))
    store.nested(CLIENT, NAMESPACE, ("settings",), "__setitem__", p((("debug", True), {})))
    expected = {"n": 2, "cfg": {"db": {"port": 1}}}
    assert plain(store.copy(CLIENT)) == expected
    assert plain(dict(store.items(CLIENT))) == expected
    assert [pickle.loads(data) for data in store.values(CLIENT)] == list(expected.values())
    assert plain(dict(store.ns_items(CLIENT))) == {"settings": {"debug": True}}
    contents = store.export()
    assert plain(contents.data) == expected
    assert plain(contents.namespace) == {"settings": {"debug": True}}
    store.set(CLIENT, "n", p("plain again"))
    assert plain(store.export().data)["n"] == "plain again"
    assert store.pop(CLIENT, "cfg") == p({"db": {"port": 1}})
    assert store.keys(CLIENT) == ["n"]


def test_a_refused_nested_write_leaves_the_value_and_its_pickle_as_they_were() -> None:
    store = Store()
    data = p(["a", "b"])
    store.set(CLIENT, "list", data)
    with pytest.raises(Conflict):
        store.nested(CLIENT, DATA, ("list",), "pop", p(((0,), {}, ((1, 0, "z"),))))
    assert store.lookup(CLIENT, "list") == data
