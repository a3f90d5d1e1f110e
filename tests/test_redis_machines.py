"""Two machines, one Redis: workers of two separate environments share the state over TCP.

Each machine is a group of forked worker processes with an environment and directory
of its own (tests/support/machines.py); the two share nothing but the Redis address
(loopback TCP, with the password) and the key prefix, as two hosts behind a load
balancer would. Nothing here mocks Redis: it is the session's real ``redis-server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import sharedstate.aio
from sharedstate import get_shared_state
from sharedstate.errors import LockLost, SharedStateError

from .support.holders import HOLD_AT_MOST, hold_edit_until_killed, hold_lock_until_killed
from .support.machines import Machine, make_machine, on_machine, unique_prefix, visit_machine
from .support.processes import (
    fork_context,
    kill_and_wait,
    resume_and_reap,
    run_in_processes,
    start_process,
)
from .support.procfs import is_dead, processes_mentioning
from .support.redis_servers import RedisServer

LEASE = 2.0  # SHAREDSTATE_REDIS_LEASE for the lock tests: short, so they stay short


def two_machines(workdir: str, redis_server: RedisServer, **env: str) -> tuple[Machine, Machine]:
    prefix = unique_prefix()
    first, second = (
        make_machine(workdir, name, redis_server.url(), prefix, **env) for name in ("a", "b")
    )
    return first, second


def count_up(start: Any, times: int) -> list[int]:
    state = get_shared_state()  # start=True, the default: with Redis it must start nothing
    start.wait(30)
    return [state.incr("hits") for _ in range(times)]


def test_increments_from_two_machines_are_exact(
    workdir: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    machines = two_machines(workdir, redis_server)
    start = fork_context.Barrier(4)
    work = [(machine, count_up, start, 50) for machine in machines for _ in range(2)]
    returned = [value for values in run_in_processes(on_machine, work) for value in values]
    assert sorted(returned) == list(range(1, 201))  # each value once: no increment lost
    visit_machine(monkeypatch, machines[0])
    assert get_shared_state()["hits"] == 200
    # No sharedstate server was started for a Redis address, on either machine.
    assert processes_mentioning(workdir) == []


def test_workers_forked_from_a_master_that_used_redis_count_exactly(
    workdir: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As gunicorn --preload: the master connected (and keeps its connections) before
    # forking, so each worker must get connections of its own, never share the master's.
    machine, _ = two_machines(workdir, redis_server)
    visit_machine(monkeypatch, machine)
    master = get_shared_state()
    assert master.incr("hits") == 1
    start = fork_context.Barrier(4)
    work = [(machine, count_up, start, 50) for _ in range(4)]
    returned = [value for values in run_in_processes(on_machine, work) for value in values]
    assert sorted(returned) == list(range(2, 202))
    assert master.incr("hits") == 202  # the master's own connections still in step


def add_once(me: str, start: Any) -> bool:
    state = get_shared_state()
    start.wait(30)
    return state.add("leader", me, ttl=60)


def test_add_from_two_machines_has_exactly_one_winner(
    workdir: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    machines = two_machines(workdir, redis_server)
    start = fork_context.Barrier(8)
    names = [f"{machine.name}-{n}" for machine in machines for n in range(4)]
    work = [(machines[index // 4], add_once, name, start) for index, name in enumerate(names)]
    won = run_in_processes(on_machine, work)
    assert won.count(True) == 1
    visit_machine(monkeypatch, machines[1])
    assert get_shared_state()["leader"] == names[won.index(True)]


ROUNDS = 25


def take_turns(me: str, start: Any) -> int:
    """Hold the lock ROUNDS times with the sync client; count the other holders seen."""
    state = get_shared_state()
    start.wait(30)
    overlaps = 0
    for _ in range(ROUNDS):
        with state.lock.hold(timeout=30):
            state["holder"] = me
            count = state.get("count", 0)
            time.sleep(0.002)  # widen the window in which a second holder would show
            overlaps += state["holder"] != me
            state["count"] = count + 1  # read-modify-write: lost if two overlap
    return overlaps


def take_turns_async(me: str, start: Any) -> int:
    """:func:`take_turns` with the asyncio client."""

    async def turns() -> int:
        state = await sharedstate.aio.get_shared_state()
        await asyncio.to_thread(start.wait, 30)
        overlaps = 0
        for _ in range(ROUNDS):
            async with state.lock.hold(timeout=30):
                await state.set("holder", me)
                count = await state.get("count", 0)
                await asyncio.sleep(0.002)
                overlaps += await state.get("holder") != me
                await state.set("count", count + 1)
        return overlaps

    return asyncio.run(turns())


def test_the_lock_excludes_across_machines_and_clients(
    workdir: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync_machine, async_machine = two_machines(workdir, redis_server)
    start = fork_context.Barrier(4)
    work = [
        (sync_machine, take_turns, "sync-1", start),
        (sync_machine, take_turns, "sync-2", start),
        (async_machine, take_turns_async, "async-1", start),
        (async_machine, take_turns_async, "async-2", start),
    ]
    overlaps = run_in_processes(on_machine, work, timeout=60)
    assert overlaps == [0, 0, 0, 0]
    visit_machine(monkeypatch, sync_machine)
    assert get_shared_state()["count"] == 4 * ROUNDS


EDITS = 20


def edit_in_turns(me: str, start: Any) -> None:
    """Edit one key EDITS times with the sync client: read, change, write back."""
    state = get_shared_state()
    start.wait(30)
    for _ in range(EDITS):
        with state.edit("tally", default={}, timeout=30) as tally:
            tally[me] = tally.get(me, 0) + 1  # lost if another edit overlapped


def edit_in_turns_async(me: str, start: Any) -> None:
    """:func:`edit_in_turns` with the asyncio client."""

    async def edits() -> None:
        state = await sharedstate.aio.get_shared_state()
        await asyncio.to_thread(start.wait, 30)
        for _ in range(EDITS):
            async with state.edit("tally", default={}, timeout=30) as tally:
                tally[me] = tally.get(me, 0) + 1

    asyncio.run(edits())


def test_edits_of_one_key_from_two_machines_lose_nothing(
    workdir: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync_machine, async_machine = two_machines(workdir, redis_server)
    start = fork_context.Barrier(4)
    run_in_processes(
        on_machine,
        [
            (sync_machine, edit_in_turns, "sync-1", start),
            (sync_machine, edit_in_turns, "sync-2", start),
            (async_machine, edit_in_turns_async, "async-1", start),
            (async_machine, edit_in_turns_async, "async-2", start),
        ],
        timeout=60,
    )
    visit_machine(monkeypatch, async_machine)
    assert get_shared_state()["tally"] == dict.fromkeys(
        ["sync-1", "sync-2", "async-1", "async-2"], EDITS
    )


def take_lock_when_free(trying: Any, taken_at: Any) -> None:
    state = get_shared_state()
    trying.set()
    assert state.lock.acquire(timeout=60)
    taken_at.put(time.monotonic())  # one clock for all processes of this host
    state.lock.release()


def take_edit_when_free(trying: Any, taken_at: Any) -> None:
    state = get_shared_state()
    trying.set()
    with state.edit("edited", default=[], timeout=60) as value:
        taken_at.put(time.monotonic())
        value.append("waiter")


CALLER_LEASE = 20.0  # longer than LEASE: it bounds a living holder, not a dead one


def hold_lock_with_lease_until_killed(ready: Any, lease: float) -> None:
    """Take the lock with a caller-given ``lease``, set ``ready``, and keep it until killed."""
    state = get_shared_state()
    assert state.lock.acquire(lease=lease)
    ready.set()
    time.sleep(HOLD_AT_MOST)


KILLED_HOLDERS: dict[str, tuple[Callable[..., None], tuple[Any, ...], Callable[..., None]]] = {
    "lock": (hold_lock_until_killed, (), take_lock_when_free),
    "edit": (hold_edit_until_killed, ("edited", []), take_edit_when_free),
    # Killed, a holder frees the lock within SHAREDSTATE_REDIS_LEASE whatever lease it
    # asked for, as on the local server, where it frees it at once (docs/redis.md).
    "lock_with_a_longer_lease": (
        hold_lock_with_lease_until_killed,
        (CALLER_LEASE,),
        take_lock_when_free,
    ),
}


@pytest.mark.timeout(60)  # CALLER_LEASE and more if the lease is wrongly kept
@pytest.mark.parametrize("what", list(KILLED_HOLDERS))
def test_a_killed_holder_frees_its_hold_within_the_lease(
    workdir: str, redis_server: RedisServer, what: str
) -> None:
    holder_machine, waiter_machine = two_machines(
        workdir, redis_server, SHAREDSTATE_REDIS_LEASE=str(LEASE)
    )
    hold, hold_args, take = KILLED_HOLDERS[what]
    held, trying, taken_at = fork_context.Event(), fork_context.Event(), fork_context.Queue()
    holder = start_process(on_machine, holder_machine, hold, held, *hold_args)
    waiter = None
    try:
        assert held.wait(20), f"the holder did not get the {what}"
        waiter = start_process(on_machine, waiter_machine, take, trying, taken_at)
        assert trying.wait(20)
        # The holder lives: the waiter must not get it, though more than a lease passes
        # (a lease not renewed would lapse in that time).
        with pytest.raises(queue.Empty):
            taken_at.get(timeout=1.5 * LEASE)
        assert holder.pid is not None
        killed_at = time.monotonic()
        kill_and_wait(holder.pid)
        taken = taken_at.get(timeout=60)
        assert taken > killed_at, "taken while its holder was still alive"
        # A bound on correctness (freed within the lease), not on speed: generous margin.
        assert taken - killed_at <= 2 * LEASE + 3, f"freed {taken - killed_at:.1f} s after"
        waiter.join(10)
        assert waiter.exitcode == 0
    finally:
        for process in (holder, waiter):
            if process is not None and process.is_alive():
                process.kill()
            if process is not None:
                process.join(10)


def edit_in_a_thread_until_killed(ready: Any) -> None:
    """In a forked child: hold an edit, on the state inherited from the parent, from a
    thread other than the one that forked."""

    def edit() -> None:
        with get_shared_state().edit("child's", default=0):
            ready.set()
            time.sleep(HOLD_AT_MOST)

    thread = threading.Thread(target=edit)
    thread.start()
    thread.join()


def hold_lock_and_fork(ready: Any, child_pid: Any) -> None:
    """Take the lock, fork a child that holds an edit of its own, and wait to be killed."""
    state = get_shared_state()
    assert state.lock.acquire(timeout=30)
    child = start_process(edit_in_a_thread_until_killed, ready)
    child_pid.value = child.pid
    time.sleep(HOLD_AT_MOST)


@pytest.mark.timeout(60)
def test_a_killed_holder_frees_the_lock_though_a_child_it_forked_holds_an_edit(
    workdir: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child's watchdog renews what the child holds, never what its parent held.
    holder_machine, other_machine = two_machines(
        workdir, redis_server, SHAREDSTATE_REDIS_LEASE=str(LEASE)
    )
    ready, child_pid = fork_context.Event(), fork_context.Value("i", 0)
    holder = start_process(on_machine, holder_machine, hold_lock_and_fork, ready, child_pid)
    try:
        assert ready.wait(20)
        visit_machine(monkeypatch, other_machine)
        state = get_shared_state()
        assert state.lock.acquire(timeout=0) is False
        assert holder.pid is not None
        kill_and_wait(holder.pid)
        assert not is_dead(child_pid.value), "the child lives on"
        # A bound on correctness, not speed (as above): 2 x lease + 3 s.
        assert state.lock.acquire(timeout=2 * LEASE + 3), "the dead holder's lock was kept"
        state.lock.release()
    finally:
        if child_pid.value:  # first: it keeps the holder's sentinel pipe open
            kill_and_wait(child_pid.value)
        holder.kill()
        holder.join(10)


def hold_lock_for(seconds: float, held: Any, releasing: Any) -> tuple[bool, float]:
    """Hold the lock ``seconds`` while living; whether it still held it, and for how long."""
    state = get_shared_state()
    assert state.lock.acquire(timeout=30)
    took = time.monotonic()
    held.set()
    time.sleep(seconds)  # a living holder: its watchdog must renew the lease meanwhile
    still_locked = state.lock.locked()
    releasing.set()
    state.lock.release()  # raises LeaseExpired or LockLost if the lease lapsed
    return still_locked, time.monotonic() - took


def try_lock_until_released(held: Any, releasing: Any) -> tuple[int, int]:
    """Try the lock with timeout=0 until its holder starts releasing: (tries, times taken)."""
    state = get_shared_state()
    assert held.wait(30)
    tries = taken = 0
    while not releasing.is_set():
        tries += 1
        if state.lock.acquire(timeout=0):
            # Taken before the holder began to release: it was taken from a live holder.
            taken += not releasing.is_set()
            state.lock.release()
        time.sleep(0.05)
    return tries, taken


@pytest.mark.timeout(40)
def test_a_living_holder_keeps_the_lock_past_the_lease(
    workdir: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder_machine, other_machine = two_machines(
        workdir, redis_server, SHAREDSTATE_REDIS_LEASE=str(LEASE)
    )
    held, releasing = fork_context.Event(), fork_context.Event()
    (still_locked, held_for), (tries, taken) = run_in_processes(
        on_machine,
        [
            (holder_machine, hold_lock_for, 3 * LEASE, held, releasing),
            (other_machine, try_lock_until_released, held, releasing),
        ],
    )
    assert held_for >= 3 * LEASE
    assert still_locked
    assert taken == 0, f"taken {taken} times from a living holder"
    assert tries >= 10, "the other machine hardly tried"
    visit_machine(monkeypatch, other_machine)
    assert get_shared_state().lock.acquire(timeout=10)  # free once released: tries could win
    get_shared_state().lock.release()


def write_under_lock_until_lost(held: Any) -> dict[str, Any]:
    """Take the lock, then write in a loop until a call raises LockLost (or 30 s pass).

    Returns whether LockLost came, and when (monotonic) each write that went through began.
    """
    state = get_shared_state()
    assert state.lock.acquire(timeout=30)
    held.set()
    began_ok: list[float] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            began = time.monotonic()
            try:
                state["beat"] = len(began_ok)
            except LockLost:
                return {"lost": True, "began_ok": began_ok}
            began_ok.append(began)
            time.sleep(0.001)
        return {"lost": False, "began_ok": began_ok}
    finally:
        with contextlib.suppress(SharedStateError):
            state.lock.release()


def write_under_lock_until_lost_async(held: Any) -> dict[str, Any]:
    """:func:`write_under_lock_until_lost` with the asyncio client."""

    async def write() -> dict[str, Any]:
        state = await sharedstate.aio.get_shared_state()
        assert await state.lock.acquire(timeout=30)
        held.set()
        began_ok: list[float] = []
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                began = time.monotonic()
                try:
                    await state.set("beat", len(began_ok))
                except LockLost:
                    return {"lost": True, "began_ok": began_ok}
                began_ok.append(began)
                await asyncio.sleep(0.001)
            return {"lost": False, "began_ok": began_ok}
        finally:
            with contextlib.suppress(SharedStateError):
                await state.lock.release()

    return asyncio.run(write())


def take_lock_and_keep_it(taken_at: Any, done: Any) -> None:
    state = get_shared_state()
    assert state.lock.acquire(timeout=60)
    taken_at.put(time.monotonic())
    assert done.wait(60)
    state.lock.release()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("client", ["sync", "asyncio"])
def test_a_hung_holder_gets_lock_lost_at_its_next_call(
    workdir: str, redis_server: RedisServer, client: str
) -> None:
    # docs/redis.md: a holder that hangs (SIGSTOP, a long GC pause) loses the lock after
    # the lease, and "its next call raises LockLost": it must not write on as the holder
    # while another machine holds the lock.
    holder_machine, other_machine = two_machines(
        workdir, redis_server, SHAREDSTATE_REDIS_LEASE=str(LEASE)
    )
    held, done = fork_context.Event(), fork_context.Event()
    taken_at, report = fork_context.Queue(), fork_context.Queue()
    write = write_under_lock_until_lost if client == "sync" else write_under_lock_until_lost_async
    holder = start_process(on_machine, holder_machine, _put_result, report, write, held)
    other = None
    try:
        assert held.wait(20)
        assert holder.pid is not None
        os.kill(holder.pid, signal.SIGSTOP)  # hung, mid-loop, its watchdog with it
        other = start_process(on_machine, other_machine, take_lock_and_keep_it, taken_at, done)
        taken_at.get(timeout=30)  # the lease lapsed: the other machine holds the lock now
        resumed_at = time.monotonic()
        os.kill(holder.pid, signal.SIGCONT)
        outcome = report.get(timeout=40)
        done.set()
        after = [began for began in outcome["began_ok"] if began > resumed_at]
        assert after == [], f"{len(after)} writes went through as holder after it hung"
        assert outcome["lost"], "no LockLost"
    finally:
        done.set()
        resume_and_reap(holder, other)


def edit_across_a_hang(held: Any, go: Any) -> str:
    """Open an edit, wait for ``go`` (the test hangs this process meanwhile), commit."""
    state = get_shared_state()
    try:
        with state.edit("edited", default=[]) as value:
            held.set()
            assert go.wait(60)
            value.append("hung")
    except SharedStateError as error:
        return type(error).__name__
    return "committed"


def edit_once(taken_at: Any) -> None:
    state = get_shared_state()
    with state.edit("edited", default=[], timeout=60) as value:
        value.append("other")
    taken_at.put(time.monotonic())


@pytest.mark.timeout(60)
def test_a_hung_editor_does_not_overwrite_the_edit_made_meanwhile(
    workdir: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    hung_machine, other_machine = two_machines(
        workdir, redis_server, SHAREDSTATE_REDIS_LEASE=str(LEASE)
    )
    held, go = fork_context.Event(), fork_context.Event()
    taken_at, report = fork_context.Queue(), fork_context.Queue()
    hung = start_process(
        on_machine, hung_machine, _put_result, report, edit_across_a_hang, held, go
    )
    other = None
    try:
        assert held.wait(20)
        assert hung.pid is not None
        os.kill(hung.pid, signal.SIGSTOP)  # hung with the edit open, its watchdog too
        other = start_process(on_machine, other_machine, edit_once, taken_at)
        taken_at.get(timeout=30)  # the hung edit's lease lapsed; the other edit is written
        os.kill(hung.pid, signal.SIGCONT)
        go.set()
        outcome = report.get(timeout=30)
    finally:
        go.set()
        resume_and_reap(hung, other)
    assert outcome in {"Conflict", "LockLost"}, outcome  # its commit refused, saying why
    visit_machine(monkeypatch, other_machine)
    assert get_shared_state()["edited"] == ["other"]


def _put_result(results: Any, target: Callable[..., Any], *args: Any) -> None:
    results.put(target(*args))
