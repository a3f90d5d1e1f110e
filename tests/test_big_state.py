"""States past 2 GiB: what no single snapshot frame can hold is still saved and restored.

Each test keeps about 2.2 GB in the server (and up to twice that while it snapshots a
value grown by nested writes), and writes it to disk. The test process only ever holds
one 60 MB value at a time.
"""

from __future__ import annotations

import shutil
import signal
import time
from typing import Any

import pytest

from sharedstate import get_shared_state
from sharedstate.codec import DATA, decode

from .support.clients import fresh_state
from .support.persisted import snapshot_in
from .support.processes import run_cli
from .support.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.load

VALUE_BYTES = 60_000_000
COUNT = 37  # 37 x 60 MB = 2.22 GB > 2 GiB, the most one snapshot frame holds
NEEDED_DISK = 3 * COUNT * VALUE_BYTES  # the snapshot, its temporary file, slack


def value(index: int) -> bytes:
    return bytes([index]) * VALUE_BYTES


@pytest.fixture
def snapshot_path(workdir: str) -> str:
    return snapshot_in(workdir)


@pytest.fixture
def room(workdir: str) -> None:
    free = shutil.disk_usage(workdir).free
    if free < NEEDED_DISK:
        pytest.skip(f"needs {NEEDED_DISK / 1e9:.1f} GB free in {workdir}, has {free / 1e9:.1f}")


def _memory(info: str) -> str:
    for line in info.splitlines():
        if "memory" in line:
            return line.strip()
    return "?"


def _nested(state: Any, method: str, *args: Any) -> Any:
    """``state["big"].<method>(*args)`` as one call, without fetching the list first."""
    transport = state._transport
    call_data = transport.encode((args, {}), "state['big']")
    return decode(transport.call("nested", DATA, ("big",), method, call_data), "state['big']")


def _save_stop_restart(
    server: ServerProcess, server_factory: ServerFactory, args: tuple[str, ...]
) -> tuple[float, float]:
    """``sharedstate snapshot``, stop, start again; return the seconds each part took."""
    started = time.monotonic()
    result = run_cli("snapshot", timeout=600)
    assert result.returncode == 0, result.stderr
    snapshot_seconds = time.monotonic() - started
    print(f"\n{result.stdout.strip()}; {_memory(run_cli('status').stdout)}")
    server.signal(signal.SIGTERM)
    assert server.wait(600) == 0, server.log()
    started = time.monotonic()
    server_factory(*args).start(timeout=600)
    return snapshot_seconds, time.monotonic() - started


@pytest.mark.timeout(1200)
def test_a_snapshot_of_more_than_2_gib_in_one_chunk_is_saved_and_restored(
    server_factory: ServerFactory, snapshot_path: str, room: None
) -> None:
    args = ("--snapshot", snapshot_path, "--no-journal", "--snapshot-interval", "3600")
    server = server_factory(*args).start()
    state = get_shared_state(start=False)
    for index in range(COUNT):
        state[f"k{index}"] = value(index)  # one at a time: the test holds one value
    snapshot_seconds, start_seconds = _save_stop_restart(server, server_factory, args)
    print(f"snapshot {snapshot_seconds:.1f} s, restart {start_seconds:.1f} s")
    state = fresh_state()
    assert len(state) == COUNT
    for index in range(COUNT):
        assert state[f"k{index}"] == value(index), f"k{index} came back different"


@pytest.mark.timeout(1200)
def test_one_value_grown_past_2_gib_by_nested_writes_is_saved_and_restored(
    server_factory: ServerFactory, snapshot_path: str, room: None
) -> None:
    # Each append is a small request, so no request limit stops the list growing.
    args = ("--snapshot", snapshot_path, "--no-journal", "--snapshot-interval", "3600")
    server = server_factory(*args).start()
    state = get_shared_state(start=False)
    state["big"] = []
    for index in range(COUNT):
        _nested(state, "append", value(index))
    snapshot_seconds, start_seconds = _save_stop_restart(server, server_factory, args)
    print(f"snapshot {snapshot_seconds:.1f} s, restart {start_seconds:.1f} s")
    state = fresh_state()
    for index in range(COUNT):  # pop returns each item: one 60 MB value at a time
        assert _nested(state, "pop", 0) == value(index), f"item {index} came back different"
    assert state["big"] == []
