"""What is particular to the Redis backend: how values, keys and numbers are kept in
Redis, prefixes that don't meet, edits against plain writes, leases, and no command
ever applied twice. The API's behaviour on Redis is the conformance suite's
(``backends``-marked tests run on both backends); these are the parts it can't see.
Against the session's real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import math
import pickle
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from sharedstate import (
    Conflict,
    ConnectionLost,
    LeaseExpired,
    LockLost,
    SharedState,
    WrongType,
)
from sharedstate.aio import AsyncSharedState
from sharedstate.aio.state import connect_state as aio_connect_state
from sharedstate.backends.redis.operations import Operations
from sharedstate.client.state import connect_state
from sharedstate.config import load_settings
from sharedstate.protocol import OPERATIONS

from .support.aio_calls import cancel_at_random
from .support.loops import LOOPS, run_on
from .support.processes import wait_until
from .support.redis_servers import RedisServer


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """redis-py straight to the server, to see what sharedstate stored."""
    client = redis.Redis.from_url(redis_server.url())
    yield client
    client.close()


def on_redis(url: str, prefix: str, **more: Any) -> SharedState:
    settings = load_settings({"address": url, "prefix": prefix, **more})
    return connect_state(settings, start=False, timeout=10.0)


@pytest.fixture
def state(redis_server: RedisServer, prefix: str) -> Iterator[SharedState]:
    state = on_redis(redis_server.url(), prefix)
    yield state
    state.close()


def test_every_store_operation_has_a_redis_implementation() -> None:
    missing = [name for name in OPERATIONS if not callable(getattr(Operations, name, None))]
    assert missing == []


@pytest.mark.parametrize(
    "value",
    [0, -7, 2**63 - 1, -(2**63), 2**64, 10**40, 1.5, -0.0, math.inf, -math.inf, 1e300, True,
     False, None, "42", b"42", "3.5", [1, 2], {"a": 1}],
)  # fmt: skip
def test_values_come_back_with_their_type(state: SharedState, value: Any) -> None:
    state["v"] = value
    back = state.to_dict()["v"]  # plain data, not a view
    assert type(back) is type(value)
    assert back == value
    if isinstance(value, float):
        assert math.copysign(1, back) == math.copysign(1, value)


def test_nan_comes_back_as_nan(state: SharedState) -> None:
    state["v"] = math.nan
    assert math.isnan(state["v"])


def test_numbers_are_text_in_redis_so_redis_can_add_to_them(
    state: SharedState, raw: redis.Redis, prefix: str
) -> None:
    state["n"] = 41
    state["f"] = 0.5
    state["s"] = "41"
    assert raw.get(f"{prefix}k:s:n") == b"41"
    assert raw.get(f"{prefix}k:s:f") == b"0.5"
    assert raw.get(f"{prefix}k:s:s") == pickle.dumps("41", protocol=pickle.HIGHEST_PROTOCOL)
    raw.set(f"{prefix}k:s:from_elsewhere", "12")  # another program's counter
    assert state["from_elsewhere"] == 12


def test_keys_come_back_as_they_went_in(state: SharedState) -> None:
    keys = ["a", "ü ✓", b"a", b"\x00\xff", 1, -5, 10**30, 1.5, None, (1, "x"), ("a", (2, None))]
    for index, key in enumerate(keys):
        state[key] = index
    assert sorted(map(repr, state.keys())) == sorted(map(repr, keys))
    for index, key in enumerate(keys):
        assert state[key] == index


def test_keys_a_dict_takes_as_equal_are_one_key(state: SharedState) -> None:
    state[1] = "int"
    state[True] = "bool"
    state[1.0] = "float"
    assert state.keys() == [1]
    assert state[1] == "float"
    state[(1, "x")] = "tuple"
    assert state[(True, "x")] == "tuple"


def test_incr_adds_inside_redis_with_pythons_arithmetic(state: SharedState) -> None:
    assert state.incr("n") == 1
    assert state.incr("n", 41) == 42
    assert state.incr("n", 0.5) == 42.5
    state["f"] = 0.1
    total = state.incr("f", 0.2)
    assert total == 0.1 + 0.2  # the same double as Python's, not a rounded one
    state["g"] = 5.0
    assert state.incr("g", 1) == 6.0
    assert type(state["g"]) is float


def test_incr_past_64_bits_goes_on_as_a_python_int(state: SharedState) -> None:
    state["n"] = 2**63 - 1
    assert state.incr("n") == 2**63
    assert state.incr("n", 2**70) == 2**63 + 2**70
    assert state.incr("n", -(2**70)) == 2**63
    assert state["n"] == 2**63


def test_incr_of_a_value_that_is_not_a_number_is_refused(state: SharedState) -> None:
    state["s"] = "7"
    with pytest.raises(WrongType):
        state.incr("s")
    assert state["s"] == "7"


def test_incr_sets_a_ttl_only_on_the_key_it_creates(state: SharedState) -> None:
    state.incr("made", ttl=100)
    made = state.ttl("made")
    assert made is not None
    assert 99 < made <= 100
    state["old"] = 1
    state.incr("old", ttl=100)
    assert state.ttl("old") is None


def test_prefixes_never_meet(redis_server: RedisServer, prefix: str) -> None:
    # A prefix with SCAN's wildcard characters must match only itself.
    mine = on_redis(redis_server.url(), prefix + "a*[b]:")
    other = on_redis(redis_server.url(), prefix + "aX[b]:")
    try:
        mine["k"] = other["k"] = 1
        mine.namespace.n = other.namespace.n = 1
        other["only_other"] = 2
        assert mine.keys() == ["k"]
        assert len(mine) == 1
        mine.clear()
        assert len(mine) == 0
        assert sorted(other.keys()) == ["k", "only_other"]
        assert other.namespace.n == 1
    finally:
        mine.close()
        other.close()


def test_a_plain_write_during_an_edit_makes_the_commit_refuse(
    redis_server: RedisServer, state: SharedState, prefix: str
) -> None:
    other = on_redis(redis_server.url(), prefix)
    state["doc"] = {"n": 1}
    try:

        def edit_around_a_plain_write() -> None:
            with state.edit("doc") as doc:
                other["doc"] = {"n": 100}
                doc["n"] += 1

        with pytest.raises(Conflict, match="while it was being edited"):
            edit_around_a_plain_write()
        assert state["doc"] == {"n": 100}  # the plain write stands; nothing lost silently
        with state.edit("doc") as doc:  # the edit ended: it can be done again
            doc["n"] += 1
        assert state["doc"] == {"n": 101}
    finally:
        other.close()


def test_edits_of_one_key_wait_for_each_other(
    redis_server: RedisServer, state: SharedState, prefix: str
) -> None:
    state["doc"] = {"n": 0}
    states = [on_redis(redis_server.url(), prefix) for _ in range(4)]
    try:

        def bump(each: SharedState) -> None:
            for _ in range(10):
                with each.edit("doc", timeout=30) as doc:
                    doc["n"] += 1

        threads = [threading.Thread(target=bump, args=(each,)) for each in states]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert state["doc"] == {"n": 40}
    finally:
        for each in states:
            each.close()


def test_a_lapsed_lease_is_reported_at_each_call_and_at_release(
    state: SharedState, raw: redis.Redis, prefix: str
) -> None:
    assert state.lock.acquire(lease=0.2)
    wait_until(lambda: not raw.exists(f"{prefix}lock"), timeout=10)
    with pytest.raises(LeaseExpired, match="must not go on as if it held it"):
        state.get("x")
    with pytest.raises(LeaseExpired, match="came after the lock's lease ran out"):
        state.lock.release()
    assert state.get("x") is None  # released: calls go on


def test_a_living_holder_keeps_the_lock_past_the_lease(
    redis_server: RedisServer, prefix: str
) -> None:
    holder = on_redis(redis_server.url(), prefix, redis_lease=0.3)
    other = on_redis(redis_server.url(), prefix, redis_lease=0.3)
    try:
        with holder.lock.hold():
            deadline = time.monotonic() + 1.5  # five leases
            while time.monotonic() < deadline:
                assert not other.lock.acquire(blocking=False)
                time.sleep(0.05)
        assert other.lock.acquire(timeout=5)
        other.lock.release()
    finally:
        holder.close()
        other.close()


def test_a_lock_redis_lost_raises_lock_lost_in_the_holder(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    state = on_redis(redis_server.url(), prefix, redis_lease=0.3)
    try:
        assert state.lock.acquire()
        raw.delete(f"{prefix}lock")  # as if Redis restarted without its data

        def lost() -> bool:
            try:
                state.get("x")
            except LockLost:
                return True
            return False

        wait_until(lost, timeout=10)  # once the watchdog found it gone
        with pytest.raises(LockLost):
            state.lock.release()
    finally:
        state.close()


class CuttingProxy:
    """A TCP proxy to Redis that, once armed, lets a command through but drops the
    connection before the reply: the worst moment for a write."""

    def __init__(self, target_port: int, cut_on: bytes) -> None:
        self.target_port = target_port
        self.cut_on = cut_on  # what, in a command, arms the cut
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.cuts = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            # Once cut, this connection's replies are no longer passed on; the first one
            # held back (Redis ran the command) is noted in ``dropped``.
            cut, dropped = threading.Event(), threading.Event()
            up = (client, server, cut, dropped)
            threading.Thread(target=self._up, args=up, daemon=True).start()
            down = (server, client, cut, dropped)
            threading.Thread(target=self._down, args=down, daemon=True).start()

    def _up(
        self,
        client: socket.socket,
        server: socket.socket,
        cut: threading.Event,
        dropped: threading.Event,
    ) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.armed.is_set() and self.cut_on in data:
                    self.armed.clear()
                    cut.set()
                    server.sendall(data)
                    dropped.wait(10)  # Redis ran it: its reply came, and goes nowhere
                    self.cuts += 1
                    break
                server.sendall(data)
        for each in (client, server):
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            each.close()

    def _down(
        self,
        server: socket.socket,
        client: socket.socket,
        cut: threading.Event,
        dropped: threading.Event,
    ) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if cut.is_set():
                    dropped.set()
                    return
                client.sendall(data)

    def close(self) -> None:
        self._stop = True
        self.listener.close()


def test_a_write_cut_off_is_reported_and_never_applied_twice(
    redis_server: RedisServer, prefix: str
) -> None:
    proxy = CuttingProxy(redis_server.port, cut_on=b"INCRBY")
    url = f"redis://:{redis_server.password}@127.0.0.1:{proxy.port}/0"
    state = on_redis(url, prefix)
    try:
        assert state.incr("n") == 1
        proxy.armed.set()
        with pytest.raises(ConnectionLost, match="may or may not have taken effect"):
            state.incr("n")
        assert proxy.cuts == 1
        assert state["n"] == 2  # applied once: redis-py's own retry would have made it 3
        assert state.incr("n") == 3  # and the state reconnected by itself
    finally:
        state.close()
        proxy.close()


def test_a_lock_taken_but_whose_reply_was_lost_is_freed_at_once(
    redis_server: RedisServer, prefix: str
) -> None:
    proxy = CuttingProxy(redis_server.port, cut_on=b"NX")
    url = f"redis://:{redis_server.password}@127.0.0.1:{proxy.port}/0"
    state = on_redis(url, prefix)  # the default lease: 10 s
    other = on_redis(redis_server.url(), prefix)
    try:
        proxy.armed.set()
        with pytest.raises(ConnectionLost):
            state.lock.acquire()
        assert proxy.cuts == 1
        # Not held by nobody until the lease runs out: freed as the acquire failed.
        assert other.lock.acquire(timeout=5)
        other.lock.release()
        with state.lock.hold(timeout=5):  # and the state reconnected by itself
            pass
    finally:
        state.close()
        other.close()
        proxy.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("loop", LOOPS)
def test_cancelling_any_async_call_leaves_nothing_held_on_redis(
    redis_server: RedisServer, raw: redis.Redis, prefix: str, loop: str
) -> None:
    settings = load_settings({"address": redis_server.url(), "prefix": prefix})
    rng = random.Random(16)

    async def main() -> dict[str, int]:
        state = aio_connect_state(settings, max_connections=3)
        try:
            return await cancel_and_check(state)
        finally:
            await state.aclose()  # even on failure: uvloop's close() hangs on open sockets

    def edit_conflicted(kind: str, error: BaseException) -> bool:
        # On Redis a plain write (set_in) during an edit makes its commit refuse.
        return kind == "edit" and isinstance(error, Conflict)

    async def cancel_and_check(state: AsyncSharedState) -> dict[str, int]:
        await state.set("doc", {"n": 0})
        cancelled = await cancel_at_random(state, rng, rounds=30, tolerated=edit_conflicted)
        # Nothing held by nobody: freed at once, not when the 10 s lease runs out.
        deadline = time.monotonic() + 3
        while raw.exists(f"{prefix}lock") or raw.keys(f"{prefix}e:*"):
            assert time.monotonic() < deadline, raw.keys(f"{prefix}*")
            await asyncio.sleep(0.05)
        assert await state.incr("check") == 1
        async with state.lock.hold(timeout=1):
            pass
        return cancelled

    cancelled = run_on(loop, main, timeout=100)
    assert all(count > 10 for count in cancelled.values()), cancelled


def test_a_ttl_under_redis_resolution_expires_at_once(state: SharedState) -> None:
    # Redis counts in milliseconds; the local server treats such a key as expired.
    state.set("s", 1, ttl=1e-9)
    assert state.add("a", 1, ttl=1e-9) is True
    state.set_many({"m1": 1, "m2": 2}, ttl=1e-9)
    assert state.incr("i", 5, ttl=1e-9) == 5
    state["e"] = 1
    assert state.expire("e", 1e-9) is True
    with state.edit("d", default=0, ttl=1e-9) as value:
        assert value == 0
    assert state.keys() == []


def test_a_key_another_program_wrote_under_the_prefix_is_named(
    state: SharedState, raw: redis.Redis, prefix: str
) -> None:
    raw.set(f"{prefix}k:not-ours", b"1")
    with pytest.raises(WrongType, match="another program uses the same prefix"):
        state.keys()
