"""sharedstate's ``limits`` storage under real servers: Flask-Limiter in 4 gunicorn workers,
slowapi in 4 uvicorn workers, and every strategy against a real sharedstate server."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from limits import RateLimitItemPerSecond, parse
from limits.storage import storage_from_string
from limits.strategies import STRATEGIES

from sharedstate import get_shared_state
from sharedstate.limits import SharedStateStorage

from .support.gunicorns import Gunicorn, concurrent_gets
from .support.processes import REPO_ROOT, run_in_processes
from .support.servers import ServerProcess, free_tcp_port

pytestmark = pytest.mark.backends

STRATEGY_NAMES = ["fixed-window", "moving-window", "sliding-window-counter"]


def well_inside_a_minute(margin: float = 20.0) -> None:
    """Wait, if needed, so that the next ``margin`` seconds stay inside one clock minute.

    A "10 per minute" fixed window starts again at each minute (and a sliding window
    counter weighs the last one): requests on both sides of that moment may rightly get
    more than 10 through, which is the strategy, not a fault.
    """
    into_minute = time.time() % 60
    if into_minute > 60 - margin:
        time.sleep(60 - into_minute + 0.5)


@pytest.mark.local_only("the URI embeds the local server's socket path")
@pytest.mark.parametrize("uri", ["sharedstate://", "sharedstate:///{address}"])
def test_the_uri_names_the_server(uri: str, server: ServerProcess, address: str) -> None:
    storage = storage_from_string(uri.format(address=address.lstrip("/")))
    assert isinstance(storage, SharedStateStorage)
    assert storage.check()
    storage.incr("k", 60)
    assert get_shared_state(start=False)["limits:counter:k"] == 1


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_each_strategy_allows_the_limit_then_refuses_until_the_window_passes(
    strategy: str, server: ServerProcess
) -> None:
    limiter = STRATEGIES[strategy](storage_from_string("sharedstate://"))
    limit = RateLimitItemPerSecond(5, 1)
    time.sleep(1 - time.time() % 1 + 0.01)  # a window of its own, for the fixed ones
    assert [limiter.hit(limit, "ip") for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.get_window_stats(limit, "ip").remaining == 0
    assert limiter.hit(limit, "other-ip"), "each identifier has its own limit"
    time.sleep(2.1)  # the sliding window counter also weighs the last window
    assert limiter.hit(limit, "ip")
    limiter.clear(limit, "ip")
    assert limiter.get_window_stats(limit, "ip").remaining == 5


def test_rate_limit_keys_expire_on_the_server(server: ServerProcess) -> None:
    storage = storage_from_string("sharedstate://")
    assert isinstance(storage, SharedStateStorage)
    storage.incr("a", 1)
    assert storage.acquire_entry("b", 5, 1)
    assert storage.acquire_sliding_window_entry("c", 5, 1)
    state = get_shared_state(start=False)
    assert len(state) == 3
    time.sleep(2.2)  # the sliding window's count lives two windows, as in limits
    assert len(state) == 0
    assert storage.get("a") == 0
    assert storage.get_moving_window("b", 5, 1)[1] == 0


def test_reset_removes_only_rate_limit_keys(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    state["mine"] = 1
    storage = storage_from_string("sharedstate://")
    storage.incr("a", 60)
    assert isinstance(storage, SharedStateStorage)
    storage.acquire_entry("b", 5, 60)
    assert storage.reset() == 2
    assert state.to_dict() == {"mine": 1}


def _hit_many(strategy: str, times: int) -> list[bool]:
    limiter = STRATEGIES[strategy](storage_from_string("sharedstate://"))
    limit = parse("25/minute")
    return [limiter.hit(limit, "shared") for _ in range(times)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_8_processes_hitting_one_limit_get_exactly_the_limit(
    strategy: str, server: ServerProcess
) -> None:
    results = run_in_processes(_hit_many, [(strategy, 20)] * 8)
    assert Counter(hit for hits in results for hit in hits) == {True: 25, False: 135}


# -- Flask-Limiter under gunicorn, slowapi under uvicorn -----------------------------


@pytest.fixture
def limited_gunicorn(workdir: str) -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def start(*args: str) -> Gunicorn:
        master = Gunicorn(workdir, *args, app="tests.support.limiter_app:app")
        started.append(master)
        return master.start()

    yield start
    for master in started:
        if master.process is not None and master.process.poll() is None:
            master.process.kill()
            master.process.wait(30)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_flask_limiter_in_4_gunicorn_workers_lets_exactly_10_of_40_through(
    strategy: str,
    limited_gunicorn: Callable[..., Gunicorn],
    workdir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIMITER_STRATEGY", strategy)
    server = limited_gunicorn("-w", "4")
    well_inside_a_minute()
    responses = concurrent_gets(server, "/limited", 40)
    assert Counter(status for status, _ in responses) == {200: 10, 429: 30}
    assert len({pid for _, pid in responses}) > 1, "several workers answered"


@pytest.fixture
def uvicorn(workdir: str, server: ServerProcess) -> Iterator[Gunicorn]:
    """4 uvicorn workers serving tests/support/slowapi_app.py (a Gunicorn for its get())."""
    master = Gunicorn(workdir)
    master.port = free_tcp_port()
    master.argv = [sys.executable, "-m", "uvicorn", "--workers", "4", "--port", str(master.port),
                   "--app-dir", REPO_ROOT, "tests.support.slowapi_app:app"]  # fmt: skip
    try:
        yield master
    finally:
        if master.process is not None and master.process.poll() is None:
            master.process.terminate()
            try:
                master.process.wait(30)
            except subprocess.TimeoutExpired:
                master.process.kill()
                master.process.wait(30)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_slowapi_in_4_uvicorn_workers_lets_exactly_10_of_40_through(
    strategy: str, uvicorn: Gunicorn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIMITER_STRATEGY", strategy)
    uvicorn.start()
    well_inside_a_minute()
    responses = concurrent_gets(uvicorn, "/limited", 40)
    assert Counter(status for status, _ in responses) == {200: 10, 429: 30}
    assert len({pid for _, pid in responses}) > 1, "several workers answered"
