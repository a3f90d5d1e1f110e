"""Many processes and threads at once: one server, exact counts, a lock that works."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest

from sharedstate import get_shared_state

from .support.backends import FREED_AFTER_LEASE, WRITES_DONT_WAIT_FOR_EDITS
from .support.holders import hold_lock_until_killed
from .support.processes import fork_context, run_in_processes, start_process
from .support.procfs import server_pids
from .support.servers import ServerProcess

pytestmark = pytest.mark.backends

RACERS = 16


def _start_at_the_same_instant(barrier: Any) -> int:
    barrier.wait()
    state = get_shared_state()
    return int(state.incr("arrivals"))


@pytest.mark.local_only("the first calls start one local server process")
@pytest.mark.timeout(120)
def test_simultaneous_first_calls_start_exactly_one_server(workdir: str) -> None:
    barrier = fork_context.Barrier(RACERS)
    tickets = run_in_processes(_start_at_the_same_instant, [(barrier,)] * RACERS)
    assert sorted(tickets) == list(range(1, RACERS + 1))
    assert len(server_pids(workdir)) == 1


def _increment(times: int) -> None:
    state = get_shared_state(start=False)
    for _ in range(times):
        state.incr("counter")


def _increment_under_lock(times: int) -> None:
    state = get_shared_state(start=False)
    for _ in range(times):
        with state.lock:
            state["counter"] = state["counter"] + 1


def _increment_by_edit(times: int) -> None:
    state = get_shared_state(start=False)
    for _ in range(times):
        with state.edit("counter") as counter:
            counter["n"] += 1


@pytest.mark.timeout(120)
def test_8_processes_x_500_incr_is_exactly_4000(server: ServerProcess) -> None:
    run_in_processes(_increment, [(500,)] * 8)
    assert get_shared_state(start=False)["counter"] == 4000


@pytest.mark.timeout(180)
def test_8_processes_x_500_locked_read_modify_write_is_exactly_4000(server: ServerProcess) -> None:
    get_shared_state(start=False)["counter"] = 0
    run_in_processes(_increment_under_lock, [(500,)] * 8)
    assert get_shared_state(start=False)["counter"] == 4000


@pytest.mark.timeout(180)
def test_edits_from_8_processes_never_lose_an_update(server: ServerProcess) -> None:
    get_shared_state(start=False)["counter"] = {"n": 0}
    run_in_processes(_increment_by_edit, [(200,)] * 8)
    assert get_shared_state(start=False)["counter"] == {"n": 1600}


def _increment_nested(times: int) -> None:
    state = get_shared_state(start=False)
    for _ in range(times):
        state["counter"].incr("n")


@pytest.mark.differs_on_redis(WRITES_DONT_WAIT_FOR_EDITS)
@pytest.mark.timeout(180)
def test_edit_and_nested_incr_of_one_key_never_lose_an_update(server: ServerProcess) -> None:
    get_shared_state(start=False)["counter"] = {"n": 0}
    run_in_processes(
        lambda kind, times: kind(times),
        [(_increment_by_edit, 200)] * 4 + [(_increment_nested, 200)] * 4,
    )
    assert get_shared_state(start=False)["counter"] == {"n": 1600}


def test_threads_share_one_state_object(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(200):
                state.incr("threads")
                with state.lock:
                    state["locked"] = state.get("locked", 0) + 1
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert state["threads"] == 1600
    assert state["locked"] == 1600


@pytest.mark.differs_on_redis(FREED_AFTER_LEASE)
@pytest.mark.timeout(60)
def test_lock_is_released_when_holder_is_killed(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    ready = fork_context.Event()
    holder = start_process(hold_lock_until_killed, ready)
    try:
        assert ready.wait(30)
        assert state.lock.acquire(timeout=0.1) is False
        os.kill(holder.pid or 0, signal.SIGKILL)
        assert state.lock.acquire(timeout=5) is True, "the dead holder's lock was not freed"
        state.lock.release()
    finally:
        holder.kill()
        holder.join(10)
    server.wait_for_log("released state.lock")
