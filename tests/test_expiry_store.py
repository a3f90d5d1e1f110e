"""Expiry in the store on its own, on a clock the test moves: no sockets, no processes.

What the server does with the same rules over real sockets and real time is in
tests/test_expiry.py.
"""

from __future__ import annotations

import pickle
import random
from typing import Any

import pytest

from sharedstate.codec import DATA
from sharedstate.errors import Conflict, InvalidArgument, KeyNotFound, WrongType
from sharedstate.server import entries as entries_module
from sharedstate.server import store as store_module
from sharedstate.server.entries import DEADLINE_OVERHEAD, KEY_OVERHEAD
from sharedstate.server.reservations import LocalCaller
from sharedstate.server.store import Store

from .support.stores import RecordingJournal

ALICE = LocalCaller(1)
START = 1_800_000_000.0


def p(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


class Clock:
    """The wall clock the store sees; the test moves it."""

    def __init__(self) -> None:
        self.now = START

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(store_module, "time", clock)
    monkeypatch.setattr(entries_module, "time", clock)
    return clock


@pytest.fixture
def store(clock: Clock) -> Store:
    store = Store()
    store.journal = RecordingJournal()
    return store


def journal_of(store: Store) -> list[tuple[int, str, tuple[Any, ...]]]:
    assert isinstance(store.journal, RecordingJournal)
    return store.journal.records


def readable(store: Store) -> dict[Any, Any]:
    return {key: pickle.loads(data) for key, data in store.copy(ALICE).items()}


def test_an_expired_key_is_gone_for_every_read_at_once(store: Store, clock: Clock) -> None:
    store.set(ALICE, "session", p({"user": "ann", "cart": [1]}), ttl=10)
    store.set(ALICE, "config", p(1))
    clock.advance(10)  # the deadline itself: expired
    assert store.lookup(ALICE, "session") is None
    assert store.get_many(ALICE, ["session", "config"]) == [None, p(1)]
    assert not store.contains(ALICE, "session")
    assert store.length(ALICE) == 1
    assert store.keys(ALICE) == ["config"]
    assert [key for key, _ in store.items(ALICE)] == ["config"]
    assert store.values(ALICE) == [p(1)]
    assert readable(store) == {"config": 1}
    exported = store.export()
    assert (list(exported.data), exported.expires) == (["config"], {})
    with pytest.raises(KeyNotFound):
        store.ttl(ALICE, "session")
    with pytest.raises(KeyNotFound):
        store.nested(ALICE, DATA, ("session", "cart"), "append", p(((2,), {})))
    with pytest.raises(KeyNotFound):
        store.edit_begin(ALICE, "session", None, None)
    assert store.pop(ALICE, "session") is None
    assert not store.delete(ALICE, "session")
    assert not store.expire(ALICE, "session", 5)
    assert not store.persist(ALICE, "session")
    assert store.stats()["expiring_keys"] == 0


def test_ttl_counts_down_and_none_means_no_expiry(store: Store, clock: Clock) -> None:
    store.set(ALICE, "k", p(1), ttl=60)
    store.set(ALICE, "forever", p(1))
    clock.advance(15.5)
    assert store.ttl(ALICE, "k") == pytest.approx(44.5)
    assert store.ttl(ALICE, "forever") is None
    with pytest.raises(KeyNotFound):
        store.ttl(ALICE, "missing")


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), 10**400, "10", True, [1]])
def test_a_ttl_that_is_not_a_positive_number_is_refused(store: Store, ttl: Any) -> None:
    with pytest.raises(InvalidArgument, match="ttl"):
        store.set(ALICE, "k", p(1), ttl=ttl)
    with pytest.raises(InvalidArgument, match="ttl"):
        store.add(ALICE, "k", p(1), ttl=ttl)
    with pytest.raises(InvalidArgument, match="ttl"):
        store.incr(ALICE, "k", 1, ttl=ttl)
    assert readable(store) == {}
    assert journal_of(store) == []


