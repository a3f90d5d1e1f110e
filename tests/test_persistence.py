"""State survives restarts and crashes; damaged files are refused and never modified."""

from __future__ import annotations

import glob
import os
import pickle
import random
import signal
import time
from typing import Any

import pytest

from sharedstate import InvalidArgument, PersistenceError, SharedStateError, get_shared_state
from sharedstate.protocol import ERROR, STORE, TRACEBACK, dump_request, load_reply

from .support.clients import fresh_state
from .support.persisted import (
    fingerprint,
    fingerprints,
    flip_byte,
    record_offsets,
    segments,
    serve_refused,
    snapshot_in,
)
from .support.processes import fork_context, kill_and_wait, run_cli, start_process, wait_until
from .support.procfs import server_pids
from .support.servers import ServerFactory, ServerProcess
from .support.wire import store_connection


@pytest.fixture
def snapshot(workdir: str) -> str:
    return snapshot_in(workdir)


def fill(state: Any) -> None:
    state["plain"] = "text"
    state["cfg"] = {"db": {"port": 1, "hosts": ["a"]}}
    state["cfg"]["db"]["port"] = 5432
    state["cfg"]["db"]["hosts"].append("b")
    state.incr("hits", 3)
    state["gone"] = 1
    del state["gone"]
    with state.edit("counts", default={}) as counts:
        counts["x"] = 1
    state.namespace.mode = "live"


FILLED = {
    "plain": "text",
    "cfg": {"db": {"port": 5432, "hosts": ["a", "b"]}},
    "hits": 3,
    "counts": {"x": 1},
}


@pytest.mark.parametrize("journal", ["--journal", "--no-journal"])
def test_state_survives_a_clean_restart(
    server_factory: ServerFactory, snapshot: str, journal: str
) -> None:
    first = server_factory("--snapshot", snapshot, journal).start()
    fill(get_shared_state(start=False))
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    assert segments(snapshot) == [], "a clean stop leaves everything in the snapshot"
    server_factory("--snapshot", snapshot, journal).start()
    state = fresh_state()
    assert state.to_dict() == FILLED
    assert state.namespace.mode == "live"


def test_a_snapshot_is_taken_periodically_when_state_changed(
    server_factory: ServerFactory, snapshot: str
) -> None:
    server_factory("--snapshot", snapshot, "--snapshot-interval", "0.2").start()
    get_shared_state(start=False)["x"] = 1
    wait_until(lambda: os.path.exists(snapshot))
    assert segments(snapshot), "the journal goes on after the snapshot"


def _write_until_cut(acked: Any, incremented: Any) -> None:
    state = get_shared_state(start=False)
    index = acked.value
    try:
        while True:
            index += 1
            state[f"k{index}"] = index
            acked.value = index
            state.incr("n")
            incremented.value += 1
    except SharedStateError:
        return


@pytest.mark.fault
@pytest.mark.timeout(180)
@pytest.mark.parametrize("policy", ["always", "everysec", "no"])
def test_no_acknowledged_write_is_lost_when_the_server_is_killed(
    server_factory: ServerFactory, snapshot: str, policy: str
) -> None:
    args = ("--snapshot", snapshot, "--fsync", policy, "--snapshot-interval", "0.3")
    acked = fork_context.Value("q", 0)
    incremented = fork_context.Value("q", 0)
    server = server_factory(*args).start()
    for _cycle in range(6 if policy == "always" else 3):
        before = acked.value
        writer = start_process(_write_until_cut, acked, incremented)

        def written_past(mark: int = before + 20) -> bool:
            return bool(acked.value > mark)

        wait_until(written_past)
        time.sleep(random.uniform(0, 0.3))  # kill at a random moment, not a timed assertion
        kill_and_wait(server.pid)
        writer.join(30)
        assert writer.exitcode == 0
        server = server_factory(*args).start()
        state = fresh_state().to_dict()
        missing = [i for i in range(1, acked.value + 1) if state.get(f"k{i}") != i]
        assert missing == [], f"acknowledged writes lost: {missing[:10]}"
        # The increment in flight when the server died may or may not have happened.
        assert incremented.value <= state["n"] <= incremented.value + 1
        incremented.value = state["n"]


