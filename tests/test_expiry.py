"""Keys with a TTL on a real server, with real clients, processes and time.

The rules themselves, on a clock the test moves, are in tests/test_expiry_store.py; the
memory bound's policies in tests/test_eviction.py.
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

import pytest

from sharedstate import (
    Conflict,
    KeyNotFound,
    MemoryLimitReached,
    SharedStateError,
    get_shared_state,
)

from .support.clients import fresh_state
from .support.persisted import snapshot_in
from .support.processes import (
    fork_context,
    kill_and_wait,
    run_cli,
    run_in_processes,
    start_process,
    wait_until,
)
from .support.servers import ServerFactory, ServerProcess, server_info

pytestmark = pytest.mark.backends


def test_an_expired_key_is_gone_for_every_operation(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    state.set("session", {"user": {"name": "ann"}, "cart": [1]}, ttl=0.5)
    state["config"] = 1
    view = state["session"]
    assert state.ttl("session") == pytest.approx(0.5, abs=0.2)
    wait_until(lambda: "session" not in state)
    assert state.get("session") is None
    with pytest.raises(KeyNotFound):
        state["session"]
    assert len(state) == 1
    assert state.keys() == ["config"]
    assert state.items() == [("config", 1)]
    assert state.to_dict() == {"config": 1}
    assert state.get_many(["session", "config"]) == {"config": 1}
    with pytest.raises(KeyNotFound):
        state.ttl("session")
    with pytest.raises(KeyNotFound):
        view["cart"].append(2)  # a nested write through a view read before it expired
    with pytest.raises(KeyNotFound):
        view["user"]["name"] = "bob"
    assert "session" not in state, "no nested write brought it back"
    assert list(state.export().data) == ["config"]
    assert run_cli("get", "session").returncode == 1


def test_ttl_persist_and_expire_over_the_wire(state: Any) -> None:
    state.set("k", 1, ttl=100)
    assert 99 < state.ttl("k") <= 100
    assert state.persist("k")
    assert state.ttl("k") is None
    assert state.expire("k", 0.3)
    wait_until(lambda: "k" not in state)
    assert not state.expire("k", 10)
    assert not state.persist("missing")
    state["plain"] = 1
    state.set_many({"a": 1, "b": 2}, ttl=50)
    assert state.ttl("a") == pytest.approx(50, abs=1)
    assert state.ttl("plain") is None


def test_a_fixed_window_counter_in_one_call(state: Any) -> None:
    assert [state.incr("hits", ttl=0.4) for _ in range(3)] == [1, 2, 3]
    wait_until(lambda: "hits" not in state)
    assert state.incr("hits", ttl=0.4) == 1


def _add(key: str, worker: int, start_at: float) -> bool:
    state = get_shared_state(start=False)
    time.sleep(max(0.0, start_at - time.time()))  # all at once
    return state.add(key, worker, ttl=30)


@pytest.mark.timeout(120)
def test_add_raced_by_16_processes_has_exactly_one_winner(server: ServerProcess) -> None:
    for round_ in range(5):
        key = f"claim:{round_}"
        start_at = time.time() + 0.5
        won = run_in_processes(_add, [(key, worker, start_at) for worker in range(16)])
        assert won.count(True) == 1, won
        assert fresh_state()[key] == won.index(True)


def test_an_edit_of_a_key_that_expires_meanwhile_is_a_conflict(state: Any) -> None:
    state.set("cart", [1], ttl=0.3)

    def slow_edit() -> None:
        with state.edit("cart") as cart:
            cart.append(2)
            time.sleep(0.5)

    with pytest.raises(Conflict, match="expired while it was being edited"):
        slow_edit()
    assert "cart" not in state


@pytest.mark.local_only("reads the local server's memory and expiry statistics")
@pytest.mark.timeout(120)
def test_expired_keys_nobody_reads_give_their_memory_back(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    empty = server_info()["memory_used"]
    state.set_many({f"k{index}": "x" * 100 for index in range(20_000)}, ttl=0.5)
    assert server_info()["memory_used"] > empty + 20_000 * 100
    wait_until(lambda: server_info()["expired"] == 20_000, timeout=30)
    info = server_info()
    assert info["memory_used"] == empty
    assert (info["keys"], info["expiring_keys"]) == (0, 0)


# -- persistence ---------------------------------------------------------------------


@pytest.mark.local_only("the local server's snapshot and journal after a kill")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("recovered_from", ["snapshot only", "journal only", "both"])
def test_expiry_times_survive_a_crash(
    server_factory: ServerFactory, workdir: str, recovered_from: str
) -> None:
    snapshot = snapshot_in(workdir)
    args = ["--snapshot", snapshot, "--fsync", "always"]
    if recovered_from == "snapshot only":
        args.append("--no-journal")
    server = server_factory(*args).start()
    state = get_shared_state(start=False)
    state.set("long", "stays", ttl=60)
    state.set("short", "goes", ttl=1)
    state.incr("window", ttl=60)
    state["plain"] = "forever"
    if recovered_from != "journal only":
        assert run_cli("snapshot").returncode == 0
    if recovered_from == "both":
        state.set("after", "journaled", ttl=60)
        state.expire("plain", 60)
    written = time.time()
    kill_and_wait(server.pid)
    time.sleep(max(0.0, written + 1.2 - time.time()))  # "short" expires while it's down
    server_factory(*args).start()
    state = fresh_state()
    assert "short" not in state, "expired while the server was down: never served"
    expected = {"long": "stays", "window": 1, "plain": "forever"}
    if recovered_from == "both":
        expected["after"] = "journaled"
    assert state.to_dict() == expected
    elapsed = time.time() - written
    for key in expected:
        if key == "plain" and recovered_from != "both":
            assert state.ttl(key) is None
        else:
            assert state.ttl(key) == pytest.approx(60 - elapsed, abs=1.5), key


def _write_expiring_until_cut(acked: Any) -> None:
    state = get_shared_state(start=False)
    index = acked.value
    try:
        while True:
            index += 1
            # Odd keys live 30 s, even ones 0.2 s; a counter per window of 10 keys.
            state.set(f"k{index}", index, ttl=30 if index % 2 else 0.2)
            state.incr(f"window{index // 10}", ttl=30)
            acked.value = index
    except SharedStateError:
        return


@pytest.mark.local_only("the local server's snapshot and journal after kill -9")
@pytest.mark.fault
@pytest.mark.timeout(180)
def test_no_live_key_is_lost_and_no_expired_key_served_across_kill_9_cycles(
    server_factory: ServerFactory, workdir: str
) -> None:
    args = ("--snapshot", snapshot_in(workdir), "--fsync", "always", "--snapshot-interval", "0.3")
    acked = fork_context.Value("q", 0)
    server = server_factory(*args).start()
    for _cycle in range(4):
        before = acked.value
        writer = start_process(_write_expiring_until_cut, acked)
        wait_until(lambda: acked.value > before + 30)  # noqa: B023
        time.sleep(random.uniform(0, 0.3))
        kill_and_wait(server.pid)
        writer.join(30)
        assert writer.exitcode == 0
        server = server_factory(*args).start()
        time.sleep(0.3)  # every short key acknowledged so far has expired
        state = fresh_state().to_dict()
        lost = [i for i in range(1, acked.value + 1, 2) if state.get(f"k{i}") != i]
        assert lost == [], f"acknowledged keys with a live ttl lost: {lost[:10]}"
        served = [key for key in state if key.startswith("k") and int(key[1:]) % 2 == 0]
        assert served == [], f"expired keys served after recovery: {served[:10]}"
        for window in range(1, acked.value // 10):
            assert state.get(f"window{window}") in (10, 11), window  # the cut one may be 1 more


@pytest.mark.local_only("restarts the local server between dump and restore")
def test_dump_and_restore_keep_expiry_times(server_factory: ServerFactory, workdir: str) -> None:
    server = server_factory().start()
    state = get_shared_state(start=False)
    state.set("session", "ann", ttl=60)
    state["plain"] = 1
    dump = os.path.join(workdir, "state.dump")
    assert run_cli("dump", dump).returncode == 0
    dumped = time.time()
    server.signal(signal.SIGTERM)
    server.wait()
    server_factory().start()
    assert run_cli("restore", dump, "--replace").returncode == 0
    state = fresh_state()
    assert state.to_dict() == {"session": "ann", "plain": 1}
    assert state.ttl("session") == pytest.approx(60 - (time.time() - dumped), abs=1.5)
    assert state.ttl("plain") is None


# -- the memory bound ----------------------------------------------------------------


@pytest.mark.local_only("the local server's --max-memory bound")
def test_at_the_bound_a_write_is_refused_and_nothing_stored_is_lost(
    server_factory: ServerFactory,
) -> None:
    server_factory("--max-memory", "200K").start()
    state = get_shared_state(start=False)
    stored = 0
    refused = None
    while refused is None:
        try:
            state[f"k{stored}"] = "x" * 1000
            stored += 1
        except MemoryLimitReached as error:
            refused = error
    assert "SHAREDSTATE_MAX_MEMORY=204,800" in str(refused)
    assert 150 < stored < 200
    assert state.to_dict() == {f"k{index}": "x" * 1000 for index in range(stored)}
    info = server_info()
    assert info["memory_used"] <= 200 * 1024
    del state["k0"]
    state["new"] = "x" * 1000  # room again


@pytest.mark.local_only("the local server's --eviction policies")
def test_allkeys_lru_keeps_the_data_under_the_bound(server_factory: ServerFactory) -> None:
    server_factory("--max-memory", "200K", "--eviction", "allkeys-lru").start()
    state = get_shared_state(start=False)
    for index in range(1000):
        state[f"k{index}"] = "x" * 1000
        if index % 10 == 0:
            assert state["k0"], "read often: never evicted"
    info = server_info()
    assert info["memory_used"] <= 200 * 1024
    assert info["evicted"] > 800
    assert "k0" in state
    assert "k999" in state
    assert "k1" not in state


@pytest.mark.local_only("the local server's --eviction policies")
def test_volatile_lru_evicts_only_keys_with_a_ttl(server_factory: ServerFactory) -> None:
    server_factory("--max-memory", "200K", "--eviction", "volatile-lru").start()
    state = get_shared_state(start=False)
    state.update({f"config{index}": "x" * 1000 for index in range(50)})
    for index in range(500):
        state.set(f"session{index}", "x" * 1000, ttl=600)
        assert state["session0"], "read often: never evicted"
    assert all(f"config{index}" in state for index in range(50)), "no key without a TTL goes"
    assert "session0" in state
    assert "session1" not in state
    info = server_info()
    assert info["memory_used"] <= 200 * 1024
    assert info["evicted"] > 300


@pytest.mark.local_only("the local server's --eviction policies")
def test_volatile_ttl_evicts_the_keys_that_expire_soonest(server_factory: ServerFactory) -> None:
    server_factory("--max-memory", "200K", "--eviction", "volatile-ttl").start()
    state = get_shared_state(start=False)
    state["config"] = "x" * 1000
    for index in range(500):
        state.set(f"k{index}", "x" * 1000, ttl=1000 - index)  # later keys expire sooner
    kept = [index for index in range(500) if f"k{index}" in state]
    # The longest-lived keys stay, and the one just written (evictions come before it).
    assert kept == [*range(len(kept) - 1), 499]
    assert len(kept) > 100
    assert "config" in state
    assert server_info()["memory_used"] <= 200 * 1024


def test_an_edit_writes_back_with_the_ttl_it_is_given(state: Any) -> None:
    with state.edit("window", default=[], ttl=0.5) as window:
        window.append(1)
    assert state["window"] == [1]
    assert 0 < state.ttl("window") <= 0.5
    wait_until(lambda: "window" not in state)