def test_the_ttl_rules_of_each_write(store: Store, clock: Clock) -> None:
    def deadline(key: str) -> float | None:
        ttl = store.ttl(ALICE, key)
        return None if ttl is None else clock.now + ttl

    for key in ("set", "update", "nested", "incr", "edit", "setdefault", "add"):
        store.set(ALICE, key, p({"n": 0} if key == "nested" else 0), ttl=100)
    due = START + 100
    clock.advance(1)
    store.set(ALICE, "set", p(1))  # a plain set clears it, as Redis's SET does
    store.update(ALICE, [("update", p(1))])  # so does every whole-value write
    store.nested(ALICE, DATA, ("nested",), "__setitem__", p((("n", 1), {})))
    store.incr(ALICE, "incr", 1, ttl=5)  # a ttl applies only to a key incr creates
    store.edit_begin(ALICE, "edit", None, None)
    store.edit_commit(ALICE, "edit", p(1))
    store.setdefault(ALICE, "setdefault", p(1))
    assert not store.add(ALICE, "add", p(1))
    assert [deadline(key) for key in ("set", "update")] == [None, None]
    assert {key: deadline(key) for key in ("nested", "incr", "edit", "setdefault", "add")} == {
        "nested": due, "incr": due, "edit": due, "setdefault": due, "add": due,
    }  # fmt: skip
    store.update(ALICE, [("a", p(1)), ("b", p(2))], ttl=7)
    assert deadline("a") == deadline("b") == clock.now + 7
    assert store.persist(ALICE, "a")
    assert not store.persist(ALICE, "a"), "it had no expiry any more"
    assert deadline("a") is None
    assert store.expire(ALICE, "a", 3)
    assert deadline("a") == clock.now + 3
    assert store.expire(ALICE, "a", 0), "a ttl of 0 deletes, as Redis's EXPIRE does"
    assert not store.contains(ALICE, "a")


def test_add_sets_only_a_missing_or_expired_key(store: Store, clock: Clock) -> None:
    assert store.add(ALICE, "lock", p("ann"), ttl=5)
    assert not store.add(ALICE, "lock", p("bob"), ttl=5)
    clock.advance(5)
    assert store.add(ALICE, "lock", p("bob"))
    assert readable(store) == {"lock": "bob"}
    assert store.ttl(ALICE, "lock") is None


def test_incr_of_an_expired_counter_starts_again_at_its_amount(store: Store, clock: Clock) -> None:
    assert store.incr(ALICE, "hits", 1, ttl=60) == 1
    assert store.incr(ALICE, "hits", 1, ttl=60) == 2
    clock.advance(60)
    assert store.incr(ALICE, "hits", 1, ttl=60) == 1, "a new window"
    assert store.ttl(ALICE, "hits") == pytest.approx(60)


def test_an_edit_of_a_key_that_expires_meanwhile_writes_nothing(store: Store, clock: Clock) -> None:
    store.set(ALICE, "cart", p([1]), ttl=10)
    store.edit_begin(ALICE, "cart", None, None)
    clock.advance(11)
    with pytest.raises(Conflict, match="expired while it was being edited"):
        store.edit_commit(ALICE, "cart", p([1, 2]))
    assert not store.contains(ALICE, "cart"), "not brought back without its expiry"
    store.edit_begin(ALICE, "cart", p([]), None)  # the edit ended: the key can be edited
    store.edit_commit(ALICE, "cart", p([3]))
    assert readable(store) == {"cart": [3]}
    assert store.ttl(ALICE, "cart") is None, "a new key, made from the default"


def test_expired_keys_are_removed_in_batches_soonest_first_and_journaled(
    store: Store, clock: Clock
) -> None:
    for index in range(10):
        store.set(ALICE, index, p(index), ttl=1 + index)
    store.set(ALICE, "stays", p(1))
    clock.advance(5)  # keys 0..4 have expired
    before = len(journal_of(store))
    assert store.remove_expired(limit=3) == 3
    assert store.remove_expired(limit=3) == 2
    assert store.remove_expired(limit=3) == 0
    assert journal_of(store)[before:] == [
        (before + 1, "delete_many", ([0, 1, 2],)),
        (before + 2, "delete_many", ([3, 4],)),
    ]
    assert store.stats()["expired"] == 5
    assert sorted(store.keys(ALICE), key=str) == [5, 6, 7, 8, 9, "stays"]


def test_a_removal_the_journal_refuses_leaves_the_keys_hidden_and_retried(
    store: Store, clock: Clock
) -> None:
    class FullDisk(RecordingJournal):
        full = True

        def append(self, seq: int, method: str, args: tuple[Any, ...]) -> None:
            if self.full:
                raise OSError(28, "No space left on device")
            super().append(seq, method, args)

    store.set(ALICE, "k", p(1), ttl=1)
    journal = store.journal = FullDisk()
    clock.advance(2)
    with pytest.raises(OSError, match="No space"):
        store.remove_expired()
    assert not store.contains(ALICE, "k")
    assert store.stats()["expired"] == 0
    journal.full = False
    assert store.remove_expired() == 1
    assert journal.records == [(2, "delete_many", (["k"],))]


