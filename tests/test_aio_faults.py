"""The asyncio client when things go wrong: cancelled tasks, killed workers, a stopped or
restarted server, forks, and many workers starting the server at once.

The promise under test: a task cancelled at any point leaves no connection out of step
and nothing held by nobody; a killed worker's lock is freed; the event loop never
blocks, not even while the server starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sharedstate import ConnectionLost, LockLost, ServerNotRunning, Timeout, get_shared_state
from sharedstate.aio import get_shared_state as aio_state
from sharedstate.aio.pool import Pool

from .support.aio_calls import cancel_at_random
from .support.loops import LOOPS, run_async, run_on
from .support.processes import kill_and_wait, run_in_processes, start_process
from .support.procfs import is_stopped, server_pids
from .support.servers import ServerFactory, ServerProcess, server_info


@pytest.mark.timeout(120)
@pytest.mark.parametrize("loop", LOOPS)
def test_cancelling_any_call_at_any_point_leaves_nothing_held_or_out_of_step(
    server: ServerProcess, loop: str
) -> None:
    sync = get_shared_state(start=False)
    sync["doc"] = {"n": 0}
    rng = random.Random(15)

    async def main() -> dict[str, int]:
        state = await aio_state(start=False, max_connections=3)
        cancelled = await cancel_at_random(state, rng, rounds=40)
        # Afterwards: every connection in step (each answers its own calls), nothing held.
        assert isinstance(state._pool, Pool)
        assert state._pool.holding == 0
        values = await asyncio.gather(*(state.get_in(("doc", "n")) for _ in range(50)))
        assert len(set(values)) == 1
        assert await state.incr("check") == 1
        info = server_info()
        assert info["lock_holder"] is None
        assert info["open_edits"] == 0
        # The server knows of no connection the pool has lost track of (once it has
        # seen the ones closed last go).
        deadline = time.monotonic() + 5
        while _async_clients() != state.connections:
            assert time.monotonic() < deadline, (_async_clients(), state.connections)
            await asyncio.sleep(0.05)
        return cancelled

    cancelled = run_on(loop, main, timeout=100)
    assert all(count > 10 for count in cancelled.values()), cancelled
    assert sync.lock.acquire(timeout=1)  # free for the sync client too
    sync.lock.release()


class _Ticks:
    """A task that counts how often it gets to run, and the longest wait between two
    runs: how long the loop was blocked, at most."""

    def __init__(self, every: float) -> None:
        self.count = 0
        self.longest_gap = 0.0
        self._task = asyncio.ensure_future(self._tick(every))

    async def _tick(self, every: float) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            self.count += 1
            self.longest_gap = max(self.longest_gap, now - last)
            last = now

    def stop(self) -> None:
        self._task.cancel()


def _async_clients() -> int:
    return sum(client["name"].startswith("aio-client") for client in server_info()["clients"])


@pytest.mark.parametrize("loop", LOOPS)
def test_a_task_cancelled_while_waiting_for_the_lock_never_gets_it_later(
    server: ServerProcess, loop: str
) -> None:
    sync = get_shared_state(start=False)

    async def main() -> None:
        state = await aio_state(start=False)
        assert sync.lock.acquire(timeout=1)
        waiting = asyncio.ensure_future(state.lock.acquire(timeout=30))
        wait_until_true = time.monotonic() + 5
        while server_info()["waiting"] == 0:
            assert time.monotonic() < wait_until_true
            await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        sync.lock.release()
        await asyncio.sleep(0.1)
        assert server_info()["lock_holder"] is None  # not granted to the closed connection
        assert sync.lock.acquire(timeout=1)
        sync.lock.release()

    run_on(loop, main)


def _killing_frees_the_lock(holder: Any) -> None:
    """``holder`` (a process) holds the lock; once it is SIGKILLed, the lock is free."""
    state = get_shared_state(start=False)
    assert not state.lock.acquire(timeout=0.1)
    assert holder.pid is not None
    kill_and_wait(holder.pid)
    assert state.lock.acquire(timeout=5)
    state.lock.release()


def _hold_lock_in_async_worker(ready: Any) -> None:
    async def main() -> None:
        state = await aio_state(start=False)
        await state.lock.acquire()
        ready.set()
        await asyncio.sleep(600)

    run_async(main)


@pytest.mark.fault
def test_an_async_worker_killed_holding_the_lock_frees_it(server: ServerProcess) -> None:
    from .support.processes import fork_context

    ready = fork_context.Event()
    holder = start_process(_hold_lock_in_async_worker, ready)
    try:
        assert ready.wait(20)
        _killing_frees_the_lock(holder)
    finally:
        holder.kill()
        holder.join(5)


@pytest.mark.fault
@pytest.mark.parametrize("loop", LOOPS)
def test_after_a_server_restart_reads_reconnect_and_a_holder_gets_lock_lost(
    server: ServerProcess, server_factory: ServerFactory, loop: str
) -> None:
    async def main() -> None:
        state = await aio_state(start=False)
        await state.set("a", 1)
        with pytest.raises(LockLost, match="held state.lock"):  # noqa: PT012
            async with state.lock:
                server.stop()
                server_factory().start()
                with pytest.raises(LockLost, match="held state.lock"):
                    await state.set("written", "without the lock")
                await state.get("a")  # LockLost again, until the task leaves the block
        assert await state.get("a") is None  # a new, empty server: reads just work
        async with state.lock.hold(timeout=5):
            await state.set("written", "with the lock")
        assert await state.get("written") == "with the lock"

    run_on(loop, main)


@pytest.mark.fault
@pytest.mark.parametrize("loop", LOOPS)
def test_a_stopped_server_gives_timeout_and_the_loop_keeps_running(
    server_factory: ServerFactory, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHAREDSTATE_CALL_TIMEOUT", "0.5")
    server = server_factory().start()

    async def main() -> None:
        state = await aio_state(start=False)
        await state.set("a", 1)
        ticks = _Ticks(every=0.01)
        server.signal(signal.SIGSTOP)
        try:
            while not is_stopped(server.pid):
                await asyncio.sleep(0.001)
            started = time.monotonic()
            results = await asyncio.gather(
                *(state.get("a") for _ in range(10)), return_exceptions=True
            )
            waited = time.monotonic() - started
        finally:
            server.signal(signal.SIGCONT)
        ticks.stop()
        assert all(isinstance(result, Timeout) for result in results), results
        assert "SHAREDSTATE_CALL_TIMEOUT" in str(results[0])
        assert waited < 5
        assert ticks.count >= 5  # the loop ran other tasks while the calls waited
        assert await state.get("a") == 1  # and the next call reconnects

    run_on(loop, main)


def _start_and_count(index: int) -> int:
    async def main() -> int:
        state = await aio_state()  # start=True: every worker may start the server
        return int(await state.incr("started workers"))

    return int(run_async(main))


@pytest.mark.fault
def test_many_async_workers_racing_start_exactly_one_server(workdir: str) -> None:
    counts = run_in_processes(_start_and_count, [(index,) for index in range(8)])
    assert sorted(counts) == list(range(1, 9))
    assert len(server_pids(workdir)) == 1
    get_shared_state(start=False)  # still there after the workers exited
    assert get_shared_state(start=False)["started workers"] == 8


def test_starting_the_server_does_not_block_the_event_loop(workdir: str) -> None:
    async def main() -> tuple[float, float]:
        ticks = _Ticks(every=0)
        await asyncio.sleep(0)
        started = time.monotonic()
        state = await aio_state()  # starts the server: a tenth of a second or more
        took = time.monotonic() - started
        ticks.stop()
        await state.set("up", True)
        return ticks.longest_gap, took

    # Had the start blocked the loop, the probe would have waited all through it.
    longest_gap, took = run_on("asyncio", main)
    assert longest_gap < took / 2, (longest_gap, took)

    assert len(server_pids(workdir)) == 1


def test_back_pressure_bounds_the_connections(server: ServerProcess) -> None:
    async def main() -> None:
        state = await aio_state(start=False, max_connections=2)
        most = 0

        async def read() -> None:
            nonlocal most
            await state.get("x")
            most = max(most, state.connections)

        await asyncio.gather(*(read() for _ in range(2000)))
        assert most <= 2
        assert len(server_info()["clients"]) <= 2

    run_on("asyncio", main)


def _child_uses_its_own_connections(results: Any) -> None:
    async def main() -> int:
        state = await aio_state(start=False)
        return int(await state.incr("children"))

    results.put(run_async(main))


@pytest.mark.fault
def test_a_forked_child_never_uses_its_parents_connections(server: ServerProcess) -> None:
    from .support.processes import fork_context

    async def main() -> None:
        state = await aio_state(start=False)
        await state.lock.acquire()
        results = fork_context.Queue()
        child = start_process(_child_uses_its_own_connections, results)
        assert results.get(timeout=20) == 1
        child.join(10)
        assert child.exitcode == 0
        # The child closed its copies without a word on them: the parent still holds
        # the lock, on a connection still in step.
        assert await state.lock.locked()
        assert await state.incr("children") == 2
        await state.lock.release()

    run_on("asyncio", main)


def _hold_lock_then_fork_and_die(ready: Any, loop: str) -> None:
    async def main() -> None:
        state = await aio_state(start=False)
        await state.lock.acquire()
        pid = os.fork()
        if pid == 0:  # the child outlives its parent, and must not keep the lock alive
            time.sleep(600)
            os._exit(0)
        ready.put(pid)
        await asyncio.sleep(600)

    run_on(loop, main, timeout=600)


@pytest.mark.fault
@pytest.mark.parametrize("loop", LOOPS)
def test_a_killed_holders_lock_is_freed_though_its_forked_child_lives(
    server: ServerProcess, loop: str
) -> None:
    from .support.processes import fork_context

    ready = fork_context.Queue()
    holder = start_process(_hold_lock_then_fork_and_die, ready, loop)
    grandchild = ready.get(timeout=20)
    try:
        _killing_frees_the_lock(holder)
    finally:
        os.kill(grandchild, signal.SIGKILL)
        holder.join(5)


@pytest.mark.fault
def test_a_write_cut_off_by_a_restart_is_reported_not_silently_lost(
    server: ServerProcess, server_factory: ServerFactory
) -> None:
    async def main() -> None:
        state = await aio_state(start=False)
        await state.set("a", 1)
        server.signal(signal.SIGSTOP)
        while not is_stopped(server.pid):
            await asyncio.sleep(0.001)
        pending = asyncio.ensure_future(state.incr("n"))
        await asyncio.sleep(0.1)
        server.signal(signal.SIGKILL)
        server.wait()
        # Sent again to no server: the caller hears of it (it may have taken effect).
        with pytest.raises((ConnectionLost, ServerNotRunning)):
            await pending
        server_factory().start()
        assert await state.incr("n") == 1  # the next call reconnects

    run_on("asyncio", main)


@contextlib.contextmanager
def _another_client_editing(key: str) -> Iterator[threading.Event]:
    """A sync client holds ``edit(key)`` in a thread until the event yielded is set."""
    editing = threading.Event()
    done = threading.Event()

    def edit_until_done() -> None:
        with get_shared_state(start=False).edit(key, default=0):
            editing.set()
            done.wait(20)

    editor = threading.Thread(target=edit_until_done)
    editor.start()
    try:
        assert editing.wait(10)
        yield done
    finally:
        done.set()
        editor.join(10)


@pytest.mark.parametrize("loop", LOOPS)
def test_calls_sent_behind_one_the_server_holds_back_are_answered_in_order(
    server: ServerProcess, loop: str
) -> None:
    # One connection: the write of a key another client edits waits for that edit, and
    # the calls sent behind it on the same connection wait with it, then all answer.
    sync = get_shared_state(start=False)
    sync["x"] = "x"
    with _another_client_editing("k") as done:

        async def main() -> list[Any]:
            state = await aio_state(start=False, max_connections=1)
            calls = asyncio.gather(
                state.set("k", "from async"),
                state.get("x"),
                state.incr("n"),
                *(state.get_many(["x", "n"]) for _ in range(100)),
                state.incr("k2"),
            )
            await asyncio.sleep(0.3)
            assert not calls.done()  # held back behind the edit, not refused
            done.set()
            return list(await calls)

        results = run_on(loop, main)
    assert results[:3] == [None, "x", 1]
    assert all(result == {"x": "x", "n": 1} for result in results[3:-1])
    assert results[-1] == 1
    assert sync["k"] == "from async"


def test_a_client_flooding_behind_a_held_back_call_does_not_stop_the_server(
    server: ServerProcess,
) -> None:
    # Past MAX_HELD_BACK_BYTES the server stops reading that client; everyone else is
    # served meanwhile, and the flood is answered once the call goes on.
    blob = b"x" * 100_000
    with _another_client_editing("k") as done:

        async def main() -> int:
            state = await aio_state(start=False, max_connections=1)
            flood = asyncio.gather(
                state.set("k", 1), *(state.set(f"blob{i}", blob) for i in range(30))
            )
            await asyncio.sleep(0.3)
            other = get_shared_state(start=False)
            other["still served"] = True  # another client, while the flood waits
            assert not flood.done()
            done.set()
            await flood
            return await state.len()

        assert run_on("asyncio", main) == 30 + 2  # the blobs (3 MB), "k", "still served"


@pytest.mark.parametrize("loop", LOOPS)
def test_a_task_that_ends_holding_the_lock_frees_it(server: ServerProcess, loop: str) -> None:
    # As a thread's connection closes when the thread ends, a task's hold does.
    async def main() -> None:
        state = await aio_state(start=False)

        async def take_and_forget() -> None:
            await state.lock.acquire()

        await asyncio.ensure_future(take_and_forget())
        await asyncio.sleep(0)  # the task, and its context with the hold, are gone
        gc.collect()
        assert await state.lock.acquire(timeout=5)
        await state.lock.release()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_write_waiting_for_its_connection_is_not_overtaken_by_a_later_one(
    server: ServerProcess, loop: str
) -> None:
    # A write that waits for a connection being opened, and a later write that finds it
    # open: each connection's writes must reach the server in the order of their
    # numbers, or the server refuses the overtaken one as out of step.
    async def main() -> list[Any]:
        state = await aio_state(start=False, max_connections=2)

        async def once_the_second_connection_is_up() -> Any:
            assert isinstance(state._pool, Pool)
            shared = state._pool._shared
            while len(shared) < 2 or not shared[1].usable:
                await asyncio.sleep(0)
            return await state.incr("n")

        with _another_client_editing("x") as done:
            asyncio.get_running_loop().call_later(0.5, done.set)
            results = await asyncio.gather(
                state.set("x", 1),  # connection 1: waits behind the edit
                state.incr("n"),  # opens connection 2, and waits for it
                state.set("x", 2),  # behind the first, on connection 1
                once_the_second_connection_is_up(),  # on connection 2, at once
                return_exceptions=True,
            )
            return list(results)

    results = run_on(loop, main)
    assert [result for result in results if isinstance(result, BaseException)] == []
    assert sorted(results[1::2]) == [1, 2]
