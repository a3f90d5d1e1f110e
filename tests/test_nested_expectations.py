"""Positional nested writes: what the server checks, journals and replays.

The store's logic first (no sockets), then real servers: old-format call data still
accepted, a journal of checked writes replayed after ``kill -9``, and processes racing
to write through a list another process keeps shifting.
"""

from __future__ import annotations

import contextlib
import math
import pickle
from typing import Any

import pytest

from sharedstate import (
    Conflict,
    InvalidArgument,
    SharedStateError,
    ValueNotFound,
    ValueTooLarge,
    WrongType,
    get_shared_state,
)
from sharedstate.codec import DATA
from sharedstate.server.reservations import LocalCaller
from sharedstate.server.store import Store

from .support.clients import fresh_state
from .support.persisted import snapshot_in
from .support.processes import kill_and_wait, run_in_processes
from .support.servers import ServerFactory, ServerProcess
from .support.stores import RecordingJournal, value_of

CLIENT = LocalCaller(1)


def p(value: Any) -> bytes:
    return pickle.dumps(value)


def call(
    store: Store, path: tuple[Any, ...], method: str, args: tuple[Any, ...], *expected: Any
) -> Any:
    """A nested write as views send it: ``(args, kwargs[, expectations])``."""
    data: tuple[Any, ...] = (args, {}, tuple(expected)) if expected else (args, {})
    return pickle.loads(store.nested(CLIENT, DATA, path, method, p(data)))


@pytest.fixture
def store() -> Store:
    store = Store()
    store.set(CLIENT, "users", p([{"name": "alice"}, {"name": "bob"}, {"name": "carol"}]))
    return store


def test_an_expectation_that_holds_lets_the_write_through(store: Store) -> None:
    call(store, ("users", 1), "__setitem__", ("age", 30), (1, 1, {"name": "bob"}))
    call(store, ("users",), "__delitem__", (0,), (1, 0, {"name": "alice"}))
    call(store, ("users",), "insert", (1, {"name": "dave"}), (1, 1, {"name": "carol"}))
    assert value_of(store, "users") == [
        {"name": "bob", "age": 30},
        {"name": "dave"},
        {"name": "carol"},
    ]


@pytest.mark.parametrize(
    ("path", "method", "args", "expected", "place"),
    [
        (("users", 0), "__setitem__", ("x", 1), (1, 0, {"name": "bob"}), "state['users'][0]"),
        (("users",), "pop", (2,), (1, 2, {"name": "bob"}), "state['users'][2]"),
        (("users",), "__delitem__", (5,), (1, 5, {"name": "zed"}), "state['users'][5]"),
        (("users",), "__setitem__", (slice(0, 2), []), (1, slice(0, 2), []), "[0:2]"),
        (("users",), "__setitem__", (slice(None), []), (1, slice(None), []), "state['users'] "),
    ],
    ids=["path", "pop(i)", "out of range now", "slice", "whole list"],
)
def test_an_expectation_that_fails_is_a_conflict_and_changes_nothing(
    store: Store, path: Any, method: str, args: Any, expected: Any, place: str
) -> None:
    journal = RecordingJournal()
    store.journal = journal
    before = value_of(store, "users")
    with pytest.raises(Conflict, match="changed since you read it") as raised:
        call(store, path, method, args, expected)
    assert place in str(raised.value)
    assert value_of(store, "users") == before
    assert journal.records == [], "a refused write is never journaled"


class Elementwise(list[Any]):
    """Like a numpy array: ``==`` gives no bool (here: it raises)."""

    def __eq__(self, other: object) -> Any:
        raise ValueError("the truth value of an array is ambiguous")

    __hash__ = None


def test_expectations_compare_nan_and_objects_whose_eq_is_not_a_bool(store: Store) -> None:
    nan = float("nan")
    store.set(CLIENT, "rows", p([{"score": nan}, [1.0, nan]]))
    call(store, ("rows", 0), "__setitem__", ("seen", True), (1, 0, {"score": nan}))
    call(store, ("rows",), "__setitem__", (1, "x"), (1, 1, [1.0, nan]))
    rows = value_of(store, "rows")
    assert rows[0]["seen"] is True
    assert rows[1] == "x"
    store.set(CLIENT, "odd", p([Elementwise([1])]))
    call(store, ("odd",), "__setitem__", (0, 2), (1, 0, Elementwise([1])))
    with pytest.raises(Conflict):
        call(store, ("odd",), "__setitem__", (0, 3), (1, 0, 9))


def test_a_failed_sort_leaves_the_list_as_it_was_live_and_on_replay(store: Store) -> None:
    journal = RecordingJournal()
    store.journal = journal
    store.set(CLIENT, "mixed", p([3, 1, 2, "a"]))
    with pytest.raises(WrongType, match=r"state\['mixed'\]\.sort\(\)"):
        call(store, ("mixed",), "sort", ())
    assert value_of(store, "mixed") == [3, 1, 2, "a"]
    replayed = Store()
    for seq, method, args in journal.records:
        replayed.replay(seq, method, args)
    assert value_of(replayed, "mixed") == [3, 1, 2, "a"]


