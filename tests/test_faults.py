"""Crashes under load: what each fsync policy keeps when the server dies at random.

Several writer processes run a mixed load (set, incr, nested write) while the server is
SIGKILLed at a random moment, cycle after cycle. A killed process loses nothing the OS
already has, so each crash is also treated as a power loss: every journal is cut back
to what fsync had made durable (``tests/support/faults.py``). Then a new server recovers, and we
compare what the writers saw acknowledged with what came back.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pickle
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

import pytest

from sharedstate import (
    ConfigError,
    LeaseExpired,
    PersistenceError,
    SharedStateError,
    Timeout,
    get_shared_state,
)
from sharedstate.client.launcher import call_server_function
from sharedstate.client.state import connect_state
from sharedstate.config import load_settings
from sharedstate.persistence import durable
from sharedstate.persistence.coordinator import Persistence
from sharedstate.server.reservations import LocalCaller
from sharedstate.server.store import Store

from .support.clients import fresh_state
from .support.faults import SYNCED_LOG_ENV, FailingDisk, Rule, lose_unsynced_writes
from .support.persisted import snapshot_in
from .support.processes import fork_context, kill_and_wait, run_cli, start_process, wait_until
from .support.procfs import is_stopped
from .support.servers import ServerFactory, ServerProcess, server_info

pytestmark = pytest.mark.fault

WRITERS = 3
CYCLES = {"always": 10, "everysec": 8, "no": 5}
EVERYSEC_LOSS_BOUND = 2.0  # "about a second's worth": the sync interval plus scheduling slack


def _write_until_cut(writer: int, acked: Any, incremented: Any, times_path: str) -> None:
    """One writer's load: an iteration is acknowledged once all three of its writes are."""
    state = get_shared_state(start=False)
    index = acked[writer]
    ack_times = []
    try:
        while True:
            index += 1
            state[f"w{writer}:{index}"] = index
            state.incr("count")
            incremented[writer] += 1
            state["last"][str(writer)] = index  # a nested write
            acked[writer] = index
            ack_times.append((index, time.monotonic()))
    except SharedStateError:
        pass
    with open(times_path, "w", encoding="utf-8") as file:
        json.dump(ack_times, file)


@dataclass
class CycleResult:
    acknowledged: int  # iterations acknowledged during the cycle, all writers
    lost: int  # of those, not recovered
    loss_window: float  # seconds between the oldest lost acknowledgement and the crash


def _crash_cycle(
    server: ServerProcess, workdir: str, acked: Any, incremented: Any
) -> tuple[float, list[str], list[int]]:
    """Run the writers, kill the server at a random moment; return when and the time files."""
    before = list(acked)
    times = [os.path.join(workdir, f"acks-{writer}.json") for writer in range(WRITERS)]
    writers = [
        start_process(_write_until_cut, writer, acked, incremented, times[writer])
        for writer in range(WRITERS)
    ]
    wait_until(lambda: all(acked[w] > before[w] + 10 for w in range(WRITERS)))
    time.sleep(random.uniform(0, 1.5))  # a random moment, across snapshots and fsyncs
    killed_at = time.monotonic()
    kill_and_wait(server.pid)
    for writer in writers:
        writer.join(30)
        assert writer.exitcode == 0
    return killed_at, times, before


def _check_recovered(
    state: dict[Any, Any], killed_at: float, times: list[str], before: list[int], acked: Any
) -> CycleResult:
    """Every writer's recovered writes are a prefix of what it sent: no holes, no ghosts."""
    acknowledged = lost = 0
    window = 0.0
    for writer in range(WRITERS):
        sent = acked[writer] + 1  # the iteration in flight may or may not have landed
        recovered = sorted(
            int(key.partition(":")[2]) for key in state if key.startswith(f"w{writer}:")
        )
        last = recovered[-1] if recovered else 0
        assert recovered == list(range(1, last + 1)), f"writer {writer}: a hole in its writes"
        assert last <= sent
        assert state["last"].get(str(writer), 0) in (last - 1, last), "nested write out of step"
        with open(times[writer], encoding="utf-8") as file:
            ack_times = dict(json.load(file))
        acknowledged += acked[writer] - before[writer]
        lost_here = [index for index in ack_times if index > last]
        lost += len(lost_here)
        if lost_here:
            window = max(window, killed_at - ack_times[min(lost_here)])
        acked[writer] = last  # writers go on from what survived
    return CycleResult(acknowledged, lost, window)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("policy", ["always", "everysec", "no"])