def test_len_counts_keys_set_twice_to_one_deadline_once(store: Store, clock: Clock) -> None:
    store.set(ALICE, "a", p(1), ttl=5)
    store.expire(ALICE, "a", 5)  # the same deadline again: two heap entries
    store.set(ALICE, "b", p(1), ttl=5)
    store.set(ALICE, "c", p(1))
    clock.advance(5)
    assert store.length(ALICE) == 1


# -- the journal replays what happened, whenever it is replayed ------------------------


def _random_writes(store: Store, clock: Clock, rng: random.Random) -> None:
    keys = [f"k{index}" for index in range(8)]
    for _ in range(400):
        key = rng.choice(keys)
        ttl = rng.choice([None, 0.5, 1, 3])
        action = rng.randrange(10)
        try:
            if action == 0:
                store.set(ALICE, key, p(rng.randrange(100)), ttl=ttl)
            elif action == 1:
                store.incr(ALICE, key, 1, ttl=ttl)
            elif action == 2:
                store.add(ALICE, key, p("added"), ttl=ttl)
            elif action == 3 and ttl is not None:
                store.expire(ALICE, key, ttl)
            elif action == 4:
                store.persist(ALICE, key)
            elif action == 5:
                store.update(ALICE, [(key, p(1)), (rng.choice(keys), p(2))], ttl=ttl)
            elif action == 6:
                store.delete(ALICE, key)
            elif action == 7:
                store.remove_expired(limit=rng.randrange(1, 4))
            elif action == 8:
                store.edit_begin(ALICE, key, p(0), None)
                store.edit_commit(ALICE, key, p("edited"))
            else:
                store.setdefault(ALICE, key, p("default"))
        except (KeyNotFound, Conflict, WrongType):
            pass
        clock.advance(rng.choice([0, 0, 0.1, 0.4, 1.0]))


@pytest.mark.parametrize("seed", range(20))
def test_replaying_the_journal_later_gives_the_state_as_it_was_then(
    clock: Clock, seed: int
) -> None:
    live = Store()
    live.journal = RecordingJournal()
    _random_writes(live, clock, random.Random(seed))
    replayed = Store()
    for seq, kind, fields in journal_of(live):
        replayed.replay(seq, kind, fields)
    assert (readable(replayed), replayed.export().expires) == (
        readable(live),
        live.export().expires,
    )
    clock.advance(100)  # recovered long after: what expired meanwhile is not served
    assert readable(replayed) == readable(live)


@pytest.mark.parametrize("seed", range(10))
def test_memory_used_is_the_sum_of_what_the_keys_hold(clock: Clock, seed: int) -> None:
    store = Store()
    _random_writes(store, clock, random.Random(seed))
    used = store.stats()["memory_used"]
    keyspace = store._data
    keyspace.stop_clock()  # count the expired keys not removed yet too: they take memory
    stored = keyspace.encoded_dict()
    keyspace.start_clock()
    expected = sum(len(data) + KEY_OVERHEAD for data in stored.values())
    assert used == expected + DEADLINE_OVERHEAD * len(keyspace.deadlines)


def test_an_export_never_holds_a_key_without_the_deadline_it_had(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clock that moves on every look: a deadline passing in the middle of an export
    # must not leave the key in the copy without its deadline (it would never expire).
    store.set(ALICE, "k", p(1), ttl=3)
    ticks = iter(range(10_000))
    monkeypatch.setattr(clock, "time", lambda: START + next(ticks))
    store._data.start_clock()
    for _ in range(6):
        exported = store.export()
        assert ("k" in exported.data) == ("k" in exported.expires)


def test_an_edit_can_write_back_with_a_new_ttl(store: Store, clock: Clock) -> None:
    store.edit_begin(ALICE, "window", p([]), None)  # created by the edit
    store.edit_commit(ALICE, "window", p([1]), ttl=60)
    assert store.ttl(ALICE, "window") == pytest.approx(60)
    clock.advance(30)
    store.edit_begin(ALICE, "window", None, None)
    store.edit_commit(ALICE, "window", p([1, 2]), ttl=60)  # counted again from now
    assert store.ttl(ALICE, "window") == pytest.approx(60)
    assert journal_of(store)[-1][1] == "set_expiring"
