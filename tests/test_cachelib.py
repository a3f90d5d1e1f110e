"""SharedStateCache, the cachelib backend, on a real server: what cachelib's own suite
(test_cachelib_suite.py) doesn't ask, and Flask-Caching and Flask-Session set up as
their docs say, through Flask's test client."""

from __future__ import annotations

import datetime as dt
import inspect
import subprocess
import sys
import time
from typing import Any

import pytest
from cachelib import BaseCache
from flask import Flask, session

from sharedstate import SharedState, get_shared_state
from sharedstate.cachelib import DEFAULT_KEY_PREFIX, SharedStateCache

from .support.processes import REPO_ROOT, fork_context, run_in_processes
from .support.servers import ServerProcess

pytestmark = pytest.mark.backends

RACERS = 12
KEYS = 40


def test_importing_sharedstate_does_not_import_cachelib() -> None:
    code = "import sys, sharedstate; print('cachelib' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert result.stdout.strip() == "False"


def test_every_public_method_of_base_cache_is_our_own() -> None:
    # BaseCache's methods are stubs (get returns None, has raises): each must be replaced,
    # except get_dict, which BaseCache builds on get_many.
    public = [name for name, _ in inspect.getmembers(BaseCache, inspect.isfunction)]
    for name in public:
        if not name.startswith("_") and name != "get_dict":
            assert getattr(SharedStateCache, name) is not getattr(BaseCache, name), name


def test_entries_are_prefixed_str_keys_of_the_shared_state(state: SharedState) -> None:
    cache = SharedStateCache()
    cache.set("page", "<html>")
    assert state["cachelib:page"] == "<html>"
    assert SharedStateCache(key_prefix=lambda: "tenant-1:").set("page", 1)
    assert state["tenant-1:page"] == 1
    assert SharedStateCache(key_prefix=None).set("bare", 2)
    assert state["bare"] == 2


def test_clear_deletes_only_the_keys_under_its_prefix(state: SharedState) -> None:
    state.update({"hits": 7, "cachelib-like": 1, ("cachelib:", "tuple"): 2})
    state["cachelib:x"] = "an entry"  # written by hand, but under the prefix: the cache's
    ours, other = SharedStateCache(), SharedStateCache(key_prefix="other:")
    ours.set_many({"a": 1, "b": 2})
    other.set("a", 3)
    assert ours.clear() is True
    assert ours.get_many("a", "b", "x") == [None, None, None]
    assert other.get("a") == 3
    assert state.get_many(["hits", "cachelib-like", ("cachelib:", "tuple")]) == {
        "hits": 7,
        "cachelib-like": 1,
        ("cachelib:", "tuple"): 2,
    }


def test_clear_without_a_prefix_deletes_nothing_and_says_so(state: SharedState) -> None:
    state["hits"] = 7
    cache = SharedStateCache(key_prefix="")
    cache.set("a", 1)
    assert cache.clear() is False
    assert state.to_dict() == {"hits": 7, "a": 1}


def test_timeouts_follow_cachelibs_rules(state: SharedState) -> None:
    cache = SharedStateCache(default_timeout=300)
    cache.set("default", 1)  # None: the default timeout
    cache.set("never", 1, timeout=0)  # 0: never expires
    cache.set("delta", 1, timeout=dt.timedelta(seconds=30))
    cache.set_many({"many": 1}, timeout=20)
    cache.add("added", 1, timeout=10)
    assert 299 < state.ttl("cachelib:default") <= 300  # type: ignore[operator]
    assert state.ttl("cachelib:never") is None
    assert 29 < state.ttl("cachelib:delta") <= 30  # type: ignore[operator]
    assert 19 < state.ttl("cachelib:many") <= 20  # type: ignore[operator]
    assert 9 < state.ttl("cachelib:added") <= 10  # type: ignore[operator]
    assert SharedStateCache(default_timeout=0).set("forever", 1)
    assert state.ttl("cachelib:forever") is None


def test_a_negative_timeout_means_already_expired(state: SharedState) -> None:
    # As in cachelib's SimpleCache and FileSystemCache: stored with a deadline in the past.
    cache = SharedStateCache()
    cache.set("gone", "old")
    assert cache.set("gone", "new", timeout=-1) is True
    assert not cache.has("gone")
    assert cache.add("fresh", 1, timeout=-5) is True
    assert not cache.has("fresh")
    cache.set("kept", 1)
    assert cache.add("kept", 2, timeout=-5) is False
    assert cache.get("kept") == 1


def test_entries_expire(state: SharedState) -> None:
    cache = SharedStateCache()
    cache.set("short", 1, timeout=1)
    assert cache.add("short", 2) is False
    time.sleep(1.2)
    assert cache.get("short") is None
    assert cache.add("short", 3) is True
    assert cache.get("short") == 3


