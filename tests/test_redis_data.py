"""`sharedstate dump` and `restore` between the local server and Redis, both ways.

The CLI runs as an operator runs it, one process per command, with the address in
``SHAREDSTATE_ADDRESS``. Values, the namespace and expiry times cross over; a key that
expired after the dump is not brought back; and on Redis only this app's prefix is
touched: another app's keys (another prefix) and keys of no app in the same Redis
survive ``restore --replace`` and ``clear()`` byte for byte. Each test starts its own
Redis, so the whole keyspace is known and can be checked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import redis

import sharedstate.client.state
from sharedstate import SharedState, get_shared_state

from .support.dumps import RICH
from .support.machines import unique_prefix
from .support.processes import run_cli, wait_until
from .support.redis_servers import RedisServer
from .support.servers import ServerProcess

LONG_TTL = 100.0
SHORT_TTL = 1.0  # expires between the dump and the restore


@pytest.fixture
def own_redis(workdir: str) -> Iterator[RedisServer]:
    server = RedisServer(os.path.join(workdir, "redis")).start()
    try:
        yield server
    finally:
        server.stop()


def raw_client(server: RedisServer) -> redis.Redis:
    """A plain redis-py client: the keyspace as Redis itself has it."""
    return redis.Redis.from_url(server.url())


def on_redis(server: RedisServer, prefix: str) -> dict[str, str]:
    """The environment of a CLI command, or a state, for ``prefix`` on ``server``."""
    return {"SHAREDSTATE_ADDRESS": server.url(), "SHAREDSTATE_PREFIX": prefix}


def redis_state(monkeypatch: pytest.MonkeyPatch, server: RedisServer, prefix: str) -> SharedState:
    for name, value in on_redis(server, prefix).items():
        monkeypatch.setenv(name, value)
    sharedstate.client.state.forget_settings()
    return get_shared_state()


def fill(state: SharedState) -> None:
    """The values, a key that lives on, one about to expire, and the namespace."""
    state.update(RICH)
    state.set("for-a-while", "still here", ttl=LONG_TTL)
    state.set("brief", "gone soon", ttl=SHORT_TTL)
    state.namespace.mode = "live"


def assert_filled(state: SharedState) -> None:
    assert state.to_dict() == {**RICH, "for-a-while": "still here"}  # "brief" not back
    left = state.ttl("for-a-while")
    assert left is not None
    assert LONG_TTL - 15 < left <= LONG_TTL  # its time runs on from the dump, not anew
    assert state.ttl("text") is None
    assert state.namespace.to_dict() == {"mode": "live"}


def others_on(client: redis.Redis, other_prefix: str) -> dict[bytes, bytes | None]:
    """Every key in Redis that is not this app's, with its value as Redis serializes it."""
    names = [name for name in client.scan_iter() if not name.startswith(other_prefix.encode())]
    return {name: client.dump(name) for name in names}


def test_a_local_dump_restores_into_redis(
    server: ServerProcess,
    own_redis: RedisServer,
    address: str,
    workdir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local = get_shared_state(start=False)
    fill(local)
    path = os.path.join(workdir, "local.dump")
    dumped = run_cli("dump", path, env={"SHAREDSTATE_ADDRESS": address})
    assert dumped.returncode == 0, dumped.stderr
    wait_until(lambda: "brief" not in local)  # expired since the dump
    ours, theirs = unique_prefix(), unique_prefix()
    client = raw_client(own_redis)
    client.set("no-app's-key", b"kept")
    other_app = run_cli("set", "theirs", '"kept"', env=on_redis(own_redis, theirs))
    assert other_app.returncode == 0, other_app.stderr
    assert run_cli("set", "stale", "1", env=on_redis(own_redis, ours)).returncode == 0
    before = others_on(client, ours)
    assert len(before) >= 2  # the other app's key, and the key of no app

    restored = run_cli("restore", path, "--replace", env=on_redis(own_redis, ours))
    assert restored.returncode == 0, restored.stderr
    state = redis_state(monkeypatch, own_redis, ours)
    assert_filled(state)  # "stale" replaced, "brief" not resurrected
    assert others_on(client, ours) == before
    assert any(name.startswith(ours.encode()) for name in client.scan_iter())

    state.clear()
    assert len(state) == 0
    assert others_on(client, ours) == before


def test_a_redis_dump_restores_into_the_local_server(
    server: ServerProcess,
    own_redis: RedisServer,
    address: str,
    workdir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local = get_shared_state(start=False)
    local["stale"] = 1
    ours, theirs = unique_prefix(), unique_prefix()
    client = raw_client(own_redis)
    client.set("no-app's-key", b"not ours")
    assert run_cli("set", "theirs", '"not ours"', env=on_redis(own_redis, theirs)).returncode == 0
    state = redis_state(monkeypatch, own_redis, ours)
    fill(state)
    path = os.path.join(workdir, "redis.dump")
    dumped = run_cli("dump", path, env=on_redis(own_redis, ours))
    assert dumped.returncode == 0, dumped.stderr
    wait_until(lambda: "brief" not in state)  # expired since the dump

    restored = run_cli("restore", path, "--replace", env={"SHAREDSTATE_ADDRESS": address})
    assert restored.returncode == 0, restored.stderr
    assert_filled(local)  # only our prefix was dumped: nothing of the others came along


def test_a_json_dump_of_one_prefix_merges_into_another(
    own_redis: RedisServer, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = unique_prefix(), unique_prefix()
    state = redis_state(monkeypatch, own_redis, source)
    state.update({"n": 3, "cfg": {"a": [1, None]}})
    state.set("for-a-while", "still here", ttl=LONG_TTL)
    path = os.path.join(workdir, "redis.json")
    dumped = run_cli("dump", path, "--format", "json", env=on_redis(own_redis, source))
    assert dumped.returncode == 0, dumped.stderr
    with open(path, encoding="utf-8") as file:
        assert set(json.load(file)["expires"]) == {"for-a-while"}
    assert run_cli("set", "kept", "true", env=on_redis(own_redis, target)).returncode == 0

    restored = run_cli("restore", path, "--merge", env=on_redis(own_redis, target))
    assert restored.returncode == 0, restored.stderr
    merged = redis_state(monkeypatch, own_redis, target)
    assert merged.to_dict() == {
        "n": 3,
        "cfg": {"a": [1, None]},
        "for-a-while": "still here",
        "kept": True,
    }
    left = merged.ttl("for-a-while")
    assert left is not None
    assert LONG_TTL - 15 < left <= LONG_TTL
    assert redis_state(monkeypatch, own_redis, source).to_dict() == state.to_dict()
