"""The worker API, through a real server over a real socket."""

from __future__ import annotations

import copy
import os
import pickle
import sys
from collections.abc import MutableMapping
from typing import Any

import pytest

from sharedstate import (
    AttributeNotFound,
    IndexOutOfRange,
    InvalidKey,
    KeyNotFound,
    LockError,
    SharedDict,
    SharedList,
    SharedState,
    ValueNotLoadable,
    ValueNotPicklable,
    WrongType,
    get_shared_state,
)

from .support.backends import NO_SERVER_SIDE_UNPICKLING
from .support.clients import write_client_only_module
from .support.processes import REPO_ROOT, run_in_processes
from .support.servers import requests_served

pytestmark = pytest.mark.backends

ROUND_TRIPS = "counts the requests the local server answered (its statistics)"


def test_dict_operations(state: SharedState) -> None:
    state["hits"] = 0
    assert state["hits"] == 0
    assert "hits" in state
    assert "other" not in state
    assert len(state) == 1
    del state["hits"]
    assert "hits" not in state
    with pytest.raises(KeyNotFound):
        state["hits"]
    with pytest.raises(KeyError):
        del state["hits"]


def test_snapshots_of_keys_items_values(state: SharedState) -> None:
    state.update({"a": 1, "b": 2}, c=3)
    assert sorted(state.keys()) == ["a", "b", "c"]
    assert sorted(state.items()) == [("a", 1), ("b", 2), ("c", 3)]
    assert sorted(state.values()) == [1, 2, 3]
    assert sorted(iter(state)) == ["a", "b", "c"]
    assert state == {"a": 1, "b": 2, "c": 3}
    assert isinstance(state, MutableMapping)


def test_get_setdefault_pop_clear(state: SharedState) -> None:
    assert state.get("missing") is None
    assert state.get("missing", 7) == 7
    assert state.setdefault("k", [1]) == [1]
    assert state.setdefault("k", [2]) == [1]
    assert state.pop("k") == [1]
    assert state.pop("k", "gone") == "gone"
    with pytest.raises(KeyNotFound):
        state.pop("k")
    state["x"] = 1
    state.clear()
    assert len(state) == 0


def test_incr_is_atomic_and_returns_the_new_value(state: SharedState) -> None:
    assert state.incr("hits") == 1
    assert state.incr("hits", 10) == 11
    assert state.incr("hits", -1) == 10
    assert state.incr("ratio", 0.25) == 0.25
    state["name"] = "text"
    with pytest.raises(WrongType, match="not a number"):
        state.incr("name")


def test_nested_lists_and_dicts_are_written_through(state: SharedState) -> None:
    state["array"] = [1, 2, 3]
    state["array"][1] = 0
    assert state["array"] == [1, 0, 3]

    state["cfg"] = {"db": {"port": 1, "hosts": ["a"]}}
    state["cfg"]["db"]["port"] = 5432
    state["cfg"]["db"]["hosts"].append("b")
    state["cfg"]["db"]["hosts"] += ["c"]
    state["cfg"]["new"] = {"deep": [[0]]}
    state["cfg"]["new"]["deep"][0][0] = 9
    assert state.to_dict() == {
        "array": [1, 0, 3],
        "cfg": {"db": {"port": 5432, "hosts": ["a", "b", "c"]}, "new": {"deep": [[9]]}},
    }