def test_inc_creates_with_the_default_timeout_and_keeps_an_existing_one(
    state: SharedState,
) -> None:
    cache = SharedStateCache(default_timeout=60)
    assert cache.inc("new", 5) == 5
    assert 59 < state.ttl("cachelib:new") <= 60  # type: ignore[operator]
    cache.set("short", 10, timeout=5)
    assert cache.inc("short") == 11
    assert cache.dec("short", 3) == 8
    assert 0 < state.ttl("cachelib:short") <= 5  # type: ignore[operator]
    cache.set("forever", 1, timeout=0)
    assert cache.inc("forever") == 2
    assert state.ttl("cachelib:forever") is None
    assert SharedStateCache(default_timeout=0).inc("counter") == 1
    assert state.ttl("cachelib:counter") is None


def test_a_dict_or_list_comes_back_as_a_plain_copy(state: SharedState) -> None:
    cache = SharedStateCache()
    cache.set("user", {"name": "ann", "roles": ["admin"]})
    user = cache.get("user")
    assert type(user) is dict
    assert type(user["roles"]) is list
    user["roles"].append("root")  # changes the copy, never the cache
    [many] = cache.get_many("user")
    assert type(many) is dict
    assert cache.get("user") == {"name": "ann", "roles": ["admin"]}


def _add_every_key(barrier: Any) -> list[str]:
    cache = SharedStateCache()
    barrier.wait()
    return [f"job:{n}" for n in range(KEYS) if cache.add(f"job:{n}", "claimed")]


@pytest.mark.timeout(120)
def test_add_has_exactly_one_winner_among_processes(server: ServerProcess) -> None:
    barrier = fork_context.Barrier(RACERS)
    won = run_in_processes(_add_every_key, [(barrier,)] * RACERS)
    claims = sorted(key for keys in won for key in keys)
    assert claims == sorted(f"job:{n}" for n in range(KEYS))  # each key won once


def _increment(barrier: Any) -> None:
    cache = SharedStateCache()
    barrier.wait()
    for _ in range(50):
        cache.inc("hits")
        cache.dec("misses")


@pytest.mark.timeout(120)
def test_inc_and_dec_lose_nothing_among_processes(server: ServerProcess) -> None:
    barrier = fork_context.Barrier(RACERS)
    run_in_processes(_increment, [(barrier,)] * RACERS)
    assert SharedStateCache().get_many("hits", "misses") == [RACERS * 50, -RACERS * 50]


def test_a_cache_made_before_fork_works_in_the_child(server: ServerProcess) -> None:
    cache = SharedStateCache()  # connects nothing yet, like a gunicorn master's
    cache.set("parent", 1)
    [child] = run_in_processes(lambda: cache.inc("parent"), [()])
    assert child == 2
    assert cache.get("parent") == 2


def test_flask_caching_with_the_class_as_cache_type(state: SharedState) -> None:
    from flask_caching import Cache

    app = Flask(__name__)
    app.config.update(
        CACHE_TYPE="sharedstate.cachelib.SharedStateCache",
        CACHE_DEFAULT_TIMEOUT=60,
        CACHE_OPTIONS={"key_prefix": "flask_cache_"},
    )
    cache = Cache(app)

    @app.get("/slow")
    @cache.cached()
    def slow() -> str:
        return str(state.incr("computed"))

    client = app.test_client()
    assert [client.get("/slow").text for _ in range(5)] == ["1"] * 5
    assert state["computed"] == 1
    assert isinstance(app.extensions["cache"][cache], SharedStateCache)
    [key] = [key for key in state if key.startswith("flask_cache_")]
    assert 50 < state.ttl(key) <= 60  # type: ignore[operator]
    cache.clear()
    assert client.get("/slow").text == "2"


def test_flask_session_with_the_cache_as_its_cachelib_client(state: SharedState) -> None:
    from flask_session import Session  # type: ignore[import-untyped]

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="test-only",  # noqa: S106
        SESSION_TYPE="cachelib",
        SESSION_CACHELIB=SharedStateCache(key_prefix=""),  # Flask-Session prefixes: session:
        SESSION_PERMANENT=True,
        PERMANENT_SESSION_LIFETIME=dt.timedelta(minutes=10),
    )
    Session(app)

    @app.post("/login/<user>")
    def login(user: str) -> str:
        session["user"] = user
        return "ok"

    @app.get("/me")
    def me() -> str:
        return str(session.get("user"))

    client = app.test_client()
    assert client.post("/login/ann").text == "ok"
    assert client.get("/me").text == "ann"
    [key] = [key for key in state if key.startswith("session:")]
    assert state[key] == {"user": "ann", "_permanent": True}
    assert 590 < state.ttl(key) <= 600  # type: ignore[operator]
    assert app.test_client().get("/me").text == "None"  # another browser: another session


def test_the_state_property_is_the_shared_state_of_its_settings(state: SharedState) -> None:
    assert SharedStateCache().state is get_shared_state()
    assert SharedStateCache(start=False).state is get_shared_state(start=False)
    assert DEFAULT_KEY_PREFIX == "cachelib:"