def _killed_after_writes(server_factory: ServerFactory, snapshot: str, count: int) -> None:
    server = server_factory("--snapshot", snapshot, "--fsync", "always").start()
    state = get_shared_state(start=False)
    for index in range(1, count + 1):
        state[f"k{index}"] = index
    kill_and_wait(server.pid)


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("set", ("k", 42)),  # a value that is not a pickle
        ("set", (frozenset({1}), pickle.dumps(1))),  # a key a journal can't hold
        ("update", ([("k", "not bytes")],)),
        ("incr", (["a", "list"], 1)),  # an unhashable key
    ],
    ids=["value-not-bytes", "frozenset-key", "update-pair", "list-key"],
)
def test_a_write_the_journal_could_not_replay_is_refused_and_the_server_still_restarts(
    server_factory: ServerFactory, snapshot: str, method: str, args: tuple[Any, ...]
) -> None:
    # Our clients never send these; a client of someone's own making might. Journaled,
    # such a record would stop every later start of the server at recovery.
    server = server_factory("--snapshot", snapshot, "--fsync", "always").start()
    conn = store_connection()
    conn.send_bytes(dump_request(STORE, method, args, 1))
    kind, error = load_reply(conn.recv_bytes())
    conn.close()
    if method == "incr":
        assert kind == TRACEBACK  # the key can't be hashed: refused before anything else
    else:
        assert kind == ERROR
        assert isinstance(error, InvalidArgument), error
        assert "refused" in str(error)
    state = get_shared_state(start=False)
    state["kept"] = "yes"
    kill_and_wait(server.pid)
    server_factory("--snapshot", snapshot, "--fsync", "always").start()
    assert fresh_state().to_dict() == {"kept": "yes"}


@pytest.mark.parametrize("spelling", ["same path", "symlinked directory", "dot-dot path"])
def test_a_second_server_on_the_same_snapshot_is_refused_and_changes_no_file(
    server_factory: ServerFactory, snapshot: str, workdir: str, spelling: str
) -> None:
    # Two servers on one snapshot: the second would replay the first's live journal and
    # compact it away, losing what the first acknowledges after that.
    args = ("--snapshot", snapshot, "--fsync", "always", "--snapshot-interval", "3600")
    first = server_factory(*args).start()
    state = get_shared_state(start=False)
    for index in range(1, 6):
        state[f"k{index}"] = index
    directory = os.path.dirname(snapshot)
    other_spelling = {
        "same path": snapshot,
        "symlinked directory": os.path.join(workdir, "link", "state.snap"),
        "dot-dot path": os.path.join(directory, "..", "data", "state.snap"),
    }[spelling]
    os.symlink(directory, os.path.join(workdir, "link"))
    before = fingerprints(directory)
    other_address = os.path.join(workdir, "other", "other.sock")
    result = serve_refused("--address", other_address, "--snapshot", other_spelling)
    assert result.returncode == 1
    assert first.address in result.stderr, "names the server that has the snapshot"
    assert f"pid {first.pid}" in result.stderr
    assert "sharedstate stop" in result.stderr
    assert "Traceback" not in result.stderr
    assert fingerprints(directory) == before, "the refused server changed a file"
    state["k6"] = 6  # acknowledged under fsync always: must survive the first one's death
    kill_and_wait(first.pid)
    server_factory(*args).start()
    assert fresh_state().to_dict() == {f"k{i}": i for i in range(1, 7)}


def test_a_snapshot_lock_file_that_is_a_symlink_is_refused(
    snapshot: str, address: str, workdir: str
) -> None:
    # Someone could point the lock at a file of the user's: it must not be written.
    precious = os.path.join(workdir, "precious.txt")
    with open(precious, "w") as file:
        file.write("mine")
    os.symlink(precious, snapshot + ".lock")
    result = serve_refused("--address", address, "--snapshot", snapshot)
    assert result.returncode == 1
    assert f"{snapshot}.lock is a symbolic link" in result.stderr
    assert "Traceback" not in result.stderr
    with open(precious) as file:
        assert file.read() == "mine"


