"""The lock's mutual exclusion, under the four ways an outside review broke it.

1. A holder whose connection dropped (server restart, timeout, interrupt) used to
   reconnect on its next call and run without the lock while another worker held it.
2. A SIGKILLed holder kept the lock while a child it had forked lived on.
3. gunicorn's ``child_exit`` freed locks by a pid the client announced: over TCP,
   another machine's dead worker's pid freed a live worker's lock.
4. ``clear()`` never ran while edits kept overlapping.
And a wait of a million seconds overflowed instead of waiting.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any

import pytest

from sharedstate import (
    ConfigError,
    KeyNotFound,
    LockLost,
    SharedStateError,
    Timeout,
    get_shared_state,
)
from sharedstate.client.launcher import call_server_function, try_connect
from sharedstate.client.state import connect_state
from sharedstate.client.transport import Hello
from sharedstate.config import load_settings

from .support.backends import FREED_AFTER_LEASE
from .support.clients import fresh_state
from .support.holders import hold_edit_until_killed, hold_lock_until_killed
from .support.processes import fork_context, kill_and_wait, start_process, wait_until
from .support.procfs import is_dead, is_stopped
from .support.servers import ServerFactory, ServerProcess, free_tcp_port, server_info


def _restart(server: ServerProcess, factory: ServerFactory) -> ServerProcess:
    server.stop()
    return factory().start()


# -- 1. a dropped connection loses the lock, loudly ---------------------------------------


def test_a_holder_whose_server_restarted_gets_lock_lost_not_a_silent_reconnect(
    server: ServerProcess, server_factory: ServerFactory
) -> None:
    state = get_shared_state(start=False)
    with pytest.raises(LockLost, match="held state.lock"), state.lock:  # noqa: PT012
        server = _restart(server, server_factory)
        state["written"] = "without the lock"
    assert "written" not in fresh_state(), "the call under a lost lock reached the server"
    state = get_shared_state(start=False)
    with state.lock:  # after leaving the block, the thread works normally again
        state["after"] = 1
    assert state["after"] == 1


def test_every_call_raises_lock_lost_until_the_block_is_left(
    server: ServerProcess, server_factory: ServerFactory
) -> None:
    state = get_shared_state(start=False)
    state.lock.acquire()
    server = _restart(server, server_factory)
    for _ in range(3):
        with pytest.raises(LockLost):
            state["x"] = 1
        with pytest.raises(LockLost):
            state.get("x")
    with pytest.raises(LockLost):
        state.lock.release()  # leaving the block: says so, once
    state["x"] = 1
    assert fresh_state()["x"] == 1


def test_a_holder_whose_call_timed_out_gets_lock_lost(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHAREDSTATE_CALL_TIMEOUT", "0.5")
    settings = load_settings({})
    holder, other = (connect_state(settings, start=False, timeout=5) for _ in range(2))
    holder.lock.acquire()
    server.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: is_stopped(server.pid))
        with pytest.raises(LockLost, match="timed out during set"):
            holder["x"] = 1
    finally:
        server.signal(signal.SIGCONT)
    assert other.lock.acquire(timeout=5), "the server freed the dropped holder's lock"
    try:
        with pytest.raises(LockLost):
            holder["y"] = 2  # must not reconnect and write while `other` holds the lock
        assert "y" not in other
    finally:
        other.lock.release()
    with pytest.raises(LockLost):
        holder.lock.release()
    holder["y"] = 2
    assert other["y"] == 2


def test_a_holder_interrupted_mid_call_gets_lock_lost(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    ready = fork_context.Event()
    editor = start_process(hold_edit_until_killed, ready, "busy", 0)
    previous = signal.signal(signal.SIGALRM, _interrupt)
    try:
        assert ready.wait(30)
        state.lock.acquire()
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            state.edit("busy").__enter__()  # waits for the other edit; Ctrl-C meanwhile
        with pytest.raises(LockLost, match="was interrupted"):
            state["x"] = 1
        with pytest.raises(LockLost):
            state.lock.release()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        editor.kill()
        editor.join(10)
    assert "x" not in state


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def test_calls_inside_an_edit_whose_connection_dropped_raise_lock_lost(
    server: ServerProcess, server_factory: ServerFactory
) -> None:
    state = get_shared_state(start=False)
    state["doc"] = 1
    lost = pytest.raises(LockLost, match=r"the edit of state\['doc'\]")
    with lost, state.edit("doc") as doc:
        server = _restart(server, server_factory)
        state["copy"] = doc  # must not run as if the edit still held "doc"
    assert "copy" not in fresh_state()
    with state.edit("doc", 5) as doc:  # the thread edits normally again
        assert doc == 5


# -- 2. a forked child must not keep its parent's connection alive -------------------------


def _hold_lock_and_fork(ready: Any, child_pid: Any) -> None:
    state = get_shared_state(start=False)
    state.lock.acquire()
    pid = os.fork()
    if pid == 0:  # a child that outlives its parent, doing something else
        time.sleep(60)
        os._exit(0)
    child_pid.value = pid
    ready.set()
    time.sleep(60)


@pytest.mark.backends
@pytest.mark.differs_on_redis(FREED_AFTER_LEASE)
@pytest.mark.timeout(60)
def test_a_killed_holder_frees_the_lock_though_a_child_it_forked_lives_on(
    server: ServerProcess,
) -> None:
    state = get_shared_state(start=False)
    ready = fork_context.Event()
    child_pid = fork_context.Value("i", 0)
    holder = start_process(_hold_lock_and_fork, ready, child_pid)
    try:
        assert ready.wait(30)
        assert state.lock.acquire(timeout=0.1) is False
        kill_and_wait(holder.pid or 0)
        assert not is_dead(child_pid.value), "the child is alive"
        assert state.lock.acquire(timeout=5), "the dead holder's lock was kept by its child"
        state.lock.release()
    finally:
        holder.kill()
        holder.join(10)
        if child_pid.value:
            kill_and_wait(child_pid.value)


# -- 3. release_pid frees only what the kernel attributes to a dead process ---------------


def _dead_pid() -> int:
    process = start_process(time.sleep, 0)
    process.join(10)
    assert process.pid is not None
    return process.pid


def test_release_pid_never_frees_a_client_by_the_pid_it_announced(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker on another machine, over TCP, whose pid happens to be that of a worker
    # that just died here: gunicorn's child_exit for the dead one must not free it.
    address = f"127.0.0.1:{free_tcp_port()}"
    monkeypatch.setenv("SHAREDSTATE_ADDRESS", address)
    server_factory(address=address).start()
    settings = load_settings({})
    dead = _dead_pid()
    link = try_connect(settings, 5, Hello(f"client-{dead}", os.urandom(16), resume=False))
    assert link is not None
    _call(link.conn, "lock_acquire", None, None)
    released = call_server_function(settings, "release_pid", 5, (dead,))
    assert released == []
    assert get_shared_state(start=False).lock.locked(), "a live worker's lock was freed"
    link.conn.close()


def test_release_pid_never_frees_a_live_process(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    state.lock.acquire()
    released = call_server_function(load_settings({}), "release_pid", 5, (os.getpid(),))
    assert released == []
    assert state.lock.locked()
    state["still"] = "connected"
    state.lock.release()


def test_release_pid_frees_a_dead_local_worker(server: ServerProcess) -> None:
    ready = fork_context.Event()
    holder = start_process(hold_lock_until_killed, ready)
    assert ready.wait(30)
    pid = holder.pid or 0
    holder.kill()  # SIGKILL; its connection drops too, and either release frees it
    holder.join(10)
    call_server_function(load_settings({}), "release_pid", 5, (pid,))
    state = get_shared_state(start=False)
    assert state.lock.acquire(timeout=5)
    state.lock.release()


def _call(conn: Any, method: str, *args: Any) -> Any:
    import pickle

    from sharedstate.protocol import STORE

    conn.send_bytes(pickle.dumps((STORE, method, args, 0)))
    kind, result = pickle.loads(conn.recv_bytes())
    assert kind == "#RETURN", result
    return result


# -- 4. waiters are served in order: clear() is not starved by overlapping edits ----------


def _edit_in_a_loop(key: str, stop: Any, started: Any) -> None:
    state = get_shared_state(start=False)
    started.release()
    while not stop.is_set():
        try:
            with state.edit(key, 0) as value:
                time.sleep(0.05)
                del value
        except KeyNotFound:
            pass


@pytest.mark.timeout(60)
@pytest.mark.parametrize("operation", ["clear", "restore"])
def test_clear_and_restore_are_served_while_edits_keep_overlapping(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    monkeypatch.setenv("SHAREDSTATE_CALL_TIMEOUT", "5")
    state = get_shared_state(start=False)
    state.update({f"k{i}": 0 for i in range(3)})
    stop, started = fork_context.Event(), fork_context.Semaphore(0)
    editors: list[BaseProcess] = []
    try:
        for i in range(3):  # staggered, so that some edit is always open
            editors.append(start_process(_edit_in_a_loop, f"k{i}", stop, started))
            assert started.acquire(timeout=30)
            time.sleep(0.02)
        wait_until(lambda: server_info()["open_edits"] >= 1)
        if operation == "clear":
            state.clear()
        else:
            state.restore(state.export(), replace=True)
    finally:
        stop.set()
        for editor in editors:
            editor.join(30)
    assert [editor.exitcode for editor in editors] == [0, 0, 0]


# -- a wait of any length waits -------------------------------------------------------------


def test_a_huge_lock_timeout_waits_instead_of_failing(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    ready = fork_context.Event()
    holder = start_process(hold_lock_until_killed, ready)
    outcome: list[Any] = []

    def wait_a_month() -> None:
        try:
            outcome.append(state.lock.acquire(timeout=3e6))
            state.lock.release()
        except BaseException as error:
            outcome.append(error)

    try:
        assert ready.wait(30)
        waiter = threading.Thread(target=wait_a_month)
        waiter.start()
        wait_until(lambda: server_info()["waiting"] == 1 or bool(outcome))
        assert outcome == [], f"did not wait: {outcome}"
        holder.kill()
        waiter.join(30)
        assert outcome == [True]
    finally:
        holder.kill()
        holder.join(10)


@pytest.mark.backends
@pytest.mark.parametrize("timeout", [3e6, float("inf"), -1, None])
def test_huge_or_endless_edit_timeouts_are_accepted(server: ServerProcess, timeout: Any) -> None:
    state = get_shared_state(start=False)
    with state.edit("k", 0, timeout=timeout) as value:
        assert value == 0
    assert state.lock.acquire(timeout=timeout)
    state.lock.release()


@pytest.mark.backends
def test_a_nan_timeout_is_a_clear_error(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    with pytest.raises(ConfigError, match="lock timeout"):
        state.lock.acquire(timeout=float("nan"))
    with pytest.raises(ConfigError, match="edit timeout"), state.edit("k", 0, timeout=float("nan")):
        pass
    state["still"] = "fine"


def test_lock_lost_is_a_shared_state_error_and_survives_pickling() -> None:
    import pickle

    error = LockLost("lost", address="x")
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, SharedStateError)
    assert str(again) == "lost"
    assert vars(again)["address"] == "x"  # context is kept as attributes
    assert not isinstance(Timeout("t"), LockLost)


@pytest.mark.parametrize("write", ["incr", "set", "delete"])
def test_an_editor_writes_its_own_key_though_others_wait_to_edit_it(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    # The others wait for the edit to end; the editor's own write must not wait behind
    # them (it used to, until the call timed out and the edit was lost).
    monkeypatch.setenv("SHAREDSTATE_CALL_TIMEOUT", "5")
    state = get_shared_state(start=False)
    state["k"] = 1
    other_waits = threading.Event()
    other_edited = threading.Event()

    def edit_after_the_first() -> None:
        other = get_shared_state(start=False)  # this thread's own connection
        other_waits.set()
        with other.edit("k", default=0):
            other_edited.set()

    with state.edit("k") as value:
        other = threading.Thread(target=edit_after_the_first)
        other.start()
        assert other_waits.wait(10)
        wait_until(lambda: server_info()["waiting"] >= 1)
        started = time.monotonic()
        if write == "incr":
            state.incr("k", 5)
        elif write == "set":
            state["k"] = 6
        else:
            del state["k"]
        assert time.monotonic() - started < 4, "the write waited for the waiting editor"
        assert not other_edited.is_set()
    other.join(10)
    assert other_edited.is_set()
    del value
