"""Limits that keep one runaway client from taking the server down with it."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from sharedstate import ConfigError, TooManyClients, ValueTooLarge, get_shared_state
from sharedstate.config import load_settings
from sharedstate.launcher import call_server_function
from sharedstate.server import MAX_HANDSHAKES
from sharedstate.state import connect_state

from .conftest import ServerProcess
from .processes import run_cli, wait_until


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _client_count() -> int:
    return len(call_server_function(load_settings({}), "server_info", 5)["clients"])


def test_past_max_clients_new_clients_are_refused_clearly(
    server_factory: type[ServerProcess],
) -> None:
    server = server_factory("--max-clients", "4").start()
    settings = load_settings({})
    states = [connect_state(settings, start=False, timeout=5) for _ in range(4)]
    threads, descriptors = _threads(server.pid), _descriptors(server.pid)
    for _ in range(50):
        with pytest.raises(TooManyClients, match="already serves 4 connections.*MAX_CLIENTS"):
            connect_state(settings, start=False, timeout=5)
    assert run_cli("status").returncode == 0, "operators can still reach a full server"
    wait_until(lambda: _threads(server.pid) == threads)
    wait_until(lambda: _descriptors(server.pid) == descriptors)
    server.wait_for_log("refused a client")

    states.pop().close()
    wait_until(lambda: _client_count() == 3)
    late = connect_state(settings, start=False, timeout=5)
    late["ok"] = 1
    assert all(state["ok"] == 1 for state in states)


def test_connections_that_never_authenticate_get_a_bounded_number_of_threads(
    server: ServerProcess,
) -> None:
    state = get_shared_state(start=False)
    state["x"] = 1
    threads = _threads(server.pid)
    silent = []
    try:
        for _ in range(3 * MAX_HANDSHAKES):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(server.address)
            silent.append(sock)
        wait_until(lambda: _threads(server.pid) >= threads + MAX_HANDSHAKES)
        assert _threads(server.pid) <= threads + MAX_HANDSHAKES
        assert state["x"] == 1, "connected clients are served meanwhile"
    finally:
        for sock in silent:
            sock.close()
    wait_until(lambda: _threads(server.pid) == threads)
    assert get_shared_state(start=False)["x"] == 1


def test_a_value_over_max_value_bytes_is_refused_before_it_is_sent(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHAREDSTATE_MAX_VALUE_BYTES", "64K")
    state = get_shared_state(start=False)
    state["cfg"] = {"small": 1}
    cfg = state["cfg"]
    requests = _requests_served()
    with pytest.raises(ValueTooLarge, match=r"state\['big'\] is .* over the limit of 65,536"):
        state["big"] = b"x" * 70_000
    with pytest.raises(ValueTooLarge, match="SHAREDSTATE_MAX_VALUE_BYTES"):
        cfg["large"] = "y" * 70_000
    with pytest.raises(ValueTooLarge):
        state.set_many({"fine": 1, "big": b"x" * 70_000})
    assert _requests_served() == requests, "nothing reached the server"
    state["big"] = b"x" * 60_000  # under the limit
    assert state.get("fine") is None
    assert state["cfg"] == {"small": 1}


def _requests_served() -> int:
    clients = call_server_function(load_settings({}), "server_info", 5)["clients"]
    return sum(client["requests"] for client in clients)


@pytest.mark.parametrize("value", ["0", "-5", "lots", "2G", "64X"])
def test_a_bad_max_value_bytes_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SHAREDSTATE_MAX_VALUE_BYTES", value)
    with pytest.raises(ConfigError, match="SHAREDSTATE_MAX_VALUE_BYTES"):
        load_settings({})


def test_an_absurd_request_length_disconnects_only_its_sender(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    state["x"] = 1
    settings = load_settings({})
    rogue = connect_state(settings, start=False, timeout=5)
    conn = rogue._transport._local.conn
    assert conn is not None
    # -1 announces an 8-byte length: 2**40 bytes, far past what any client may send.
    os.write(conn.fileno(), struct.pack("!i", -1) + struct.pack("!Q", 1 << 40))
    server.wait_for_log("sent a malformed message (bad message length 1099511627776)")
    assert state["x"] == 1