def test_views_behave_like_the_container(state: SharedState) -> None:
    state["cfg"] = {"a": 1, "list": [3, 1, 2]}
    cfg = state["cfg"]
    assert isinstance(cfg, SharedDict)
    assert isinstance(cfg, dict), "a dict subclass, so json, Flask and dict() take it"
    assert len(cfg) == 2
    assert sorted(cfg) == ["a", "list"]
    assert cfg == {"a": 1, "list": [3, 1, 2]}
    numbers = cfg["list"]
    assert isinstance(numbers, SharedList)
    assert isinstance(numbers, list)
    assert list(numbers) == [3, 1, 2]
    assert numbers[1:] == [1, 2]
    numbers.sort()
    numbers.insert(0, 0)
    assert numbers.pop() == 3
    numbers.remove(0)
    numbers.reverse()
    assert numbers.incr(0, 5) == 7
    cfg.update(b=2)
    assert cfg.pop("a") == 1
    assert cfg.setdefault("c", 3) == 3
    assert cfg.incr("hits") == 1
    del cfg["c"]
    assert state["cfg"] == {"list": [7, 1], "b": 2, "hits": 1}
    assert cfg == state["cfg"], "a view shows its own writes"


def test_copies_are_plain_and_detached(state: SharedState) -> None:
    state["cfg"] = {"db": {"port": 1}}
    plain = state["cfg"].copy()
    assert type(plain) is dict
    assert type(plain["db"]) is dict
    plain["db"]["port"] = 2
    assert state["cfg"]["db"]["port"] == 1
    assert type(state.to_dict()["cfg"]) is dict
    assert type(copy.deepcopy(state["cfg"])) is dict


def test_assigning_a_view_copies_its_value(state: SharedState) -> None:
    state["a"] = {"x": [1]}
    state["b"] = state["a"]
    state["b"]["x"].append(2)
    assert state["a"] == {"x": [1]}
    assert state["b"] == {"x": [1, 2]}
    assert pickle.loads(pickle.dumps(state["a"])) == {"x": [1]}


def test_nested_errors_are_clear(state: SharedState) -> None:
    state["cfg"] = {"port": 1, "list": [1]}
    with pytest.raises(KeyNotFound, match=r"state\['cfg'\]"):
        state["cfg"]["missing"]["x"] = 1
    with pytest.raises(IndexOutOfRange):
        state["cfg"]["list"][5]
    with pytest.raises(InvalidKey):
        state["cfg"][["unhashable"]] = 1
    with pytest.raises(InvalidKey):
        state[{"a": 1}] = 1


def test_namespace(state: SharedState) -> None:
    state.namespace.number = 0
    assert state.namespace.number == 0
    state.namespace.items = [1]
    state.namespace.items.append(2)
    assert state.namespace.items == [1, 2]
    assert state.namespace.to_dict() == {"number": 0, "items": [1, 2]}
    del state.namespace.number
    with pytest.raises(AttributeNotFound):
        state.namespace.number  # noqa: B018
    assert getattr(state.namespace, "number", "default") == "default"
    assert "number" not in state, "the namespace is not the dict"


def test_lock(state: SharedState) -> None:
    with state.lock:
        assert state.lock.locked()
        with pytest.raises(LockError, match="not reentrant"):
            state.lock.acquire()
    assert not state.lock.locked()
    assert state.lock.acquire(timeout=1) is True
    state.lock.release()
    with pytest.raises(LockError):
        state.lock.release()


def test_edit_writes_back_and_discards_on_error(state: SharedState) -> None:
    state["counts"] = {"a": 1}
    with state.edit("counts") as counts:
        counts["a"] += 1
    assert state["counts"] == {"a": 2}

    def change_then_fail() -> None:
        with state.edit("counts") as counts:
            counts["a"] = 100
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError):
        change_then_fail()
    assert state["counts"] == {"a": 2}
    with state.edit("fresh", default=[]) as fresh:
        fresh.append(1)
    assert state["fresh"] == [1]
    with pytest.raises(KeyNotFound), state.edit("absent"):
        pass


def test_unpicklable_value_names_the_key_and_leaves_the_server_working(
    state: SharedState,
) -> None:
    with pytest.raises(ValueNotPicklable, match=r"state\['job'\]"):
        state["job"] = lambda: None
    with pytest.raises(ValueNotPicklable):
        state.update(ok=1, bad=lambda: None)
    assert "ok" not in state, "a failed update must not apply part of itself"
    state["after"] = 1
    assert state["after"] == 1


