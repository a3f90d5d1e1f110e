"""Forks, dead servers, cut connections: clear errors, no hangs, and recovery."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import threading
import time
from typing import Any

import pytest

from sharedstate import ConnectionLost, ServerNotRunning, get_shared_state
from sharedstate.pidlock import read_pid

from .support.holders import hold_lock_until_killed
from .support.processes import fork_context, kill_and_wait, start_process, wait_until
from .support.procfs import parent_of, server_pids
from .support.servers import ServerFactory, ServerProcess, server_info
from .support.wire import store_connection


def test_state_created_before_fork_works_in_the_child(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    state["n"] = 0
    first_call_done, signal_first_call = os.pipe()
    with state.lock:  # the parent's connection is open, and owns the lock
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # Another process: the parent's lock is not ours, and our calls must
                # never travel over the parent's socket.
                got_lock = state.lock.acquire(timeout=0.2)
                os.write(signal_first_call, b".")
                if got_lock is False:
                    for _ in range(300):
                        state.incr("n")
                    code = 0
            finally:
                os._exit(code)
        os.close(signal_first_call)
        os.read(first_call_done, 1)  # idle until then: nothing hides a shared socket
        for _ in range(300):  # now both processes call at once
            state.incr("n")
        _, status = os.waitpid(pid, 0)  # still holding the lock
    os.close(first_call_done)
    assert os.waitstatus_to_exitcode(status) == 0
    assert state["n"] == 600


def test_start_false_with_no_server_raises_a_clear_error(address: str) -> None:
    with pytest.raises(ServerNotRunning, match="sharedstate serve") as raised:
        get_shared_state(start=False)
    assert address in str(raised.value)
    assert isinstance(raised.value, ConnectionError)


def test_next_call_reconnects_after_the_server_restarts(
    server_factory: ServerFactory,
) -> None:
    first = server_factory().start()
    state = get_shared_state(start=False)
    state["x"] = 1
    first.signal(signal.SIGKILL)
    first.wait()
    with pytest.raises((ServerNotRunning, ConnectionLost)):
        state["x"]  # nobody there, and we may not start one
    server_factory().start()
    state["x"] = 2  # reconnects transparently: the old connection is noticed dead
    assert state["x"] == 2


def test_next_call_restarts_a_killed_server_when_allowed(workdir: str) -> None:
    state = get_shared_state()
    state["x"] = 1
    [old] = server_pids(workdir)
    kill_and_wait(old)
    state["x"] = 2
    [new] = server_pids(workdir)
    assert new != old
    assert state["x"] == 2


def test_a_call_cut_off_mid_flight_raises_and_later_calls_work(workdir: str) -> None:
    state = get_shared_state()
    ready = fork_context.Event()
    holder = start_process(hold_lock_until_killed, ready)
    outcome: list[BaseException | bool] = []
    try:
        assert ready.wait(30)

        def wait_for_lock() -> None:
            try:
                outcome.append(state.lock.acquire())
            except BaseException as error:
                outcome.append(error)

        waiter = threading.Thread(target=wait_for_lock)
        waiter.start()
        wait_until(lambda: _clients_waiting(workdir))
        for pid in server_pids(workdir):
            kill_and_wait(pid)
        waiter.join(30)
        assert not waiter.is_alive(), "the cut-off call hung"
    finally:
        holder.kill()
        holder.join(10)
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionLost)
    assert "may or may not" in str(outcome[0])
    state["after"] = "restart"  # start=True: a new server comes up
    assert state["after"] == "restart"


def _start_server_then_wait(ready: Any) -> None:
    get_shared_state()["started_by"] = os.getpid()
    ready.set()
    time.sleep(60)


def test_server_outlives_the_worker_that_started_it(workdir: str, address: str) -> None:
    ready = fork_context.Event()
    starter = start_process(_start_server_then_wait, ready)
    assert ready.wait(30)
    [server_pid] = server_pids(workdir)
    assert parent_of(server_pid) != starter.pid
    os.kill(starter.pid or 0, signal.SIGKILL)
    starter.join(10)
    state = get_shared_state(start=False)
    assert state["started_by"] == starter.pid
    assert server_pids(workdir) == [server_pid]
    assert read_pid(address + ".lock") == server_pid


def test_a_stale_socket_from_a_dead_server_is_replaced(workdir: str, address: str) -> None:
    state = get_shared_state()
    state["x"] = 1
    [old] = server_pids(workdir)
    state.close()
    kill_and_wait(old)
    assert os.path.exists(address), "SIGKILL leaves the socket file behind"
    state["x"] = 2
    assert len(server_pids(workdir)) == 1


def _clients_waiting(workdir: str) -> bool:
    """True once the waiter (the newest client) has sent its acquire to the server."""
    clients = server_info()["clients"]
    if len(clients) < 3:  # the holder, our main thread, the waiter
        return False
    newest = max(clients, key=lambda client: client["id"])
    return bool(newest["requests"] >= 1)


def test_large_values_cross_in_pieces_both_ways(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    big = os.urandom(5_000_000)  # far larger than one read or one send
    state["big"] = big
    assert state["big"] == big
    state.set_many({f"part{i}": big[i::4] for i in range(4)})
    assert state.get_many(["part3"])["part3"] == big[3::4]


def test_a_request_split_into_single_bytes_is_still_understood(server: ServerProcess) -> None:
    from sharedstate.protocol import STORE

    conn = store_connection()
    request = pickle.dumps((STORE, "incr", ("split", 1), 0))
    framed = struct.pack("!i", len(request)) + request
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        for byte in framed:
            sock.send(bytes([byte]))
    kind, result = pickle.loads(conn.recv_bytes())
    conn.close()
    assert (kind, result) == ("#RETURN", 1)


def test_a_malformed_message_disconnects_only_its_sender(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    state["x"] = 1
    conn = store_connection()
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.send(struct.pack("!i", -7))  # a negative length: not a message
    with pytest.raises(EOFError):
        conn.recv_bytes()
    conn.close()
    assert state["x"] == 1, "the other client and the server are fine"
    server.wait_for_log("malformed message")