def test_old_call_data_without_expectations_still_applies_and_replays(store: Store) -> None:
    journal = RecordingJournal()
    store.journal = journal
    store.set(CLIENT, "names", p(["b", "a", "c"]))
    old = p(((), {"key": None, "reverse": True}))  # what clients before expectations sent
    store.nested(CLIENT, DATA, ("names",), "sort", old)
    store.nested(CLIENT, DATA, ("users", 0), "__setitem__", p((("n", 1), {})))
    call(store, ("users",), "pop", (1,), (1, 1, {"name": "bob"}))
    assert value_of(store, "names") == ["c", "b", "a"]
    assert value_of(store, "users") == [{"name": "alice", "n": 1}, {"name": "carol"}]
    replayed = Store()
    replayed.set(CLIENT, "users", p([{"name": "alice"}, {"name": "bob"}, {"name": "carol"}]))
    for seq, method, args in journal.records:
        replayed.replay(seq, method, args)
    assert value_of(replayed, "users") == value_of(store, "users")
    assert value_of(replayed, "names") == ["c", "b", "a"]


@pytest.mark.parametrize(
    "data",
    [p("junk"), p(((), {}, "x")), p(([], {})), p(((), {}, ((1, "k", 2),))), p(((), [], ()))],
    ids=["not a tuple", "expectations not a tuple", "args a list", "a key step", "kwargs"],
)
def test_call_data_of_the_wrong_shape_is_a_clear_error(store: Store, data: bytes) -> None:
    with pytest.raises(WrongType, match=r"call data of state\['users'\]\.append\(\)"):
        store.nested(CLIENT, DATA, ("users",), "append", data)


def test_list_errors_keep_their_kind(store: Store) -> None:
    with pytest.raises(ValueNotFound):
        call(store, ("users",), "remove", ("nobody",))
    with pytest.raises(InvalidArgument, match="extended slice"):
        call(store, ("users",), "__setitem__", (slice(None, None, 2), [1]))
    store.set(CLIENT, "big", p([0] * 1000))
    with pytest.raises(ValueTooLarge, match=r"state\['big'\] \*= 200000 would make a list"):
        call(store, ("big",), "__imul__", (200_000,))
    assert len(value_of(store, "big")) == 1000
    call(store, ("users",), "__imul__", (2,))
    assert len(value_of(store, "users")) == 6


# -- real servers ---------------------------------------------------------------------


def test_checked_writes_and_old_style_ones_survive_a_kill_and_replay(
    server_factory: ServerFactory, workdir: str
) -> None:
    snapshot = snapshot_in(workdir)
    args = ("--snapshot", snapshot, "--fsync", "always", "--snapshot-interval", "3600")
    server = server_factory(*args).start()
    state = get_shared_state(start=False)
    state["users"] = [{"name": "alice"}, {"name": "bob"}, {"name": "carol"}, {"name": "dave"}]
    state["scores"] = [3, 1, 2, math.inf]
    users = state["users"]
    users[1]["age"] = 30  # a path through a list index: checked
    del users[0]  # a position: checked
    users.insert(1, {"name": "eve"})
    users.sort(key=lambda user: user["name"], reverse=True)  # the whole list: checked
    users.append({"name": "frank"})  # no position
    state["scores"].sort()
    # What a client from before expectations sent: (args, kwargs) only.
    state._transport.call("nested", DATA, ("scores",), "append", p(((0,), {})))
    expected = state.to_dict()
    kill_and_wait(server.pid)
    server_factory(*args).start()
    assert fresh_state().to_dict() == expected
    assert expected["users"][0] == {"name": "eve"}


def _write_own_record(name: str, times: int) -> tuple[int, int]:
    """Count ``n`` up in this worker's own record, found by name, retrying on Conflict."""
    state = get_shared_state(start=False)
    conflicts = 0
    for _ in range(times):
        while True:
            users = state["users"]
            index = next(i for i, user in enumerate(users) if user["name"] == name)
            try:
                users[index]["n"] = users[index]["n"] + 1
                break
            except Conflict:
                conflicts += 1
    return times, conflicts


def _shift_the_list(rounds: int) -> int:
    """Insert and delete filler records at the front, so every index keeps moving."""
    state = get_shared_state(start=False)
    for round_ in range(rounds):
        users = state["users"]
        users.insert(0, {"name": f"filler{round_}", "n": -1})
        if round_ % 2:
            fillers = [i for i, user in enumerate(users) if user["name"].startswith("filler")]
            with contextlib.suppress(Conflict):  # a writer may have just changed it
                del users[fillers[-1]]
    return rounds


@pytest.mark.timeout(120)
def test_racing_writers_land_on_their_own_record_while_another_process_shifts_the_list(
    server: ServerProcess,
) -> None:
    state = get_shared_state(start=False)
    workers = ["w0", "w1", "w2"]
    state["users"] = [{"name": name, "n": 0} for name in workers]
    results = run_in_processes(
        lambda kind, *args: kind(*args),
        [(_write_own_record, name, 150) for name in workers] + [(_shift_the_list, 300)],
        timeout=100,
    )
    records = {user["name"]: user["n"] for user in state["users"]}
    assert {name: records[name] for name in workers} == dict.fromkeys(workers, 150)
    assert all(n == -1 for name, n in records.items() if name.startswith("filler"))
    conflicts = sum(result[1] for result in results[:3])
    print(f"{conflicts} conflicts retried")  # shown with -s


def test_a_conflict_survives_pickling_and_names_its_place(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    state["l"] = [1, 2]
    numbers = state["l"]
    state["l"] = [0, 1, 2]
    with pytest.raises(Conflict) as raised:
        numbers[0] = 5
    error = pickle.loads(pickle.dumps(raised.value))
    assert isinstance(error, SharedStateError)
    assert isinstance(error, RuntimeError)
    assert error.where == "state['l'][0]"  # type: ignore[attr-defined]
    assert str(error) == str(raised.value)
    assert state["l"] == [0, 1, 2]
