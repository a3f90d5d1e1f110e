"""get_shared_state() reads its settings once per process, and again when told or forked.

A request handler calls it every time (the README's quick start does), so a repeated
call must not read the environment and ``.env`` again. The price: a change to them
takes effect after ``forget_settings()``, or in a child after ``fork()``.
"""

from __future__ import annotations

import logging
import os
import threading

import pytest

import sharedstate.client.state
from sharedstate import ServerNotRunning, SharedState, get_shared_state
from sharedstate.client.state import forget_settings
from sharedstate.client.transport import Transport

from .support.processes import run_in_processes
from .support.servers import ServerFactory, ServerProcess

WAIT = 10.0


def _point_settings_at(where: str, address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if where == "environment":
        monkeypatch.setenv("SHAREDSTATE_ADDRESS", address)
    else:
        monkeypatch.delenv("SHAREDSTATE_ADDRESS", raising=False)
        with open(".env", "w") as file:
            file.write(f"SHAREDSTATE_ADDRESS={address}\n")


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_a_changed_setting_takes_effect_after_forget_settings(
    server: ServerProcess, workdir: str, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _point_settings_at(where, server.address, monkeypatch)
    state = get_shared_state(start=False)
    elsewhere = os.path.join(workdir, "elsewhere", "state.sock")
    _point_settings_at(where, elsewhere, monkeypatch)
    assert get_shared_state(start=False) is state, "the settings were read again"

    forget_settings()
    with pytest.raises(ServerNotRunning, match="elsewhere"):
        get_shared_state(start=False)
    _point_settings_at(where, server.address, monkeypatch)
    again = get_shared_state(start=False)  # the failed call left nothing behind
    assert again is state, "the same settings give the same object after forget_settings()"
    assert again.incr("n") == 1


def test_a_changed_call_timeout_gives_a_state_that_uses_it(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not only the address and key: any setting may change how a state connects.
    state = get_shared_state(start=False)
    assert isinstance(state._transport, Transport)
    assert state._transport.call_timeout == 10.0
    monkeypatch.setenv("SHAREDSTATE_CALL_TIMEOUT", "3")
    forget_settings()
    changed = get_shared_state(start=False)
    assert changed is not state
    assert isinstance(changed._transport, Transport)
    assert changed._transport.call_timeout == 3.0
    assert changed.incr("n") == 1


def test_the_environment_is_read_once_per_set_of_arguments(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Each read of the environment warns about an unknown variable: count the reads.
    monkeypatch.setenv("SHAREDSTATE_NOT_A_SETTING", "1")
    with caplog.at_level(logging.WARNING, logger="sharedstate"):
        states = [get_shared_state(start=False) for _ in range(100)]
        states += [get_shared_state(start=False, timeout=5.0) for _ in range(100)]
    reads = [record for record in caplog.records if "NOT_A_SETTING" in record.getMessage()]
    assert len(reads) == 2
    assert len({id(state) for state in states}) == 2


def _address_of_get_shared_state() -> str:
    return str(get_shared_state(start=False).address)


def test_a_forked_child_reads_the_settings_again(
    server_factory: ServerFactory, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = server_factory().start()
    other = server_factory(address=os.path.join(workdir, "other", "state.sock")).start()
    assert str(get_shared_state(start=False).address) == first.address
    monkeypatch.setenv("SHAREDSTATE_ADDRESS", other.address)

    [seen_by_child] = run_in_processes(_address_of_get_shared_state, [()])
    assert seen_by_child == other.address
    assert _address_of_get_shared_state() == first.address, "the parent keeps what it read"


def test_a_child_forked_without_the_hooks_reads_the_settings_again(
    server_factory: ServerFactory, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = server_factory().start()
    other = server_factory(address=os.path.join(workdir, "other", "state.sock")).start()
    assert _address_of_get_shared_state() == first.address
    assert str(get_shared_state(start=False, timeout=5.0).address) == first.address
    monkeypatch.setenv("SHAREDSTATE_ADDRESS", other.address)
    # As in a child forked by C code that skipped the at-fork hooks: the settings
    # remembered were read by another process.
    monkeypatch.setattr(sharedstate.client.state, "_by_arguments_pid", -1)
    assert _address_of_get_shared_state() == other.address
    # What the "parent" resolved for other arguments is gone too.
    assert str(get_shared_state(start=False, timeout=5.0).address) == other.address


@pytest.mark.timeout(60)
def test_threads_get_one_state_while_others_forget_the_settings(server: ServerProcess) -> None:
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    seen: list[SharedState] = []
    failures: list[BaseException] = []

    def call_many_times(forgets: bool) -> None:
        try:
            barrier.wait(WAIT)
            for round_number in range(300):
                seen.append(get_shared_state(start=False))
                if forgets and round_number % 10 == 0:
                    forget_settings()
        except BaseException as error:
            failures.append(error)

    threads = [
        threading.Thread(target=call_many_times, args=(index % 2 == 0,), daemon=True)
        for index in range(threads_count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert len(seen) == threads_count * 300
    assert all(state is seen[0] for state in seen)
    assert seen[0].incr("n") == 1
