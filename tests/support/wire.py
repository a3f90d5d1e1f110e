"""Talking to a server over a raw socket, and checking that it came through unharmed.

Shared by the tests that send the server bad bytes (test_fuzz.py, test_bad_input.py):
frames written by hand, raw sockets past the handshake, replies read without a client
library, and the checks that follow every batch of bad input (no threads or descriptors
left behind, and new clients still served right).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import struct
from multiprocessing.connection import Connection

from bench.procfs import Resources, resources
from sharedstate.address import parse_address
from sharedstate.client.launcher import try_connect
from sharedstate.client.transport import Hello, handshake
from sharedstate.config import load_settings

from .clients import fresh_state
from .processes import wait_until
from .servers import ServerProcess

# Longer than the server's 10 s handshake timeout: a connection still open after this
# long, once we have hung up, is one the server forgot.
HANG_UP_WITHIN = 20.0


# -- speaking the wire protocol by hand ---------------------------------------------------


def frame(payload: bytes) -> bytes:
    """A ``multiprocessing.connection`` message: 4-byte big-endian length, then the bytes."""
    return struct.pack("!i", len(payload)) + payload


def open_raw(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(HANG_UP_WITHIN)
    sock.connect(address)
    return sock


def send_until_refused(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def hang_up_and_drain(sock: socket.socket) -> bytes:
    """Stop sending; return all the server sends until it closes the connection."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    received = bytearray()
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass  # it closed with some of our bytes unread: a hang-up too
    except TimeoutError:
        raise AssertionError(
            f"the server kept the connection open {HANG_UP_WITHIN:g} s after the client hung up"
        ) from None
    finally:
        sock.close()
    return bytes(received)


def reply_kinds(received: bytes) -> list[str]:
    """The kinds (``#RETURN``, ``#ERROR``...) of the whole replies in ``received``."""
    kinds = []
    while len(received) >= 4:
        (size,) = struct.unpack_from("!i", received)
        if len(received) < 4 + size:
            break
        kinds.append(pickle.loads(received[4 : 4 + size])[0])
        received = received[4 + size :]
    return kinds


def authenticated(address: str, key: bytes, *, adopted: bool) -> socket.socket:
    """A socket past the handshake; ``adopted``: also past accept_connection (a client)."""
    conn, _ = handshake(parse_address(address), key, HANG_UP_WITHIN, frozenset({os.getuid()}))
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    sock.settimeout(HANG_UP_WITHIN)
    if adopted:
        sock.sendall(frame(pickle.dumps((None, "accept_connection", ("client-fuzz",), 0))))
        assert read_reply(sock) == "#RETURN"
    return sock


def store_connection() -> Connection:
    """A connection of our own to the test's server, ready for store calls."""
    settings = load_settings()
    link = try_connect(settings, 5, Hello("client-test", os.urandom(16), resume=False))
    assert link is not None
    return link.conn


def read_reply(sock: socket.socket) -> str | None:
    """The kind of the server's next reply, or None if it hung up instead."""
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack_from("!i", data)[0]:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    [kind] = reply_kinds(data)
    return kind


# -- the server under test ----------------------------------------------------------------


def key_of(server: ServerProcess) -> bytes:
    with open(server.address + ".key", "rb") as file:
        return file.read().strip()


def wait_for_no_growth(pid: int, before: Resources) -> None:
    """Wait until ``pid`` holds no more threads and descriptors than ``before``."""

    def settled() -> bool:
        now = resources(pid)
        return now.threads <= before.threads and now.fds <= before.fds

    try:
        wait_until(settled)
    except AssertionError:
        raise AssertionError(
            f"server threads and fds grew from {before} to {resources(pid)}"
        ) from None


def assert_still_serving(server: ServerProcess, tried: int) -> None:
    """The server is alive and right for a new client, after ``tried`` bad inputs."""
    assert server.process is not None
    assert (
        server.process.poll() is None
    ), f"the server died after {tried} bad inputs:\n{server.log()}"
    state = fresh_state()
    state["after"] = {"list": [1]}
    state["after"]["list"].append(2)
    assert state["after"] == {"list": [1, 2]}, f"wrong answers after {tried} bad inputs"
    first = state.incr("served")
    assert state.incr("served", 2) == first + 2, f"incr broken after {tried} bad inputs"
