"""Limits that keep one runaway client from taking the server down with it."""

from __future__ import annotations

import os
import socket
import struct
import time
from multiprocessing.connection import Connection

import pytest

from bench.procfs import resources
from sharedstate import ConfigError, TooManyClients, ValueTooLarge, get_shared_state
from sharedstate.address import parse_address
from sharedstate.client.launcher import call_server_function
from sharedstate.client.state import connect_state
from sharedstate.client.transport import Transport, handshake
from sharedstate.config import load_settings
from sharedstate.server.loop import MAX_GREETING

from .support.processes import run_cli, wait_until
from .support.servers import (
    ServerFactory,
    ServerProcess,
    free_tcp_port,
    requests_served,
    server_info,
)
from .support.wire import store_connection


def test_past_max_clients_new_clients_are_refused_clearly(
    server_factory: ServerFactory,
) -> None:
    server = server_factory("--max-clients", "4").start()
    settings = load_settings({})
    states = [connect_state(settings, start=False, timeout=5) for _ in range(4)]
    threads, descriptors = resources(server.pid)
    for _ in range(50):
        with pytest.raises(TooManyClients, match="already serves 4 connections.*MAX_CLIENTS"):
            connect_state(settings, start=False, timeout=5)
    assert run_cli("status").returncode == 0, "operators can still reach a full server"
    wait_until(lambda: resources(server.pid).threads == threads)
    wait_until(lambda: resources(server.pid).fds == descriptors)
    server.wait_for_log("refused a client")

    states.pop().close()
    wait_until(lambda: len(server_info()["clients"]) == 3)
    late = connect_state(settings, start=False, timeout=5)
    late["ok"] = 1
    assert all(state["ok"] == 1 for state in states)


@pytest.mark.timeout(120)
def test_silent_slow_and_idle_connections_never_keep_out_a_new_client_or_status(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TCP on loopback: any local user can open these, no key needed for the first kind.
    address = f"127.0.0.1:{free_tcp_port()}"
    monkeypatch.setenv("SHAREDSTATE_ADDRESS", address)
    server = server_factory(address=address).start()
    settings = load_settings({})
    key = settings.load_key()
    assert key is not None
    state = connect_state(settings, start=False, timeout=5)
    state["x"] = 1
    threads = resources(server.pid).threads
    held: list[socket.socket | Connection] = []
    try:
        for number in range(400):  # never authenticate: silent, or a trickle of bytes
            sock = socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])))
            if number % 2:
                sock.send(b"\x00\x00\x00")  # less than a frame header
            held.append(sock)
        target = parse_address(address)
        trusted = frozenset({os.getuid()})
        for _ in range(64):  # authenticated, then silent before their first request
            conn, _ = handshake(target, key, 5, trusted)
            held.append(conn)
        for _ in range(64):  # clients that went quiet (a peer whose network vanished)
            held.append(store_connection())
        started = time.monotonic()
        info = call_server_function(settings, "server_info", 3.0)
        newcomer = connect_state(settings, start=False, timeout=3.0)
        newcomer["y"] = 2
        print(f"\nstatus and a new client answered in {time.monotonic() - started:.3f} s")
        assert info["keys"] == 1
        assert newcomer["x"] == 1
        assert state["y"] == 2, "connected clients are served meanwhile"
        assert resources(server.pid).threads <= threads + 1, "no thread per connection"
    finally:
        for connection in held:
            connection.close()


def test_the_oldest_unfinished_handshakes_give_way_to_new_connections(
    server: ServerProcess,
) -> None:
    state = get_shared_state(start=False)
    state["x"] = 1
    silent = []
    try:
        for _ in range(MAX_GREETING + 50):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(server.address)
            silent.append(sock)
        newcomer = connect_state(load_settings({}), start=False, timeout=3.0)
        assert newcomer["x"] == 1
        assert run_cli("status", "--timeout", "3").returncode == 0
        server.wait_for_log("had not finished its handshake")
    finally:
        for sock in silent:
            sock.close()


def test_a_value_over_max_value_bytes_is_refused_before_it_is_sent(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHAREDSTATE_MAX_VALUE_BYTES", "64K")
    state = get_shared_state(start=False)
    state["cfg"] = {"small": 1}
    cfg = state["cfg"]
    requests = requests_served()
    with pytest.raises(ValueTooLarge, match=r"state\['big'\] is .* over the limit of 65,536"):
        state["big"] = b"x" * 70_000
    with pytest.raises(ValueTooLarge, match="SHAREDSTATE_MAX_VALUE_BYTES"):
        cfg["large"] = "y" * 70_000
    with pytest.raises(ValueTooLarge):
        state.set_many({"fine": 1, "big": b"x" * 70_000})
    assert requests_served() == requests, "nothing reached the server"
    state["big"] = b"x" * 60_000  # under the limit
    assert state.get("fine") is None
    assert state["cfg"] == {"small": 1}


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
    assert isinstance(rogue._transport, Transport)
    conn = rogue._transport._local.conn
    assert conn is not None
    # -1 announces an 8-byte length: 2**40 bytes, far past what any client may send.
    os.write(conn.fileno(), struct.pack("!i", -1) + struct.pack("!Q", 1 << 40))
    server.wait_for_log("sent a malformed message (bad message length 1099511627776)")
    assert state["x"] == 1