def test_a_crash_loses_only_what_the_fsync_policy_allows(
    server_factory: ServerFactory,
    workdir: str,
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
) -> None:
    snapshot = snapshot_in(workdir)
    synced_log = os.path.join(workdir, "synced.log")
    monkeypatch.setenv(SYNCED_LOG_ENV, synced_log)
    args = ("--snapshot", snapshot, "--fsync", policy, "--snapshot-interval", "0.5")
    server = server_factory(*args, faults="").start()
    get_shared_state(start=False)["last"] = {}
    call_server_function(load_settings({}), "snapshot_now", 30)  # durable before any crash
    acked = fork_context.Array("q", WRITERS)
    incremented = fork_context.Array("q", WRITERS)
    results = []
    count = 0
    for _cycle in range(CYCLES[policy]):
        killed_at, times, before = _crash_cycle(server, workdir, acked, incremented)
        lose_unsynced_writes(snapshot, synced_log)
        server = server_factory(*args, faults="").start()
        contents = fresh_state().to_dict()
        results.append(_check_recovered(contents, killed_at, times, before, acked))
        # Increments are writes too: never more than were sent (one in flight per
        # writer), and no fewer than were acknowledged unless the policy allows it.
        acknowledged_increments = sum(incremented[:])
        recovered_count = contents.get("count", 0)  # all its writes may be lost, unsynced
        assert count <= recovered_count <= count + acknowledged_increments + WRITERS
        if policy == "always":
            assert recovered_count >= count + acknowledged_increments
        count = recovered_count
        for writer in range(WRITERS):
            incremented[writer] = 0
    acknowledged = sum(r.acknowledged for r in results)
    lost = sum(r.lost for r in results)
    window = max(r.loss_window for r in results)
    print(
        f"\n{policy}: {len(results)} crashes, {acknowledged} acknowledged rounds of 3 writes, "
        f"{lost} lost (oldest lost acknowledged {window:.2f} s before the crash)"
    )
    if policy == "always":
        assert lost == 0
    elif policy == "everysec":
        assert window <= EVERYSEC_LOSS_BOUND, f"lost writes acknowledged {window:.2f} s before"


# -- disk errors at every step ---------------------------------------------------------


def _write(state: Any, key: str, acked: dict[str, int], attempted: set[str]) -> None:
    attempted.add(key)
    try:
        state[key] = len(attempted)
    except PersistenceError:
        return  # refused: not acknowledged
    acked[key] = len(attempted)


def _run_io_scenario(server: ServerProcess, snapshot: str) -> tuple[dict[str, int], set[str]]:
    """Writes, snapshots, more writes, a clean stop: each step does disk I/O that may fail."""
    state = fresh_state()
    acked: dict[str, int] = {}
    attempted: set[str] = set()
    settings = load_settings({})
    for round_ in range(2):
        for index in range(3):
            _write(state, f"r{round_}:{index}", acked, attempted)
        with contextlib.suppress(PersistenceError):
            call_server_function(settings, "snapshot_now", 30)
        # Whatever failed, the server still serves everything it acknowledged.
        contents = state.to_dict()
        assert {key: contents[key] for key in acked} == acked
    server.signal(signal.SIGTERM)
    server.wait()
    return acked, attempted


def _recover_in_process(snapshot: str) -> dict[str, Any]:
    store = Store()
    persistence = Persistence(store, load_settings({"snapshot": snapshot}))
    persistence.recover()
    persistence.abandon()
    return {key: pickle.loads(data) for key, data in store.export().data.items()}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("lasting", [False, True], ids=["one-call", "from-then-on"])
