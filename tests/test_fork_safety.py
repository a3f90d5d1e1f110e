"""After fork(): the threads of a child reset the parent's connections once, together.

``os.register_at_fork`` resets the client in a child before any other thread exists
there. A fork that skips Python's at-fork hooks (``fork()`` called from C) leaves that
to the pid check in each call, and the first calls of several threads may then race.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from sharedstate import get_shared_state
from sharedstate.client.transport import Transport

from .support.servers import ServerProcess

WAIT = 10.0  # no step of these tests takes more than a blink; this only bounds a failure


class ArrivalsAtForkLock:
    """The transport's fork lock, telling the test when a second thread comes to take it."""

    def __init__(self, second_arrived: threading.Event) -> None:
        self._lock = threading.Lock()
        self._arrivals = 0
        self._second_arrived = second_arrived

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self._arrivals += 1
        if self._arrivals == 2:
            self._second_arrived.set()  # before it blocks: the first one holds the lock
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _in_thread(target: Callable[[], None], failures: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            target()
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait(event: threading.Event, what: str) -> None:
    if not event.wait(WAIT):
        raise AssertionError(f"waited {WAIT} s for {what}")


@pytest.mark.timeout(60)
def test_two_threads_of_a_child_forked_without_hooks_reset_its_connections_once(
    server: ServerProcess,
) -> None:
    state = get_shared_state(start=False)
    state["before the fork"] = 1  # the "parent's" connection is open
    transport: Any = state._transport
    assert isinstance(transport, Transport)

    # As in a child forked by C code that skipped the at-fork hooks: the transport
    # remembers another process's pid, and nothing has reset it yet.
    transport._pid = -1

    first_resetting = threading.Event()
    second_arrived = threading.Event()  # at the fork lock, or (no lock) in the reset
    first_holds_lock = threading.Event()
    second_done = threading.Event()
    resets: list[str] = []
    real_reset = transport._forget_parent_connections

    def paused_reset() -> None:
        name = threading.current_thread().name
        resets.append(name)
        if len(resets) == 1:
            first_resetting.set()
            _wait(second_arrived, "the second thread to reach the pid check")
        else:
            # Without a fork lock the second thread resets too; let it do so at the
            # worst moment: once the first thread has reconnected and taken the lock.
            second_arrived.set()
            _wait(first_holds_lock, "the first thread to take the lock")
        real_reset()

    transport._forget_parent_connections = paused_reset  # type: ignore[method-assign]
    transport._fork_lock = ArrivalsAtForkLock(second_arrived)  # type: ignore[assignment]

    def first() -> None:
        assert state.lock.acquire(timeout=5)
        first_holds_lock.set()
        _wait(second_done, "the second thread's call")
        state["under the lock"] = "first"  # must still be under the lock
        state.lock.release()  # LockError if its connection was closed under it

    def second() -> None:
        try:
            _wait(first_resetting, "the first thread to start resetting")
            state.incr("second")
        finally:
            second_done.set()

    failures: list[BaseException] = []
    threads = [_in_thread(first, failures), _in_thread(second, failures)]
    for thread in threads:
        thread.join(WAIT * 3)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert len(resets) == 1, f"the connections were reset by {resets}"
    assert state["under the lock"] == "first"
    assert state["second"] == 1
    assert not state.lock.locked()
