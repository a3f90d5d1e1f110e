"""sharedstate's asyncio ``limits`` storage (``async+sharedstate://``) on a real server:
every strategy through ``limits.aio.strategies``, counts shared with the sync storage,
many tasks and processes on one limit, and what ``reset()`` and ``clear()`` touch.

The tests are plain functions that run their coroutine in a new event loop
(tests/support/loops.py), as a storage meets one in each worker; the strategies and the
concurrency are tested on asyncio's loop and on uvloop's, which uvicorn picks when installed.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from limits import RateLimitItemPerSecond, parse
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import STRATEGIES

from sharedstate import ServerNotRunning, SharedState, get_shared_state
from sharedstate.limits import AsyncSharedStateStorage, SharedStateStorage

from .support.backends import NO_SERVER_THERE
from .support.loops import LOOPS, run_async, run_on
from .support.processes import run_in_processes
from .support.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.backends

STRATEGY_NAMES = ["fixed-window", "moving-window", "sliding-window-counter"]
T = TypeVar("T")
# limits.aio.strategies.STRATEGIES, typed so that mypy sees concrete classes.
ASYNC_STRATEGIES: dict[
    str,
    type[FixedWindowRateLimiter]
    | type[MovingWindowRateLimiter]
    | type[SlidingWindowCounterRateLimiter],
] = {
    "fixed-window": FixedWindowRateLimiter,
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}


def run(main: Callable[[], Awaitable[T]]) -> T:
    """``main()`` on a new asyncio loop, failing after 20 s (tests/support/loops.py)."""
    return run_on("asyncio", main, timeout=20.0)


def async_storage(uri: str = "async+sharedstate://", **options: Any) -> AsyncSharedStateStorage:
    storage = storage_from_string(uri, **options)
    assert isinstance(storage, AsyncSharedStateStorage)
    return storage


def well_inside_a_minute(margin: float = 20.0) -> None:
    """Wait, if needed, so that the next ``margin`` s stay inside one clock minute (a
    "per minute" fixed window starts again at each minute: see test_limits_storage.py)."""
    into_minute = time.time() % 60
    if into_minute > 60 - margin:
        time.sleep(60 - into_minute + 0.5)


@pytest.mark.local_only("starts a second local server and names its socket in the URI")
@pytest.mark.timeout(30)
def test_the_async_uri_names_the_server(
    state: SharedState, server_factory: ServerFactory, workdir: str
) -> None:
    other_address = os.path.join(workdir, "other.sock")
    server_factory(address=other_address).start()
    default = async_storage("async+sharedstate://")
    other = async_storage("async+sharedstate:///" + other_address.lstrip("/"))

    async def use() -> None:
        assert await default.check()
        assert await other.check()
        assert await default.incr("k", 60) == 1
        assert await other.incr("k", 60, amount=5) == 5

    run(use)
    assert state["limits:counter:k"] == 1, "sharedstate:// is the settings' address"
    assert get_shared_state(other_address, start=False)["limits:counter:k"] == 5


@pytest.mark.timeout(30)
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_each_async_strategy_allows_the_limit_then_refuses_until_the_window_passes(
    strategy: str, loop: str, server: ServerProcess
) -> None:
    limiter = ASYNC_STRATEGIES[strategy](async_storage())
    limit = RateLimitItemPerSecond(5, 1)

    async def use() -> None:
        await asyncio.sleep(1 - time.time() % 1 + 0.01)  # a window of its own
        assert [await limiter.hit(limit, "ip") for _ in range(7)] == [True] * 5 + [False] * 2
        assert (await limiter.get_window_stats(limit, "ip")).remaining == 0
        assert await limiter.hit(limit, "other-ip"), "each identifier has its own limit"
        await asyncio.sleep(2.1)  # the sliding window counter also weighs the last window
        assert await limiter.hit(limit, "ip")
        await limiter.clear(limit, "ip")
        assert (await limiter.get_window_stats(limit, "ip")).remaining == 5

    run_on(loop, use, timeout=20.0)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_sync_and_async_limiters_of_one_limit_count_together(
    strategy: str, server: ServerProcess
) -> None:
    sync_limiter = STRATEGIES[strategy](storage_from_string("sharedstate://"))
    async_limiter = ASYNC_STRATEGIES[strategy](async_storage())
    limit = parse("5/minute")
    well_inside_a_minute()
    assert [sync_limiter.hit(limit, "ip") for _ in range(3)] == [True] * 3

    async def use() -> list[bool]:
        assert (await async_limiter.get_window_stats(limit, "ip")).remaining == 2
        return [await async_limiter.hit(limit, "ip") for _ in range(3)]

    assert run(use) == [True, True, False]
    assert not sync_limiter.hit(limit, "ip")
    assert sync_limiter.get_window_stats(limit, "ip").remaining == 0


async def _hit_concurrently(strategy: str, tasks: int, limit: str = "25/minute") -> list[bool]:
    limiter = ASYNC_STRATEGIES[strategy](async_storage())
    return list(await asyncio.gather(*(limiter.hit(parse(limit), "shared") for _ in range(tasks))))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_100_tasks_hitting_one_limit_at_once_get_exactly_the_limit(
    strategy: str, loop: str, server: ServerProcess
) -> None:
    well_inside_a_minute()
    hits = run_on(loop, lambda: _hit_concurrently(strategy, 100), timeout=20.0)
    assert Counter(hits) == {True: 25, False: 75}


def _hit_from_a_process(strategy: str, tasks: int) -> list[bool]:
    if strategy.startswith("sync "):  # a sync worker among the async ones
        limiter = STRATEGIES[strategy[5:]](storage_from_string("sharedstate://"))
        return [limiter.hit(parse("25/minute"), "shared") for _ in range(tasks)]
    hits: list[bool] = run_async(lambda: _hit_concurrently(strategy, tasks))
    return hits


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_4_processes_of_20_tasks_and_a_sync_one_get_exactly_the_limit(
    strategy: str, server: ServerProcess
) -> None:
    well_inside_a_minute()
    results = run_in_processes(
        _hit_from_a_process, [(strategy, 20)] * 4 + [(f"sync {strategy}", 20)], timeout=60
    )
    assert Counter(hit for hits in results for hit in hits) == {True: 25, False: 75}


@pytest.mark.timeout(30)
def test_async_reset_and_clear_touch_only_rate_limit_keys(state: SharedState) -> None:
    state["mine"] = 1
    state["limits"] = 2  # not under "limits:"
    storage = async_storage()
    other = async_storage()

    async def use() -> None:
        await storage.incr("a", 60)
        assert await storage.acquire_entry("a", 5, 60)
        assert await storage.acquire_sliding_window_entry("a", 5, 60)
        assert await storage.acquire_entry("b", 5, 60)
        await storage.clear("a")
        assert sorted(state) == ["limits", "limits:moving:b", "mine"]
        await other.incr("c", 60)
        assert await storage.reset() == 2
        await storage.clear_sliding_window("nothing", 60)

    run(use)
    assert state.to_dict() == {"mine": 1, "limits": 2}


@pytest.mark.timeout(30)
def test_async_rate_limit_keys_expire_on_the_server(state: SharedState) -> None:
    storage = async_storage()

    async def use() -> None:
        await storage.incr("a", 1)
        assert await storage.get_expiry("a") == pytest.approx(time.time() + 1, abs=0.2)
        assert await storage.acquire_entry("b", 5, 1)
        assert await storage.acquire_sliding_window_entry("c", 5, 1)
        assert len(state) == 3
        await asyncio.sleep(2.2)  # the sliding window's count lives two windows
        assert len(state) == 0
        assert await storage.get("a") == 0
        assert await storage.get_expiry("a") == pytest.approx(time.time(), abs=0.2)
        assert (await storage.get_moving_window("b", 5, 1))[1] == 0
        assert (await storage.get_sliding_window("c", 1))[::2] == (0, 0)

    run(use)


@pytest.mark.timeout(30)
def test_one_async_storage_serves_one_event_loop_after_another(state: SharedState) -> None:
    """Created before any loop runs (at import time, before a fork), it connects in
    each loop that uses it, as an app's workers each run their own loop."""
    storage = async_storage()
    for expected in (1, 2, 3):
        assert run(lambda: storage.incr("k", 60)) == expected
    assert state["limits:counter:k"] == 3