def test_a_torn_last_record_is_dropped_with_a_warning(
    server_factory: ServerFactory, snapshot: str
) -> None:
    _killed_after_writes(server_factory, snapshot, 10)
    [segment] = segments(snapshot)
    size = os.path.getsize(segment)
    os.truncate(segment, size - 5)  # a crash in the middle of writing the last record
    server = server_factory("--snapshot", snapshot).start()
    state = fresh_state()
    assert sorted(state.keys()) == sorted(f"k{i}" for i in range(1, 10))
    assert f"at the end of {segment}" in server.log()
    assert "dropped" in server.log()


def test_a_zero_filled_tail_is_dropped_with_a_warning(
    server_factory: ServerFactory, snapshot: str
) -> None:
    _killed_after_writes(server_factory, snapshot, 10)
    [segment] = segments(snapshot)
    with open(segment, "ab") as file:
        file.write(bytes(4096))  # what a crash can leave after an extended file
    server = server_factory("--snapshot", snapshot).start()
    assert len(fresh_state()) == 10
    assert "dropped 4096 bytes" in server.log()


def test_a_flipped_byte_mid_journal_refuses_to_start_and_leaves_the_file_alone(
    server_factory: ServerFactory, snapshot: str, address: str
) -> None:
    _killed_after_writes(server_factory, snapshot, 10)
    [segment] = segments(snapshot)
    flip_byte(segment, 60)  # inside the first record; nine intact records follow
    before = fingerprint(segment)
    result = run_cli("serve", "--address", address, "--snapshot", snapshot)
    assert result.returncode == 1
    assert segment in result.stderr
    assert "before its end" in result.stderr
    assert "--salvage" in result.stderr
    assert "Traceback" not in result.stderr
    assert fingerprint(segment) == before


def test_a_flipped_bit_in_the_last_journal_record_refuses_to_start_and_changes_no_file(
    server_factory: ServerFactory, snapshot: str, address: str
) -> None:
    # The last record is complete: its write was acknowledged (fsync always), so a bad
    # checksum there is damage, not a torn write to drop.
    _killed_after_writes(server_factory, snapshot, 10)
    [segment] = segments(snapshot)
    last = record_offsets(segment)[-1]
    flip_byte(segment, os.path.getsize(segment) - 3, mask=0x01)
    before = fingerprints(os.path.dirname(snapshot), with_lock=False)
    result = serve_refused("--address", address, "--snapshot", snapshot)
    assert result.returncode == 1
    assert segment in result.stderr
    assert f"at byte {last}" in result.stderr
    assert "--salvage" in result.stderr
    assert "Traceback" not in result.stderr
    assert fingerprints(os.path.dirname(snapshot), with_lock=False) == before, "a file changed"
    server = server_factory("--snapshot", snapshot, "--salvage").start()
    assert sorted(fresh_state().keys()) == sorted(f"k{i}" for i in range(1, 10))
    assert "salvaging" in server.log()


