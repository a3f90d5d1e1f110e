"""Bytes on the socket, fuzzed: whatever a client sends, it is never let in or served.

Hypothesis generates garbage before the handshake, real handshakes cut short anywhere,
bad length prefixes at every stage, and random requests after authentication, each test
against one real server with capped memory. Afterwards the server must hold no more
threads or descriptors than before, and still serve a new client right. Each test
reports how many bad inputs it tried (shown with ``pytest -s``). All are marked
``fuzz``, so the quick suite leaves them out.
"""

from __future__ import annotations

import os
import pickle
import resource
import socket
import struct
from multiprocessing.connection import Connection
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.procfs import resources
from sharedstate import get_shared_state
from sharedstate.handshake import HandshakeFailed, authenticate
from sharedstate.sockets import io_timeout

from .support.servers import ServerProcess
from .support.wire import (
    HANG_UP_WITHIN,
    assert_still_serving,
    authenticated,
    frame,
    hang_up_and_drain,
    key_of,
    open_raw,
    read_reply,
    reply_kinds,
    send_until_refused,
    wait_for_no_growth,
)

# A pickle's memo index makes CPython's unpickler allocate 16 bytes per index up front,
# so a few random bytes can ask for gigabytes (see the seven-byte request test in
# test_bad_input.py). Fuzzed servers get a cap, so such a request fails fast instead of
# filling the machine.
FUZZ_SERVER_MEMORY = 1 << 30


# -- handshakes cut short -----------------------------------------------------------------


class _HungUp(Exception):
    pass


class CutShortConnection(Connection):
    """A real client connection that lets out only its first ``budget`` bytes, then ``tail``.

    Then it hangs up (shuts down its sending side), so the server sees a handshake that
    is a valid prefix of the real one, whatever Python version computes it.
    """

    def __init__(self, sock: socket.socket, budget: int, tail: bytes) -> None:
        sock.setblocking(True)  # Connection reads the descriptor directly; io_timeout bounds it
        super().__init__(sock.detach())
        self.budget = budget
        self.tail = tail

    def _send(self, buf: Any, write: Any = None) -> None:
        allowed = bytes(buf[: self.budget])
        self.budget -= len(allowed)
        if allowed:
            super()._send(allowed)  # type: ignore[misc]
        if self.budget == 0:
            raise _HungUp

    def hang_up_and_drain(self) -> bytes:
        sock = socket.socket(fileno=os.dup(self.fileno()))
        sock.settimeout(HANG_UP_WITHIN)
        send_until_refused(sock, self.tail)
        return hang_up_and_drain(sock)


def handshake_cut_short(address: str, key: bytes, cut: int, tail: bytes = b"") -> bytes:
    """Run a real client handshake cut after ``cut`` bytes, then send ``tail`` and hang up.

    Returns what the server sent after the cut, until it hung up.
    """
    conn = CutShortConnection(open_raw(address), cut, tail)
    try:
        with io_timeout(conn, HANG_UP_WITHIN):
            try:
                if cut > 0:
                    authenticate(conn, key)
            except BlockingIOError:
                raise AssertionError("the server stopped answering a handshake") from None
            except (_HungUp, EOFError, OSError, HandshakeFailed):
                pass  # we hung up, or the server refused what it got so far
            return conn.hang_up_and_drain()
    finally:
        conn.close()


# -- the server under test ----------------------------------------------------------------


def cap_memory(server: ServerProcess) -> None:
    """Limit the server's address space, as an operator's MemoryMax would."""
    resource.prlimit(server.pid, resource.RLIMIT_AS, (FUZZ_SERVER_MEMORY, FUZZ_SERVER_MEMORY))


def report_tried(name: str, tried: int) -> None:
    print(f"\n{name}: {tried} bad inputs tried")


# -- bytes on the socket, fuzzed ------------------------------------------------------------

_fuzz_settings = settings(deadline=None, database=None, print_blob=True)


@pytest.mark.fuzz
@pytest.mark.timeout(180)
def test_random_bytes_before_the_handshake_never_get_in(server: ServerProcess) -> None:
    cap_memory(server)
    state = get_shared_state(start=False)
    state["x"] = 1
    before = resources(server.pid)
    tried = 0

    @settings(_fuzz_settings, max_examples=1200)
    @given(garbage=st.binary(max_size=400))
    def send(garbage: bytes) -> None:
        nonlocal tried
        tried += 1
        sock = open_raw(server.address)
        send_until_refused(sock, garbage)
        received = hang_up_and_drain(sock)
        assert b"welcome " not in received, f"{garbage!r} was let in"

    send()
    report_tried("bytes before the handshake", tried)
    assert state["x"] == 1, f"a connected client was disturbed by {tried} bad inputs"
    wait_for_no_growth(server.pid, before)
    assert_still_serving(server, tried)


def client_handshake_length(address: str, key: bytes) -> int:
    """How many bytes a real client sends during a whole handshake."""
    budget = 1 << 20
    conn = CutShortConnection(open_raw(address), budget, b"")
    try:
        with io_timeout(conn, HANG_UP_WITHIN):
            authenticate(conn, key)
        return budget - conn.budget
    finally:
        conn.close()


# The simplest request a fresh connection may make: a server function.
DUMMY_REQUEST = frame(pickle.dumps((None, "server_info", (), 0)))


