"""The Django cache backend: its own promises, and a Django project under real gunicorn.

Django's own cache tests run against it in test_django_suite.py; these cover what they
don't: atomicity across processes, what clear() leaves alone, sessions across workers.
"""

from __future__ import annotations

import http.cookiejar
import multiprocessing
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sharedstate import SharedState, get_shared_state
from sharedstate.django import NAMESPACE, SharedStateCache

from .support.gunicorns import Gunicorn
from .support.processes import wait_until
from .support.servers import ServerProcess

pytestmark = pytest.mark.backends

APP = "tests.support.django_app:application"


def cache(**params: object) -> SharedStateCache:
    return SharedStateCache("", dict(params))


# -- the backend, on a real server ------------------------------------------------------


def test_clear_deletes_this_caches_keys_and_no_others(state: SharedState) -> None:
    mine, other = cache(KEY_PREFIX="mine"), cache(KEY_PREFIX="other")
    state["app:config"] = {"debug": False}
    mine.set("a", 1)
    mine.set("a", 2, version=2)
    other.set("a", 3)
    mine.clear()
    assert mine.get("a") is None
    assert mine.get("a", version=2) is None
    assert other.get("a") == 3
    assert state["app:config"] == {"debug": False}


def test_keys_are_namespaced_by_prefix_and_version(state: SharedState) -> None:
    cache(KEY_PREFIX="p").set("k", "v")
    assert state[(NAMESPACE, "p", "p:1:k")] == "v"


def test_a_cached_dict_comes_back_as_a_plain_copy(state: SharedState) -> None:
    backend = cache()
    backend.set("d", {"n": 1, "items": [1]})
    value = backend.get("d")
    value["n"] = 2
    value["items"].append(2)
    assert type(value) is dict
    assert type(value["items"]) is list
    assert backend.get("d") == {"n": 1, "items": [1]}
    assert backend.get_many(["d"]) == {"d": {"n": 1, "items": [1]}}


def test_timeouts_map_to_ttls(state: SharedState) -> None:
    backend = cache(TIMEOUT=300)
    backend.set("default", 1)
    backend.set("forever", 1, timeout=None)
    backend.set("gone", 1, timeout=0)
    backend.set("negative", 1, timeout=-5)
    stored = {name: (NAMESPACE, "", f":1:{name}") for name in ["default", "forever"]}
    assert 299 < (state.ttl(stored["default"]) or 0) <= 300
    assert state.ttl(stored["forever"]) is None
    assert not backend.has_key("gone")
    assert not backend.has_key("negative")
    assert backend.touch("forever", 10) is True
    assert 9 < (state.ttl(stored["forever"]) or 0) <= 10
    assert backend.touch("forever", None) is True
    assert state.ttl(stored["forever"]) is None
    assert backend.touch("forever", None) is True  # already without expiry: still there
    assert backend.touch("missing", None) is False


def test_incr_keeps_the_expiry_and_refuses_a_missing_key(state: SharedState) -> None:
    backend = cache()
    backend.set("n", 1, timeout=60)
    assert backend.incr("n", 5) == 6
    assert 59 < (state.ttl((NAMESPACE, "", ":1:n")) or 0) <= 60
    with pytest.raises(ValueError, match="not found"):
        backend.incr("missing")
    assert not backend.has_key("missing")


def _add_and_count(address: str, rounds: int, start: Any, results: Any) -> None:
    backend = SharedStateCache(address, {})
    backend.has_key("warm-up")  # connect before the start, so that all race from it
    start.wait()
    won = [i for i in range(rounds) if backend.add(f"claim{i}", True)]
    results.put((won, [backend.incr("counter") for _ in range(rounds)]))


@pytest.mark.timeout(120)
def test_add_and_incr_are_atomic_across_processes(server: ServerProcess) -> None:
    cache(TIMEOUT=None).set("counter", 0)
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    workers = [
        context.Process(target=_add_and_count, args=(server.address, 300, start, results))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    try:
        outcomes = [results.get(timeout=60) for _ in workers]
    finally:
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
    claims = sorted(i for won, _ in outcomes for i in won)
    assert claims == list(range(300))  # each claim won exactly once
    counts = sorted(n for _, values in outcomes for n in values)
    assert counts == list(range(1, 1201))


def test_close_keeps_the_connection(state: SharedState) -> None:
    backend = cache()
    backend.set("k", 1)
    before = get_shared_state()
    backend.close()
    assert backend.get("k") == 1
    assert get_shared_state() is before


# -- a Django project under real gunicorn -----------------------------------------------


@pytest.fixture
def django_gunicorn(workdir: str) -> Iterator[Gunicorn]:
    """gunicorn with the example config, serving tests/support/django_app.py."""
    master = Gunicorn(workdir, "-w", "4", app=APP)
    try:
        master.start()
        yield master
    finally:
        if master.process is not None and master.process.poll() is None:
            master.stop()


@pytest.mark.timeout(120)
def test_100_concurrent_counts_get_1_to_100_each_once(django_gunicorn: Gunicorn) -> None:
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda _: django_gunicorn.get("/count"), range(100)))
    assert {status for status, _ in responses} == {200}
    assert sorted(int(body) for _, body in responses) == list(range(1, 101))


@pytest.mark.timeout(120)
def test_a_session_is_seen_by_every_worker(django_gunicorn: Gunicorn) -> None:
    wait_until(lambda: len(django_gunicorn.worker_pids()) == 4)
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    base = f"http://127.0.0.1:{django_gunicorn.port}"

    def get(path: str) -> str:
        with browser.open(base + path, timeout=30) as response:
            return str(response.read().decode())

    get("/login?user=ada")
    assert [cookie.name for cookie in jar] == ["sessionid"]
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 60
    while set(seen) != django_gunicorn.worker_pids() and time.monotonic() < deadline:
        with ThreadPoolExecutor(max_workers=8) as pool:  # concurrent: every worker takes some
            for body in pool.map(lambda _: get("/whoami?pause=0.1"), range(8)):
                pid, user = body.split()
                seen[int(pid)] = user
    assert set(seen) == django_gunicorn.worker_pids()
    assert set(seen.values()) == {"ada"}


def test_an_increment_racing_a_delete_leaves_no_key_behind(state: SharedState) -> None:
    # incr() checks the key, then increments with a ttl that only a key it creates gets:
    # had the key gone in between, this is what the increment would do to it.
    from sharedstate.django import _AT_ONCE

    key = (NAMESPACE, "", ":1:gone")
    state.incr(key, 5, ttl=_AT_ONCE)
    assert key not in state