@pytest.mark.local_only(NO_SERVER_THERE)
@pytest.mark.timeout(30)
def test_without_a_server_the_async_storage_fails_on_use_not_on_creation(
    workdir: str,
) -> None:
    storage = async_storage(start=False, timeout=2)  # connects on first use only
    wrapped = async_storage(start=False, timeout=2, wrap_exceptions=True)

    async def use() -> None:
        assert not await storage.check()
        with pytest.raises(ServerNotRunning):
            await storage.incr("k", 60)
        with pytest.raises(ServerNotRunning):
            await storage.acquire_entry("k", 5, 60)
        with pytest.raises(StorageError):
            await wrapped.acquire_sliding_window_entry("k", 5, 60)

    run(use)


@pytest.mark.timeout(10)
def test_both_storages_are_registered_by_importing_sharedstate_limits() -> None:
    assert isinstance(storage_from_string("sharedstate://"), SharedStateStorage)
    assert isinstance(storage_from_string("async+sharedstate://"), AsyncSharedStateStorage)


def _hold_an_edit(key: str, ready: threading.Event, seconds: float) -> None:
    with get_shared_state(start=False).edit(key, default=[], ttl=60):
        ready.set()
        time.sleep(seconds)


@pytest.mark.timeout(30)
def test_clear_while_another_worker_acquires_holds_back_no_other_call(
    state: SharedState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHAREDSTATE_CALL_TIMEOUT", "3")  # a stalled call fails in 3 s
    storage = async_storage()
    ready = threading.Event()
    # Another worker in the middle of a (slow) acquisition of "k": an edit of its window.
    holder = threading.Thread(target=_hold_an_edit, args=("limits:moving:k", ready, 1.0))

    async def use() -> list[object]:
        await storage.check()  # connected before the edit starts
        holder.start()
        assert ready.wait(5)
        # clear() waits for that edit to end; reads sent behind it on its connection wait
        # with it, and are all answered once it ends.
        return await asyncio.gather(
            storage.clear("k"),
            *(storage.get_moving_window(f"other-{n}", 5, 60) for n in range(30)),
            return_exceptions=True,
        )

    try:
        results = run(use)
    finally:
        holder.join(10)
    assert [result for result in results if isinstance(result, BaseException)] == []