@pytest.mark.differs_on_redis(NO_SERVER_SIDE_UNPICKLING)
def test_edit_works_on_objects_whose_class_the_server_cannot_import(
    state: SharedState, workdir: str
) -> None:
    library = os.path.join(workdir, "client_only")
    write_client_only_module(library)
    sys.path.insert(0, library)
    try:
        import client_models  # type: ignore[import-not-found]

        state["grid"] = client_models.Grid([1, 2, 3])
        with state.edit("grid") as grid:
            grid.cells[1] = 0
        assert state["grid"].cells == [1, 0, 3]
        state["box"] = {"grid": client_models.Grid([1])}
        box = state["box"]
        with pytest.raises(ValueNotLoadable, match="state.edit"):
            box["other"] = 1
    finally:
        sys.path.remove(library)
        sys.modules.pop("client_models", None)
    state["still"] = "working"
    assert state["still"] == "working"


def _read_nested(key: str) -> Any:
    return get_shared_state(start=False)[key]["db"]["port"]


def test_nested_mutation_is_visible_in_another_process(state: SharedState) -> None:
    state["cfg"] = {"db": {"port": 1}}
    state["cfg"]["db"]["port"] = 5432
    assert run_in_processes(_read_nested, [("cfg",)]) == [5432]


def test_get_shared_state_returns_the_same_object(state: SharedState) -> None:
    assert get_shared_state(start=False) is state
    assert repr(state).startswith("<SharedState at ")
    with pytest.raises(TypeError, match="get_shared_state"):
        pickle.dumps(state)


@pytest.mark.local_only(ROUND_TRIPS)
@pytest.mark.parametrize(
    ("operation", "round_trips"),
    [
        (lambda s: s.__setitem__("k", 1), 1),
        (lambda s: s["k"], 1),
        (lambda s: "k" in s, 1),
        (lambda s: len(s), 1),
        (lambda s: s.get("k"), 1),
        (lambda s: s.setdefault("k", 1), 1),
        (lambda s: s.update(a=1, b=2), 1),
        (lambda s: s.keys(), 1),
        (lambda s: s.items(), 1),
        (lambda s: s.incr("n"), 1),
        (lambda s: s.pop("k"), 1),
        (lambda s: s.__delitem__("cfg"), 1),
        (lambda s: s.to_dict(), 1),
        (lambda s: s["cfg"]["db"].__setitem__("port", 5432), 2),
    ],
)
def test_each_dict_operation_is_one_round_trip(
    state: SharedState, operation: Any, round_trips: int
) -> None:
    state.update(k=0, cfg={"db": {"port": 1}})
    before = requests_served()
    operation(state)
    assert requests_served() - before == round_trips


@pytest.mark.local_only(ROUND_TRIPS)
def test_batches_are_one_round_trip_each(state: SharedState) -> None:
    before = requests_served()
    state.set_many({f"k{i}": i for i in range(100)})
    assert requests_served() - before == 1
    before = requests_served()
    values = state.get_many([f"k{i}" for i in range(100)] + ["missing"])
    assert requests_served() - before == 1
    assert values == {f"k{i}": i for i in range(100)}
    assert state.delete_many(["k1", "k2", "missing"]) == 2
    assert "k1" not in state
    assert len(state) == 98


def test_the_readmes_quick_start_snippets_run_as_written(state: SharedState) -> None:
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as file:
        readme = file.read()
    start = readme.index("A few more things it does:")
    snippet = readme[readme.index("```python\n", start) + len("```python\n") :]
    snippet = snippet[: snippet.index("```")]
    exec(snippet, {"state": state})  # noqa: S102 - our own README
    assert state["cfg"] == {"db": {"port": 5432}, "hosts": ["a", "b"]}
    assert (state["report"], state["grid"], state.namespace.maintenance) == (1, [0, 7, 0], False)
    assert 59 < state.ttl("page:/") <= 60  # type: ignore[operator]
