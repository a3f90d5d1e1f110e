"""The memory bound and each eviction policy, in the store on its own.

Sizes are counted as the store counts them (pickled size plus a per-key overhead), so
the bounds here are set from those counts, not guessed. The same rules over a real
server are in tests/test_expiry.py.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from sharedstate.codec import DATA
from sharedstate.errors import MemoryLimitReached
from sharedstate.server.entries import DEADLINE_OVERHEAD, KEY_OVERHEAD
from sharedstate.server.reservations import LocalCaller
from sharedstate.server.store import Store

from .support.stores import RecordingJournal

ALICE = LocalCaller(1)
VALUE = pickle.dumps("x" * 100, protocol=5)
PLAIN = len(VALUE) + KEY_OVERHEAD  # what a key holding VALUE counts for
EXPIRING = PLAIN + DEADLINE_OVERHEAD


def bounded(keys: int, policy: str, extra: int = 0) -> Store:
    """A store with room for ``keys`` plain keys of VALUE (plus ``extra`` bytes)."""
    store = Store(max_memory=keys * PLAIN + extra, eviction=policy)
    store.journal = RecordingJournal()
    return store


def keys_of(store: Store) -> list[Any]:
    return store.keys(ALICE)


def test_noeviction_refuses_the_write_that_would_pass_the_bound_and_loses_nothing() -> None:
    store = bounded(3, "noeviction")
    for key in ("a", "b", "c"):
        store.set(ALICE, key, VALUE)
    journaled = len(store.journal.records)  # type: ignore[union-attr]
    with pytest.raises(MemoryLimitReached) as refused:
        store.set(ALICE, "d", VALUE)
    message = str(refused.value)
    assert "SHAREDSTATE_MAX_MEMORY" in message
    assert "SHAREDSTATE_EVICTION" in message
    assert f"{3 * PLAIN:,}" in message
    assert keys_of(store) == ["a", "b", "c"]
    assert len(store.journal.records) == journaled, "nothing journaled"  # type: ignore[union-attr]
    assert store.lookup(ALICE, "a") == VALUE, "reads go on"
    store.set(ALICE, "a", VALUE)  # a write that doesn't grow the data goes through
    store.delete(ALICE, "c")
    store.set(ALICE, "d", VALUE)  # room again
    assert sorted(keys_of(store)) == ["a", "b", "d"]


@pytest.mark.parametrize(
    "write",
    [
        lambda store: store.update(ALICE, [("x", VALUE), ("y", VALUE)]),
        lambda store: store.add(ALICE, "x", VALUE),
        lambda store: store.setdefault(ALICE, "x", VALUE),
        lambda store: store.ns_set(ALICE, "x", VALUE),
        lambda store: store.restore(ALICE, [("x", VALUE)], [], False),
        lambda store: store.nested(ALICE, DATA, ("a",), "extend", pickle.dumps((([1] * 500,), {}))),
    ],
    ids=["update", "add", "setdefault", "ns_set", "restore", "nested"],
)
def test_every_growing_write_is_refused_at_the_bound(write: Any) -> None:
    store = bounded(2, "noeviction")
    store.set(ALICE, "a", pickle.dumps([], protocol=5))
    store.set(ALICE, "b", VALUE)
    before = store.export()
    with pytest.raises(MemoryLimitReached):
        write(store)
    assert store.export() == before


def test_allkeys_lru_evicts_the_least_recently_used_keys() -> None:
    store = bounded(3, "allkeys-lru")
    for key in ("a", "b", "c"):
        store.set(ALICE, key, VALUE)
    store.lookup(ALICE, "a")  # b is now the least recently used
    store.set(ALICE, "d", VALUE)
    assert sorted(keys_of(store)) == ["a", "c", "d"]
    store.get_many(ALICE, ["c"])
    store.set(ALICE, "e", VALUE)
    assert sorted(keys_of(store)) == ["c", "d", "e"]
    assert store.stats()["evicted"] == 2
    assert store.journal.records[-2][1:] == ("delete_many", (["a"],))  # type: ignore[union-attr]


def test_allkeys_lru_evicts_as_many_keys_as_a_large_write_needs() -> None:
    store = bounded(4, "allkeys-lru")
    for key in ("a", "b", "c", "d"):
        store.set(ALICE, key, VALUE)
    store.set(ALICE, "big", pickle.dumps("y" * (2 * PLAIN), protocol=5))  # three keys' room
    assert sorted(keys_of(store)) == ["big", "d"]


def test_volatile_lru_evicts_only_keys_with_a_ttl() -> None:
    store = bounded(3, "volatile-lru", extra=3 * DEADLINE_OVERHEAD)
    store.set(ALICE, "config", VALUE)
    store.set(ALICE, "s1", VALUE, ttl=100)
    store.set(ALICE, "s2", VALUE, ttl=100)
    store.lookup(ALICE, "config")
    store.lookup(ALICE, "s1")
    store.set(ALICE, "s3", VALUE, ttl=100)
    assert sorted(keys_of(store)) == ["config", "s1", "s3"]
    store.persist(ALICE, "s1")
    store.persist(ALICE, "s3")
    with pytest.raises(MemoryLimitReached, match="volatile-lru policy found nothing"):
        store.set(ALICE, "s4", pickle.dumps("x" * 1000, protocol=5))
    assert sorted(keys_of(store)) == ["config", "s1", "s3"], "nothing lost"


def test_volatile_ttl_evicts_the_keys_that_expire_soonest() -> None:
    store = bounded(3, "volatile-ttl", extra=3 * DEADLINE_OVERHEAD)
    store.set(ALICE, "config", VALUE)
    store.set(ALICE, "late", VALUE, ttl=300)
    store.set(ALICE, "soon", VALUE, ttl=10)
    store.set(ALICE, "new", VALUE, ttl=200)
    assert sorted(keys_of(store)) == ["config", "late", "new"]


def test_expired_keys_go_before_any_live_key_is_evicted() -> None:
    store = bounded(3, "allkeys-lru", extra=DEADLINE_OVERHEAD)
    store.set(ALICE, "a", VALUE)
    store.set(ALICE, "b", VALUE)
    store.set(ALICE, "gone", VALUE, ttl=0.01)
    store._data.now = lambda: float("inf")  # every deadline has passed
    store.set(ALICE, "c", VALUE)
    store._data.start_clock()
    assert sorted(keys_of(store)) == ["a", "b", "c"]
    assert (store.stats()["expired"], store.stats()["evicted"]) == (1, 0)


def test_an_eviction_the_journal_refuses_evicts_nothing() -> None:
    store = bounded(2, "allkeys-lru")
    store.set(ALICE, "a", VALUE)
    store.set(ALICE, "b", VALUE)

    class FullDisk:
        def append(self, seq: int, kind: str, fields: tuple[Any, ...]) -> None:
            raise OSError(28, "No space left on device")

    store.journal = FullDisk()
    with pytest.raises(OSError, match="No space"):
        store.set(ALICE, "c", VALUE)
    store.journal = RecordingJournal()
    assert sorted(keys_of(store)) == ["a", "b"]
    store.set(ALICE, "c", VALUE)  # the LRU order survived: a goes first
    assert sorted(keys_of(store)) == ["b", "c"]


def test_a_value_larger_than_the_bound_is_refused_even_with_eviction() -> None:
    store = bounded(2, "allkeys-lru")
    store.set(ALICE, "a", VALUE)
    with pytest.raises(MemoryLimitReached):
        store.set(ALICE, "huge", pickle.dumps("z" * (3 * PLAIN), protocol=5))
    assert keys_of(store) == ["a"], "nothing evicted for a write that can't fit"


def test_a_repeat_in_place_counts_what_it_will_add() -> None:
    store = bounded(4, "noeviction")
    store.set(ALICE, "list", pickle.dumps(["x" * 50], protocol=5))
    with pytest.raises(MemoryLimitReached):  # a tiny request that would multiply the value
        store.nested(ALICE, DATA, ("list",), "__imul__", pickle.dumps(((100,), {})))
    assert store.export().data["list"] == pickle.dumps(["x" * 50], protocol=5)