def test_a_disk_error_at_any_step_loses_nothing_acknowledged(
    server_factory: ServerFactory, workdir: str, lasting: bool
) -> None:
    """SQLite style: fail the Nth disk call (or every call from the Nth), for every N."""
    snapshot = snapshot_in(workdir)
    args = ("--snapshot", snapshot, "--fsync", "always", "--snapshot-interval", "3600")
    failures = 0
    for nth in range(1, 500):
        for path in glob.glob(snapshot + "*"):
            os.unlink(path)
        server = server_factory(*args, faults=f"*@:{nth}{'-' if lasting else ''}")
        try:
            server.start()
        except AssertionError:
            # The fault stopped the start: it must say why, and leave loadable files.
            assert "injected fault" in server.log()
            assert "Traceback" not in server.log(), server.log()
            _recover_in_process(snapshot)
            failures += 1
            continue
        acked, attempted = _run_io_scenario(server, snapshot)
        if "injected fault" not in server.log():
            break  # the scenario made fewer than nth disk calls: every step was covered
        failures += 1
        assert "Traceback" not in server.log(), server.log()
        recovered = _recover_in_process(snapshot)
        assert {key: recovered.get(key) for key in acked} == acked, server.log()
        assert set(recovered) <= attempted
    else:
        pytest.fail("the scenario never ran out of disk calls to fail")
    print(f"\n{failures} runs with a disk error injected at call 1..{nth - 1}")
    assert failures > 20, "the scenario should make more disk calls than this"


# -- snapshots failing in unexpected ways ---------------------------------------------------


def _status() -> str:
    return run_cli("status").stdout


@pytest.mark.timeout(90)
def test_a_snapshot_failing_with_an_unexpected_error_is_reported_and_the_server_stays_up(
    server_factory: ServerFactory, workdir: str
) -> None:
    snapshot = snapshot_in(workdir)
    args = ("--snapshot", snapshot, "--snapshot-interval", "0.2")
    server = server_factory(*args, faults="write@state.snap.tmp:1-!ValueError").start()
    state = get_shared_state(start=False)
    state["a"] = 1
    wait_until(lambda: "UNHEALTHY" in _status())  # the periodic snapshot failed
    assert snapshot in _status()
    failed = run_cli("snapshot")
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1, f"one line, not a traceback: {failed.stderr}"
    assert failed.stderr.startswith("error: ")
    assert snapshot in failed.stderr
    state["b"] = 2  # still serving, still journaling
    server.signal(signal.SIGTERM)
    assert server.wait() == 1, "the final snapshot failed: serve says so"
    assert "the final snapshot failed" in server.log()
    server_factory(*args).start()
    assert fresh_state().to_dict() == {"a": 1, "b": 2}


@pytest.mark.timeout(90)
def test_the_snapshot_thread_survives_unexpected_errors_and_retries(
    server_factory: ServerFactory, workdir: str
) -> None:
    snapshot = snapshot_in(workdir)
    args = ("--snapshot", snapshot, "--snapshot-interval", "0.2")
    server_factory(*args, faults="write@state.snap.tmp:1-2!MemoryError").start()
    get_shared_state(start=False)["a"] = 1
    wait_until(lambda: "UNHEALTHY" in _status())
    # Nobody asks for a snapshot: only a living snapshot thread makes it healthy again.
    wait_until(lambda: "persistence: ok" in _status(), timeout=30)
    assert os.path.exists(snapshot)


@pytest.mark.parametrize(
    ("policy", "fault"),
    [("everysec", "sync@journal:2!RuntimeError"), ("always", "write@journal:3!ValueError")],
)
def test_a_journal_failing_with_an_unexpected_error_refuses_writes_and_says_so(
    server_factory: ServerFactory, workdir: str, policy: str, fault: str
) -> None:
    # Not an OSError, yet the journal can't be trusted with the next write: refuse
    # writes until a snapshot starts a clean segment, as for a disk error.
    snapshot = snapshot_in(workdir)
    args = ("--snapshot", snapshot, "--fsync", policy, "--snapshot-interval", "3600")
    server = server_factory(*args, faults=fault).start()
    state = get_shared_state(start=False)
    state["a"] = 1
    with contextlib.suppress(PersistenceError):
        state["b"] = 2  # under always the fault hits this write: refused
    wait_until(lambda: "UNHEALTHY" in _status())
    assert "journal" in _status()
    with pytest.raises(PersistenceError, match="refused"):
        state["c"] = 3
    assert run_cli("snapshot").returncode == 0  # a clean segment: writes resume
    wait_until(lambda: "persistence: ok" in _status())
    state["d"] = 4
    assert "unexpected error in the journal" in server.log()  # with its traceback, to debug
    kill_and_wait(server.pid)
    server_factory(*args).start()
    recovered = fresh_state().to_dict()
    assert recovered["a"] == 1
    assert recovered["d"] == 4
    assert "c" not in recovered


