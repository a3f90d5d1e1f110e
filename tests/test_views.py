"""Nested views (``SharedDict``, ``SharedList``): what they send, keep and give back.

Each test runs a real server; "another process" is a real forked worker. The rule they
protect: reading by key or index gives a view whose writes reach the server; everything
else (iteration, conversion, slicing, operators, copies, JSON) gives plain data that
never writes back. Positional writes land on the element this process read there, or
raise :class:`Conflict`; never on another one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, jsonify

from sharedstate import (
    Conflict,
    IndexOutOfRange,
    SharedDict,
    SharedList,
    SharedState,
    ValueTooLarge,
    WrongType,
    get_shared_state,
)
from sharedstate.flask import SharedStateExtension, shared_state

from .support.processes import run_cli, run_in_processes
from .support.servers import ServerProcess

pytestmark = pytest.mark.backends


def views_inside(value: Any) -> list[str]:
    """Where ``value`` holds a view (it should hold none: plain data only)."""
    found = []
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, (SharedDict, SharedList)):
            found.append(where or "the value itself")
        if isinstance(item, dict):
            pending += [(f"{where}[{key!r}]", inner) for key, inner in dict.items(item)]
        elif isinstance(item, (list, tuple)):
            pending += [(f"{where}[{index}]", inner) for index, inner in enumerate(item)]
    return found


# -- 12. a view stores, and keeps, plain values -----------------------------------------


def test_a_view_stored_into_another_value_is_stored_as_data_not_as_a_link(
    state: SharedState,
) -> None:
    state["a"] = {}
    state["b"] = {"n": 0}
    a = state["a"]
    a["x"] = state["b"]
    a["x"]["n"] = 99
    assert state["b"] == {"n": 0}, "the write went to the view's old place"
    assert state["a"] == {"x": {"n": 99}}
    assert a == {"x": {"n": 99}}
    assert views_inside(dict(a)) == []


def test_a_view_keeps_what_it_sent_not_the_callers_object(state: SharedState) -> None:
    state["d"] = {}
    state["l"] = []
    d, lst = state["d"], state["l"]
    sent: list[Any] = [1, 2]
    d["k"] = sent
    item = {"a": 1}
    lst.append(item)
    batch = [[0]]
    lst.extend(batch)
    lst.insert(0, item)
    d.update(u=sent)
    d.setdefault("s", sent)
    # The caller changes their objects after sending them: the views must not follow.
    sent.append(99)
    item["a"] = 2
    batch[0].append(5)
    assert d == {"k": [1, 2], "u": [1, 2], "s": [1, 2]}
    assert lst == [{"a": 1}, {"a": 1}, [0]]
    assert state["d"] == d
    assert state["l"] == lst


# -- 13. setdefault gives a view attached to its parent ---------------------------------


def test_setdefault_on_an_existing_key_returns_a_view_attached_to_its_parent(
    state: SharedState,
) -> None:
    state["v"] = {"k": [1]}
    v = state["v"]
    v.setdefault("k", []).append(2)
    assert v["k"] == [1, 2], "the append went to a copy detached from v"
    v.setdefault("new", []).append(1)
    assert v == {"k": [1, 2], "new": [1]}
    assert state["v"] == {"k": [1, 2], "new": [1]}
    assert v["k"] is v["k"], "like a dict: the same key gives the same object"
    assert v.get("k") is v["k"]
    assert v.setdefault("k") is v["k"]


# -- 14. positional writes land on what was read there, or conflict -----------------------

USERS = [
    {"name": "alice", "visits": 0},
    {"name": "bob", "visits": 0},
    {"name": "carol", "visits": 0},
]


def _delete_first_user() -> None:
    del get_shared_state(start=False)["users"][0]


def _visit_first_user() -> None:
    get_shared_state(start=False)["users"][0].incr("visits")


POSITIONAL_WRITES: dict[str, Callable[[Any], Any]] = {
    "assignment through the index": lambda users: users[0].__setitem__("name", "Alice"),
    "incr through the index": lambda users: users[0].incr("visits"),
    "append through the index": lambda users: users[1].setdefault("tags", []).append("x"),
    "item assignment": lambda users: users.__setitem__(0, {"name": "dave"}),
    "negative item assignment": lambda users: users.__setitem__(-2, {"name": "dave"}),
    "item deletion": lambda users: users.__delitem__(0),
    "pop(i)": lambda users: users.pop(0),
    "insert(i, x)": lambda users: users.insert(1, {"name": "dave"}),
    "slice assignment": lambda users: users.__setitem__(slice(0, 1), [{"name": "dave"}]),
    "slice deletion": lambda users: users.__delitem__(slice(0, 2)),
    "sort(key=...)": lambda users: users.sort(key=lambda user: user["name"], reverse=True),
}


@pytest.mark.parametrize("write", POSITIONAL_WRITES.values(), ids=POSITIONAL_WRITES.keys())
def test_a_write_through_a_list_another_process_shifted_conflicts_instead_of_landing_elsewhere(
    state: SharedState, write: Callable[[Any], Any]
) -> None:
    state["users"] = USERS
    users = state["users"]  # this worker reads the list...
    run_in_processes(_delete_first_user, [()])  # ...another deletes alice
    with pytest.raises(Conflict, match=r"state\['users'\].* changed since you read it") as raised:
        write(users)
    assert "read it again and retry" in str(raised.value)
    assert state["users"] == USERS[1:], "the write landed on another user"
    assert users == USERS, "a refused write leaves the view as it was"
    fresh = state["users"]
    write(fresh)  # read again, and it goes through


def _delete_first_score() -> None:
    del get_shared_state(start=False)["scores"][0]


def test_incr_of_a_list_position_another_process_shifted_conflicts(state: SharedState) -> None:
    state["scores"] = [10, 20, 30]
    scores = state["scores"]
    run_in_processes(_delete_first_score, [()])
    with pytest.raises(Conflict, match=r"state\['scores'\]\[0\] changed since you read it"):
        scores.incr(0, 5)
    assert state["scores"] == [20, 30]


def test_a_write_through_a_list_element_another_process_changed_conflicts(
    state: SharedState,
) -> None:
    state["users"] = USERS
    users = state["users"]
    run_in_processes(_visit_first_user, [()])
    with pytest.raises(Conflict, match=r"state\['users'\]\[0\] changed since you read it"):
        users[0]["name"] = "Alice"
    assert state["users"][0] == {"name": "alice", "visits": 1}
    users = state["users"]
    users[0]["name"] = "Alice"
    assert state["users"][0] == {"name": "Alice", "visits": 1}


NON_POSITIONAL_WRITES: dict[str, Callable[[Any], Any]] = {
    "append": lambda users: users.append({"name": "dave"}),
    "extend": lambda users: users.extend([{"name": "dave"}]),
    "+=": lambda users: users.__iadd__([{"name": "dave"}]),
    "insert(0, x)": lambda users: users.insert(0, {"name": "dave"}),
    "insert at the end": lambda users: users.insert(len(users), {"name": "dave"}),
    "slice assignment at the end": lambda users: users.__setitem__(
        slice(len(users), None), [{"name": "dave"}]
    ),
    "pop()": lambda users: users.pop(),
    "remove(x)": lambda users: users.remove({"name": "carol", "visits": 0}),
    "reverse": lambda users: users.reverse(),
    "clear": lambda users: users.clear(),
}


@pytest.mark.parametrize("write", NON_POSITIONAL_WRITES.values(), ids=NON_POSITIONAL_WRITES.keys())
def test_writes_that_name_no_position_go_through_after_another_process_shifted_the_list(
    state: SharedState, write: Callable[[Any], Any]
) -> None:
    state["users"] = USERS
    users = state["users"]
    run_in_processes(_delete_first_user, [()])
    write(users)
    expected = copy.deepcopy(USERS[1:])
    write(expected)
    assert state["users"] == expected


def test_a_view_held_across_changes_of_its_own_list_follows_its_element(
    state: SharedState,
) -> None:
    state["users"] = USERS
    users = state["users"]
    carol = users[2]
    users.insert(0, {"name": "dave"})
    users.sort(key=lambda user: user["name"])  # alice, bob, carol, dave
    users.reverse()  # dave, carol, bob, alice
    carol["visits"] = 7
    assert users[1] is carol
    assert state["users"][1] == {"name": "carol", "visits": 7}
    assert users == state["users"]


def test_a_view_of_an_element_removed_through_its_parent_refuses_writes(
    state: SharedState,
) -> None:
    state["cfg"] = {"db": {"port": 1}, "hosts": [{"name": "a"}, {"name": "b"}]}
    cfg = state["cfg"]
    db, first = cfg["db"], cfg["hosts"][0]
    cfg["db"] = {"port": 2}
    del cfg["hosts"][0]
    writes: list[Callable[[], object]] = [
        lambda: db.__setitem__("port", 3),
        lambda: first.__setitem__("name", "z"),
    ]
    for write in writes:
        with pytest.raises(Conflict, match="replaced or removed"):
            write()
    assert state["cfg"] == {"db": {"port": 2}, "hosts": [{"name": "b"}]}


# -- 15. sort, operators, extend --------------------------------------------------------


def test_a_failed_sort_changes_neither_the_server_nor_the_view(state: SharedState) -> None:
    state["l"] = [3, 1, 2, "a"]  # list.sort() would leave [1, 2, 3, 'a'] behind
    numbers = state["l"]
    with pytest.raises(WrongType, match=r"state\['l'\]\.sort\(\)"):
        numbers.sort()
    assert numbers == [3, 1, 2, "a"]
    assert state["l"] == [3, 1, 2, "a"]
    with pytest.raises(TypeError):
        numbers.sort(key=lambda item: item)
    assert numbers == [3, 1, 2, "a"]
    assert state["l"] == [3, 1, 2, "a"]


def test_sort_with_a_key_sorts_here_and_never_sends_the_function(
    state: SharedState, workdir: str
) -> None:
    library = os.path.join(workdir, "client_only")
    os.makedirs(library)
    with open(os.path.join(library, "client_keys.py"), "w") as file:
        file.write("def by_length(text):\n    return len(text)\n")
    sys.path.insert(0, library)
    try:
        import client_keys  # type: ignore[import-not-found]

        state["words"] = ["bb", "C", "a", "dddd"]
        words = state["words"]
        words.sort(key=lambda word: word.lower())  # a lambda can't even be pickled
        assert words == ["a", "bb", "C", "dddd"]
        assert state["words"] == words
        words.sort(key=client_keys.by_length, reverse=True)  # the server can't import it
        assert words == ["dddd", "bb", "a", "C"]
        assert state["words"] == words
    finally:
        sys.path.remove(library)
        sys.modules.pop("client_keys", None)


def test_views_have_the_operators_of_dict_and_list_and_they_give_plain_values(
    state: SharedState,
) -> None:
    state["l"] = [1, [2]]
    state["d"] = {"a": {"x": 1}}
    lst, d = state["l"], state["d"]
    results = {
        "l + list": (lst + [3], [1, [2], 3]),  # noqa: RUF005 (the operator is the point)
        "list + l": ([0] + lst, [0, 1, [2]]),  # noqa: RUF005
        "l * 2": (lst * 2, [1, [2], 1, [2]]),
        "2 * l": (2 * lst, [1, [2], 1, [2]]),
        "reversed(l)": (list(reversed(lst)), [[2], 1]),
        "d | dict": (d | {"b": 2}, {"a": {"x": 1}, "b": 2}),
        "dict | d": ({"b": 2} | d, {"b": 2, "a": {"x": 1}}),
        "reversed(d)": (list(reversed(d)), ["a"]),
    }
    for name, (result, expected) in results.items():
        assert result == expected, name
        assert type(result) is type(expected), name
        assert views_inside(result) == [], name
    comparisons = [
        lst < [2],
        lst <= [1, [2]],
        lst > [0],
        lst >= [1, [2]],
        lst == [1, [2]],
        lst != [1],
        d == {"a": {"x": 1}},
        d != {},
    ]
    assert all(comparisons), comparisons
    assert state["l"] == [1, [2]], "reads changed nothing"
    assert state["d"] == {"a": {"x": 1}}, "reads changed nothing"


def test_extend_reads_an_iterator_only_until_it_is_over_the_size_limit(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHAREDSTATE_MAX_VALUE_BYTES", "1M")
    state = get_shared_state(start=False)
    state["l"] = []
    numbers = state["l"]
    read = 0

    def zeros() -> Iterator[int]:
        nonlocal read
        for _ in range(3_000_000):  # ~6 MB pickled
            read += 1
            yield 0

    with pytest.raises(ValueTooLarge, match=r"state\['l'\]\.extend\(\).*MAX_VALUE_BYTES"):
        numbers.extend(zeros())
    assert read < 1_000_000, f"extend() read {read:,} items of an iterator far over the limit"
    with pytest.raises(ValueTooLarge, match=r"state\['l'\]\.extend\(\) is [\d,]+ bytes"):
        numbers.extend([0] * 600_000)  # a list in hand: refused once pickled
    assert numbers == []
    assert state["l"] == []
    numbers.extend(n for n in range(3))  # an iterator under the limit: one write
    assert state["l"] == [0, 1, 2]


# -- 16. conversions give plain data ------------------------------------------------------


@dataclasses.dataclass
class Holder:
    cfg: dict[str, Any]
    hosts: list[Any]


def test_the_states_own_items_and_values_are_plain_data(state: SharedState) -> None:
    # The same rule at the top level: reading by key gives views, listing gives data.
    state["cfg"] = {"db": {"port": 1}}
    assert views_inside(state.items()) == []
    assert views_inside(state.values()) == []
    assert views_inside(state.to_dict()) == []
    state.items()[0][1]["db"]["port"] = 77
    state.values()[0]["db"]["port"] = 78
    assert state["cfg"] == {"db": {"port": 1}}
    state["cfg"]["db"]["port"] = 2  # while reading by key still writes through
    assert state["cfg"] == {"db": {"port": 2}}


def test_converting_a_view_gives_plain_data_that_never_writes_back(state: SharedState) -> None:
    original = {"db": {"port": 1}, "hosts": [{"name": "a"}, [1]]}
    state["cfg"] = original
    cfg = state["cfg"]
    hosts = cfg["hosts"]
    conversions: dict[str, Any] = {
        "dict(v)": dict(cfg),
        "{**v}": {**cfg},
        "v.copy()": cfg.copy(),
        "copy.copy(v)": copy.copy(cfg),
        "copy.deepcopy(v)": copy.deepcopy(cfg),
        "pickle": pickle.loads(pickle.dumps(cfg)),
        "values()": list(cfg.values()),
        "items()": list(cfg.items()),
        "iter(v)": list(iter(hosts)),
        "for value in v.values()": [value for value in cfg.values()],
        "list(v)": list(hosts),
        "[*v]": [*hosts],
        "tuple(v)": tuple(hosts),
        "v[:]": hosts[:],
        "sorted(v.items())": sorted(cfg.items()),
        "json": json.loads(json.dumps(cfg)),
        "type(v)(v)": (type(cfg)(cfg), type(hosts)(hosts)),
        "dataclasses.asdict": dataclasses.asdict(Holder(cfg, hosts)),
    }
    for name, plain in conversions.items():
        assert views_inside(plain) == [], f"{name} holds views at {views_inside(plain)}"
    assert type(cfg.copy()) is dict
    assert type(hosts.copy()) is list

    d = dict(state["cfg"])
    d["db"]["port"] = 77
    d["hosts"][0]["name"] = "z"
    for item in state["cfg"]["hosts"]:
        if isinstance(item, list):
            item.append(2)
    copied = state["cfg"].copy()
    copied["db"]["port"] = 78
    assert state["cfg"] == original, "a plain copy wrote to the server"
    assert json.dumps(state["cfg"]) == json.dumps(original)


def test_flask_returns_and_jsonifies_views_as_plain_json(server: ServerProcess) -> None:
    app = Flask(__name__)
    SharedStateExtension(app)

    @app.get("/cfg")
    def cfg() -> Any:
        return shared_state()["cfg"]

    @app.get("/hosts")
    def hosts() -> Any:
        return shared_state()["cfg"]["hosts"]

    @app.get("/jsonify")
    def jsonified() -> Any:
        return jsonify(shared_state()["cfg"])

    get_shared_state(start=False)["cfg"] = {"db": {"port": 1}, "hosts": ["a", "b"]}
    client = app.test_client()
    assert client.get("/cfg").get_json() == {"db": {"port": 1}, "hosts": ["a", "b"]}
    assert client.get("/hosts").get_json() == ["a", "b"]
    assert client.get("/jsonify").get_json() == {"db": {"port": 1}, "hosts": ["a", "b"]}


def test_reading_a_list_view_out_of_range_or_with_a_bad_index_is_clear(
    state: SharedState,
) -> None:
    state["l"] = [1]
    numbers = state["l"]
    with pytest.raises(IndexOutOfRange, match=r"index 1 is out of range for state\['l'\]"):
        numbers[1] = 2
    with pytest.raises(WrongType, match=r"list indices must be integers or slices, not str"):
        numbers["x"] = 2
    assert state["l"] == [1]


def test_values_stored_from_views_read_as_plain_json_in_the_command_line(
    state: SharedState,
) -> None:
    state["a"] = {"x": [1, {"y": 2}]}
    state["b"] = state["a"]  # pickled as its plain value
    state["c"] = state["a"]["x"]
    state["a"]["x"][1]["y"] = 3
    assert json.loads(run_cli("get", "b").stdout) == {"x": [1, {"y": 2}]}
    assert json.loads(run_cli("get", "c").stdout) == [1, {"y": 2}]
    dumped = run_cli("dump", "-", "--format", "json")
    assert dumped.returncode == 0, dumped.stderr
    assert json.loads(dumped.stdout)["data"] == {
        "a": {"x": [1, {"y": 3}]},
        "b": {"x": [1, {"y": 2}]},
        "c": [1, {"y": 2}],
    }