def test_a_flipped_byte_in_the_snapshot_refuses_to_start_and_leaves_it_alone(
    server_factory: ServerFactory, snapshot: str, address: str
) -> None:
    server = server_factory("--snapshot", snapshot).start()
    fill(get_shared_state(start=False))
    server.signal(signal.SIGTERM)
    server.wait()
    flip_byte(snapshot, os.path.getsize(snapshot) // 2)
    before = fingerprint(snapshot)
    result = run_cli("serve", "--address", address, "--snapshot", snapshot)
    assert result.returncode == 1
    assert snapshot in result.stderr
    assert "byte" in result.stderr
    assert fingerprint(snapshot) == before


def test_an_unknown_snapshot_format_version_is_refused(
    server_factory: ServerFactory, snapshot: str, address: str
) -> None:
    server = server_factory("--snapshot", snapshot).start()
    get_shared_state(start=False)["x"] = 1
    server.signal(signal.SIGTERM)
    server.wait()
    with open(snapshot, "r+b") as file:
        file.seek(len(b"sharedstate snapshot\n"))
        file.write(b"\x63\x00")  # version 99
    result = run_cli("serve", "--address", address, "--snapshot", snapshot)
    assert result.returncode == 1
    assert "format version 99" in result.stderr


def test_salvage_starts_from_the_valid_prefix_and_keeps_the_damaged_file(
    server_factory: ServerFactory, snapshot: str
) -> None:
    _killed_after_writes(server_factory, snapshot, 10)
    [segment] = segments(snapshot)
    records = record_offsets(segment)
    flip_byte(segment, records[5] + 20)  # inside the sixth record
    original = fingerprint(segment)
    server = server_factory("--snapshot", snapshot, "--salvage").start()
    assert sorted(fresh_state().keys()) == sorted(f"k{i}" for i in range(1, 6))
    [aside] = glob.glob(segment + ".damaged-*")
    assert fingerprint(aside) == original, "the damaged file is kept as it was"
    assert "salvaging" in server.log()


def _damaged_snapshot(server_factory: ServerFactory, snapshot: str) -> str:
    """A stopped server's snapshot, damaged in its end record; returns its fingerprint."""
    server = server_factory("--snapshot", snapshot).start()
    fill(get_shared_state(start=False))
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    flip_byte(snapshot, os.path.getsize(snapshot) - 2)
    return fingerprint(snapshot)


def test_salvage_of_a_damaged_snapshot_keeps_it_and_saves_what_was_readable(
    server_factory: ServerFactory, snapshot: str
) -> None:
    damaged = _damaged_snapshot(server_factory, snapshot)
    server = server_factory("--snapshot", snapshot, "--salvage").start()
    assert fresh_state().to_dict() == FILLED
    [aside] = glob.glob(snapshot + ".damaged-*")
    assert fingerprint(aside) == damaged
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    server_factory("--snapshot", snapshot).start()  # the new snapshot is sound
    assert fresh_state().to_dict() == FILLED


def test_salvage_without_room_for_its_snapshot_says_so_and_changes_no_file(
    server_factory: ServerFactory, snapshot: str, address: str
) -> None:
    _damaged_snapshot(server_factory, snapshot)
    before = fingerprints(os.path.dirname(snapshot), with_lock=False)
    server = server_factory("--snapshot", snapshot, "--salvage", faults="write@state.snap.tmp:1-")
    with pytest.raises(AssertionError, match="server exited with 1"):
        server.start()
    assert "free at least" in server.log()
    assert f"writing {snapshot} failed" in server.log()
    assert fingerprints(os.path.dirname(snapshot), with_lock=False) == before


def test_salvage_keeps_aside_the_segments_it_could_not_replay(
    server_factory: ServerFactory, snapshot: str
) -> None:
    args = ("--snapshot", snapshot, "--fsync", "always", "--snapshot-interval", "3600")
    server = server_factory(*args, faults="replace@state.snap:1-").start()
    state = get_shared_state(start=False)
    for index in range(1, 6):
        state[f"k{index}"] = index
    assert run_cli("snapshot").returncode == 1  # it failed, but started a second segment
    for index in range(6, 11):
        state[f"k{index}"] = index
    kill_and_wait(server.pid)
    first, second = segments(snapshot)
    flip_byte(first, record_offsets(first)[2] + 20)  # the third write is damaged
    kept = fingerprint(second)
    server = server_factory(*args, "--salvage").start()
    assert fresh_state().to_dict() == {"k1": 1, "k2": 2}
    assert "salvaging" in server.log()
    [aside] = glob.glob(second + ".*")
    assert fingerprint(aside) == kept, "writes after the damage are kept aside, not deleted"
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    server_factory(*args).start()  # nothing left for a later start to replay on top
    assert fresh_state().to_dict() == {"k1": 1, "k2": 2}


def test_segments_of_a_journaled_run_are_never_replayed_twice_after_one_without_journal(
    server_factory: ServerFactory, snapshot: str
) -> None:
    journaled = ("--snapshot", snapshot, "--fsync", "always", "--snapshot-interval", "3600")
    unjournaled = ("--snapshot", snapshot, "--no-journal", "--snapshot-interval", "3600")
    server = server_factory(*journaled).start()
    state = get_shared_state(start=False)
    for _ in range(5):
        state.incr("n")
    kill_and_wait(server.pid)  # the increments are in the journal only
    # Without a journal, and the old segments can't be removed after its snapshot.
    server = server_factory(*unjournaled, faults="unlink@journal:1-").start()
    state = fresh_state()
    assert state["n"] == 5
    state.incr("n", 10)
    assert run_cli("snapshot").returncode == 0
    assert segments(snapshot), "the fault kept the old segments"
    kill_and_wait(server.pid)
    server = server_factory(*unjournaled).start()
    assert fresh_state()["n"] == 15, "the old segments were replayed on top of the snapshot"
    wait_until(lambda: segments(snapshot) == [])  # removed after the first snapshot
    kill_and_wait(server.pid)
    server_factory(*journaled).start()
    assert fresh_state()["n"] == 15


def test_a_journal_with_a_missing_segment_is_refused(
    server_factory: ServerFactory, snapshot: str, address: str
) -> None:
    server = server_factory("--snapshot", snapshot, "--snapshot-interval", "3600").start()
    state = get_shared_state(start=False)
    state["a"] = 1
    assert run_cli("snapshot").returncode == 0
    state["b"] = 2
    kill_and_wait(server.pid)
    os.unlink(snapshot)  # now the journal starts after writes nobody has
    result = run_cli("serve", "--address", address, "--snapshot", snapshot)
    assert result.returncode == 1
    assert "missing or damaged" in result.stderr


def test_leftover_temporary_files_are_removed(server_factory: ServerFactory, snapshot: str) -> None:
    leftover = snapshot + ".tmp-123-abcd"
    with open(leftover, "wb") as file:
        file.write(b"half a snapshot")
    unrelated = snapshot + ".notes"
    with open(unrelated, "w") as file:
        file.write("mine")
    server_factory("--snapshot", snapshot).start()
    assert not os.path.exists(leftover)
    assert os.path.exists(unrelated)


@pytest.mark.parametrize("mode", [0o666, 0o620])
def test_a_snapshot_others_can_write_is_refused(
    server_factory: ServerFactory, snapshot: str, address: str, mode: int
) -> None:
    server = server_factory("--snapshot", snapshot).start()
    get_shared_state(start=False)["x"] = 1
    server.signal(signal.SIGTERM)
    server.wait()
    os.chmod(snapshot, mode)
    result = run_cli("serve", "--address", address, "--snapshot", snapshot)
    assert result.returncode == 1
    assert "could have been written by another user" in result.stderr


def test_a_journal_others_can_write_is_refused_and_left_alone(
    server_factory: ServerFactory, snapshot: str, address: str
) -> None:
    server = server_factory("--snapshot", snapshot, "--fsync", "always").start()
    get_shared_state(start=False)["x"] = 1
    kill_and_wait(server.pid)  # the write is in the journal only
    (journal,) = segments(snapshot)
    os.chmod(journal, 0o646)
    before = fingerprint(journal)
    result = run_cli("serve", "--address", address, "--snapshot", snapshot)
    assert result.returncode == 1
    assert "could have been written by another user" in result.stderr
    assert journal in result.stderr
    assert fingerprint(journal) == before


def test_a_snapshot_directory_others_can_write_is_refused(snapshot: str, address: str) -> None:
    os.chmod(os.path.dirname(snapshot), 0o777)
    result = run_cli("serve", "--address", address, "--snapshot", snapshot)
    assert result.returncode == 1
    assert "only you can write to" in result.stderr


def test_persistence_files_are_owner_only(server_factory: ServerFactory, snapshot: str) -> None:
    server_factory("--snapshot", snapshot, "--snapshot-interval", "3600").start()
    get_shared_state(start=False)["x"] = 1
    assert run_cli("snapshot").returncode == 0
    for path in (snapshot, *segments(snapshot)):
        assert os.stat(path).st_mode & 0o077 == 0, path


def test_a_failed_snapshot_keeps_the_previous_one_and_the_server_serving(
    server_factory: ServerFactory, snapshot: str
) -> None:
    args = ("--snapshot", snapshot, "--snapshot-interval", "3600")
    server = server_factory(*args, faults="replace@state.snap:2-").start()
    state = get_shared_state(start=False)
    state["a"] = 1
    assert run_cli("snapshot").returncode == 0
    first = fingerprint(snapshot)
    state["b"] = 2
    failed = run_cli("snapshot")
    assert failed.returncode == 1
    assert snapshot in failed.stderr
    assert fingerprint(snapshot) == first, "the previous snapshot is intact"
    assert "UNHEALTHY" in run_cli("status").stdout
    state["c"] = 3  # still serving, still journaling
    kill_and_wait(server.pid)
    server_factory(*args).start()
    assert fresh_state().to_dict() == {"a": 1, "b": 2, "c": 3}


def test_a_journal_write_that_fails_is_refused_not_acknowledged(
    server_factory: ServerFactory, snapshot: str
) -> None:
    # Journal writes: 1 is the new segment's header, 2 and 3 are k1 and k2, 4 fails.
    args = ("--snapshot", snapshot, "--snapshot-interval", "3600", "--fsync", "always")
    server = server_factory(*args, faults="write@journal:4").start()
    state = get_shared_state(start=False)
    state["k1"] = 1
    state["k2"] = 2
    with pytest.raises(PersistenceError, match="refused"):
        state["k3"] = 3
    with pytest.raises(PersistenceError, match="after the next snapshot"):
        state["k4"] = 4
    assert "k3" not in state
    assert "UNHEALTHY" in run_cli("status").stdout
    assert run_cli("snapshot").returncode == 0  # a clean segment: writes resume
    state["k5"] = 5
    kill_and_wait(server.pid)
    server_factory(*args).start()
    assert fresh_state().to_dict() == {"k1": 1, "k2": 2, "k5": 5}


def test_a_journal_sync_that_fails_under_always_is_refused(
    server_factory: ServerFactory, snapshot: str
) -> None:
    args = ("--snapshot", snapshot, "--snapshot-interval", "3600", "--fsync", "always")
    server_factory(*args, faults="sync@journal:3").start()
    state = get_shared_state(start=False)
    state["k1"] = 1
    with pytest.raises(PersistenceError, match="could not be made durable"):
        state["k2"] = 2
    assert "Traceback" not in run_cli("status").stderr


def test_the_server_started_by_a_worker_reads_persistence_settings_from_the_environment(
    snapshot: str, monkeypatch: pytest.MonkeyPatch, workdir: str
) -> None:
    monkeypatch.setenv("SHAREDSTATE_SNAPSHOT", snapshot)
    get_shared_state()["kept"] = True
    assert run_cli("stop").returncode == 0
    assert os.path.exists(snapshot)
    assert fresh_state(start=True)["kept"] is True
    assert len(server_pids(workdir)) == 1


def test_snapshot_command_without_persistence_says_so(server: ServerProcess) -> None:
    result = run_cli("snapshot")
    assert result.returncode == 1
    assert "--snapshot PATH" in result.stderr


def test_a_snapshot_in_a_missing_directory_is_refused_and_nothing_is_created(
    address: str, workdir: str
) -> None:
    missing = os.path.join(workdir, "no-such-dir", "deeper")
    result = run_cli("serve", "--address", address, "--snapshot", os.path.join(missing, "x.snap"))
    assert result.returncode == 1
    assert f"the snapshot directory {missing} does not exist" in result.stderr
    assert "--create-snapshot-dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(workdir, "no-such-dir"))


def test_create_snapshot_dir_creates_the_missing_directory(
    server_factory: ServerFactory, workdir: str
) -> None:
    snapshot = os.path.join(workdir, "new", "data", "state.snap")
    server_factory("--snapshot", snapshot, "--create-snapshot-dir").start()
    get_shared_state(start=False)["kept"] = True
    assert run_cli("stop").returncode == 0
    assert os.path.exists(snapshot)


def test_a_worker_started_server_refuses_a_missing_snapshot_directory(
    monkeypatch: pytest.MonkeyPatch, workdir: str, address: str
) -> None:
    missing = os.path.join(workdir, "typo")
    monkeypatch.setenv("SHAREDSTATE_SNAPSHOT", os.path.join(missing, "state.snap"))
    with pytest.raises(SharedStateError, match=f"snapshot directory {missing} does not exist"):
        get_shared_state()["lost"] = True
    assert not os.path.exists(missing)
    # The socket's own directory is still created on demand, as before.
    monkeypatch.setenv("SHAREDSTATE_CREATE_SNAPSHOT_DIR", "1")
    get_shared_state()["kept"] = True
    assert os.path.isdir(missing)
    assert os.path.isdir(os.path.dirname(address))