def test_close_returns_why_the_final_snapshot_failed(
    workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = snapshot_in(workdir)
    settings = load_settings({"snapshot": snapshot})
    monkeypatch.setattr(durable, "disk", FailingDisk([Rule.parse("replace@state.snap:1-")]))
    persistence = Persistence(Store(), settings)
    persistence.recover()
    persistence.start()
    persistence.store.set(LocalCaller(1), "a", b"1")
    failure = persistence.close()
    assert failure is not None
    assert snapshot in failure
    assert "the journal still holds every write" in failure
    monkeypatch.setattr(durable, "disk", FailingDisk([]))
    persistence = Persistence(Store(), settings)
    persistence.recover()
    persistence.start()
    assert persistence.store.lookup(LocalCaller(1), "a") == b"1"
    assert persistence.close() is None


# -- no room for a snapshot at start ------------------------------------------------------


def _set_keys_until_cut(acked: Any) -> None:
    state = get_shared_state(start=False)
    try:
        while True:
            state[f"k{acked.value + 1}"] = acked.value + 1
            acked.value += 1
    except SharedStateError:
        return


@pytest.mark.timeout(120)
def test_a_crashed_server_restarts_and_serves_when_no_snapshot_can_be_written(
    server_factory: ServerFactory, workdir: str
) -> None:
    # A crash on a nearly full disk: recovery must not need room for a whole snapshot.
    snapshot = snapshot_in(workdir)
    args = ("--snapshot", snapshot, "--fsync", "always", "--snapshot-interval", "0.5")
    server = server_factory(*args).start()
    acked = fork_context.Value("q", 0)
    writer = start_process(_set_keys_until_cut, acked)
    wait_until(lambda: acked.value > 300)
    kill_and_wait(server.pid)
    writer.join(30)
    assert writer.exitcode == 0
    expected = {f"k{i}": i for i in range(1, acked.value + 1)}

    disk_full = "open@state.snap.tmp:1-,write@state.snap.tmp:1-,replace@state.snap:1-"
    server = server_factory(*args, faults=disk_full).start()
    state = fresh_state()
    recovered = state.to_dict()
    assert {key: recovered.get(key) for key in expected} == expected
    wait_until(lambda: "UNHEALTHY" in run_cli("status").stdout)
    assert snapshot in run_cli("status").stdout
    state["after"] = 1  # the journal still takes writes
    server.signal(signal.SIGTERM)
    assert server.wait() == 1, "the final snapshot failed: serve says so"
    assert "the final snapshot failed" in server.log()

    server_factory(*args).start()
    state = fresh_state()
    recovered = state.to_dict()
    assert {key: recovered.get(key) for key in expected} == expected
    assert recovered["after"] == 1
    wait_until(lambda: "persistence: ok" in run_cli("status").stdout)
    wait_until(lambda: len(glob.glob(snapshot + ".journal.*")) == 1)  # older ones removed


# -- hung lock holders and a hung server -----------------------------------------------


def _hold_then_hang(lease: float | None, outcome: Any) -> None:
    """Take the lock, stop ourselves (a hung worker), and try to release once continued."""
    state = get_shared_state(start=False)
    assert state.lock.acquire(lease=lease)
    os.kill(os.getpid(), signal.SIGSTOP)
    try:
        state.lock.release()
        outcome.value = b"released"
    except LeaseExpired as error:
        outcome.value = b"LeaseExpired: " + str(error).encode()[:200]


@contextlib.contextmanager
def _hung_holder(lease: float | None) -> Iterator[tuple[BaseProcess, Any]]:
    """A process holding the lock (with ``lease``), stopped; yields it and its outcome."""
    outcome = fork_context.Array("c", 256)
    holder = start_process(_hold_then_hang, lease, outcome)
    try:
        wait_until(lambda: is_stopped(holder.pid or 0))
        yield holder, outcome
    finally:
        holder.kill()
        holder.join(10)


def test_a_hung_holder_keeps_the_lock_without_a_lease(server: ServerProcess) -> None:
    with _hung_holder(None) as (holder, outcome):
        state = get_shared_state(start=False)
        assert state.lock.acquire(timeout=0.5) is False
        os.kill(holder.pid or 0, signal.SIGCONT)
        holder.join(30)
        assert outcome.value == b"released"


def test_a_lease_frees_a_hung_holders_lock_and_its_late_release_fails(
    server: ServerProcess,
) -> None:
    with _hung_holder(0.5) as (holder, outcome):
        state = get_shared_state(start=False)
        assert state.lock.acquire(timeout=30), "the lease never freed the lock"
        assert is_stopped(holder.pid or 0), "freed by the lease, not by the holder"
        server.wait_for_log("past its 0.5 s lease; the lock is freed")
        os.kill(holder.pid or 0, signal.SIGCONT)
        holder.join(30)
        assert holder.exitcode == 0
        assert outcome.value.startswith(b"LeaseExpired: state.lock.release() came after")
        assert state.lock.locked(), "the late release must not free the new holder's lock"
        state.lock.release()


def test_a_lease_is_released_normally_when_the_holder_is_in_time(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    with state.lock.hold(lease=60):
        assert state.lock.locked()
    assert not state.lock.locked()
    with pytest.raises(ConfigError, match="positive"):
        state.lock.acquire(lease=0)


def test_hold_with_a_timeout_raises_timeout_when_the_lock_stays_taken(
    server: ServerProcess,
) -> None:
    with _hung_holder(None) as (holder, outcome):
        state = get_shared_state(start=False)
        with pytest.raises(Timeout, match="held by another"), state.lock.hold(timeout=0.2):
            pytest.fail("the lock was taken")


def test_a_stopped_server_gives_timeout_not_a_hang(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHAREDSTATE_CALL_TIMEOUT", "0.5")
    settings = load_settings({})
    reader, writer, locker = (connect_state(settings, start=False, timeout=5) for _ in range(3))
    reader["x"] = 1
    server.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: is_stopped(server.pid))
        with pytest.raises(Timeout, match="did not answer lookup"):
            reader["x"]
        with pytest.raises(Timeout, match="did not answer set"):
            writer["big"] = b"x" * (16 << 20)  # fills the socket buffer: the send times out
        with pytest.raises(Timeout, match="did not answer lock_acquire"):
            locker.lock.acquire(timeout=0.2)
        with pytest.raises(Timeout, match="did not answer within 0.5 s"):
            reader["x"]  # a new connection: the handshake times out too
    finally:
        server.signal(signal.SIGCONT)
    assert reader["x"] == 1, "the next call reconnects"
    assert "big" not in reader
    assert locker.lock.acquire(timeout=5)
    locker.lock.release()
    for state in (reader, writer, locker):
        state.close()


def test_a_waiting_call_may_outlast_the_call_timeout(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHAREDSTATE_CALL_TIMEOUT", "0.2")
    with _hung_holder(1.5) as (holder, outcome):
        state = get_shared_state(start=False)
        # Waits for the lease (1.5 s), far longer than the call timeout: that is asked for.
        assert state.lock.acquire(timeout=30)
        state.lock.release()


def _take_lock_and_sign(name: str) -> None:
    state = get_shared_state(start=False)
    with state.lock:
        state["order"].append(name)


def test_waiters_get_the_lock_in_the_order_they_asked(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    state["order"] = []
    assert state.lock.acquire()
    waiters = []
    try:
        for count, name in enumerate("abcde", start=1):
            waiters.append(start_process(_take_lock_and_sign, name))

            def all_parked(count: int = count) -> bool:
                return bool(server_info()["waiting"] == count)

            wait_until(all_parked)  # before the next one starts
        assert state["order"] == []
    finally:
        state.lock.release()
        for waiter in waiters:
            waiter.join(30)
    assert [waiter.exitcode for waiter in waiters] == [0] * 5
    assert state["order"] == list("abcde")