@pytest.mark.fuzz
@pytest.mark.timeout(180)
def test_a_handshake_cut_short_anywhere_is_dropped(server: ServerProcess) -> None:
    cap_memory(server)
    key = key_of(server)
    before = resources(server.pid)
    full_length = client_handshake_length(server.address, key)
    for cut in range(full_length):
        handshake_cut_short(server.address, key, cut)
    # The whole prefix does authenticate: the cuts above were cuts of a real handshake.
    assert b"#RETURN" in handshake_cut_short(server.address, key, full_length, DUMMY_REQUEST)
    tried = full_length

    @settings(_fuzz_settings, max_examples=1000)
    @given(cut=st.integers(0, full_length + 8), tail=st.binary(max_size=64))
    def cut_then_garbage(cut: int, tail: bytes) -> None:
        nonlocal tried
        tried += 1
        received = handshake_cut_short(server.address, key, cut, tail)
        if cut >= full_length:
            assert b"#RETURN" not in received, f"{tail!r} was served as a request"

    cut_then_garbage()
    report_tried("handshakes cut short", tried)
    wait_for_no_growth(server.pid, before)
    assert_still_serving(server, tried)


STAGES = ["handshake", "first request", "event loop"]


def _connect_at(stage: str, server: ServerProcess, key: bytes) -> socket.socket:
    if stage == "handshake":
        return open_raw(server.address)
    return authenticated(server.address, key, adopted=stage == "event loop")


def _bad_lengths() -> st.SearchStrategy[bytes]:
    """Length prefixes no message may have: oversized, negative, or a huge 8-byte length."""
    four_bytes = st.one_of(
        st.integers(-(2**31), -2), st.integers(257, 2**31 - 1), st.sampled_from([0, 256])
    ).map(lambda size: struct.pack("!i", size))
    eight_bytes = st.integers(0, 2**64 - 1).map(lambda size: struct.pack("!iQ", -1, size))
    return st.one_of(four_bytes, eight_bytes)


@pytest.mark.fuzz
@pytest.mark.timeout(180)
def test_bad_length_prefixes_are_refused_at_every_stage(server: ServerProcess) -> None:
    cap_memory(server)
    key = key_of(server)
    state = get_shared_state(start=False)
    state["x"] = 1
    before = resources(server.pid)
    extremes = [-(2**31), -2, -1, 0, 257, 2**31 - 1]
    headers = [struct.pack("!i", size) for size in extremes[:2] + extremes[3:]]
    headers += [struct.pack("!iQ", -1, size) for size in (0, 2**31, 2**32, 2**62, 2**63, 2**64 - 1)]
    tried = 0

    def send(stage: str, header: bytes, body: bytes) -> None:
        nonlocal tried
        tried += 1
        sock = _connect_at(stage, server, key)
        send_until_refused(sock, header + body)
        received = hang_up_and_drain(sock)
        if stage == "handshake":
            assert b"welcome " not in received, f"{header!r} was let in"
        else:
            assert "#RETURN" not in reply_kinds(received), f"{header!r} was served at {stage}"

    for stage in STAGES:
        for header in headers:
            send(stage, header, b"")

    @settings(_fuzz_settings, max_examples=800)
    @given(stage=st.sampled_from(STAGES), header=_bad_lengths(), body=st.binary(max_size=32))
    def fuzz(stage: str, header: bytes, body: bytes) -> None:
        send(stage, header, body)

    fuzz()
    report_tried("bad length prefixes", tried)
    assert state["x"] == 1, f"a connected client was disturbed by {tried} bad inputs"
    wait_for_no_growth(server.pid, before)
    assert_still_serving(server, tried)


@pytest.mark.fuzz
@pytest.mark.timeout(180)
def test_random_requests_after_authentication_get_an_error_or_a_hang_up(
    server: ServerProcess,
) -> None:
    cap_memory(server)
    key = key_of(server)
    state = get_shared_state(start=False)
    state["x"] = 1
    before = resources(server.pid)
    tried = 0
    loop_client = authenticated(server.address, key, adopted=True)

    @settings(_fuzz_settings, max_examples=1500)
    @given(payload=st.binary(max_size=300))
    def framed_to_the_event_loop(payload: bytes) -> None:
        # One connection for all: a refused request must leave it usable (or hang it up).
        nonlocal tried, loop_client
        tried += 1
        send_until_refused(loop_client, frame(payload))
        kind = read_reply(loop_client)
        if kind is None:  # a hang-up is an acceptable answer
            loop_client.close()
            loop_client = authenticated(server.address, key, adopted=True)
        else:
            assert kind in ("#TRACEBACK", "#ERROR"), f"{payload!r} got {kind}"

    @settings(_fuzz_settings, max_examples=500)
    @given(stage=st.sampled_from(STAGES[1:]), garbage=st.binary(max_size=300), framed=st.booleans())
    def on_a_new_connection(stage: str, garbage: bytes, framed: bool) -> None:
        nonlocal tried
        tried += 1
        sock = _connect_at(stage, server, key)
        send_until_refused(sock, frame(garbage) if framed else garbage)
        kinds = reply_kinds(hang_up_and_drain(sock))
        assert "#RETURN" not in kinds, f"{garbage!r} was served at {stage}"

    framed_to_the_event_loop()
    loop_client.close()
    on_a_new_connection()
    report_tried("requests after authentication", tried)
    assert state["x"] == 1, f"a connected client was disturbed by {tried} bad inputs"
    wait_for_no_growth(server.pid, before)
    assert_still_serving(server, tried)
