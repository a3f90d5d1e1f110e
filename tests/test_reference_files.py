"""Files written by earlier versions load with today's code, to the exact state they held.

The files are in tests/reference/ (its README says what wrote each one); they are read
as checked in, never written again. The states below are written out by hand.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from typing import Any

import pytest

from sharedstate.codec import Contents
from sharedstate.persistence import journal as journal_format
from sharedstate.persistence import records
from sharedstate.persistence import snapshot as snapshot_format
from sharedstate.persistence.frames import FrameReader, load_plain
from sharedstate.persistence.journal import read_segment, segment_path
from sharedstate.persistence.recovery import recover
from sharedstate.persistence.snapshot import read_snapshot
from sharedstate.server.store import Store

REFERENCE = os.path.join(os.path.dirname(__file__), "reference")
SCRIPT = os.path.join(REFERENCE, "write_reference_files.py")


def p(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


def state(contents: Contents) -> tuple[int, dict[Any, Any], dict[str, Any]]:
    """``(seq, data, namespace)`` with the values unpickled."""
    data = {key: pickle.loads(value) for key, value in contents.data.items()}
    namespace = {name: pickle.loads(value) for name, value in contents.namespace.items()}
    return contents.seq, data, namespace


def format_version(path: str, magic: bytes) -> int:
    with open(path, "rb") as file:
        head = file.read(len(magic) + 2)
    assert head[: len(magic)] == magic
    return int.from_bytes(head[len(magic) :], "little")


def writes(version: int) -> tuple[str, str]:
    """The snapshot and the journal segment written with journal format ``version``."""
    snapshot = os.path.join(REFERENCE, f"writes-journal{version}.snap")
    return snapshot, segment_path(snapshot, 4)


def copied(paths: tuple[str, ...], directory: str) -> str:
    """Copy ``paths`` into ``directory`` (recovery tidies files); the first one's copy."""
    for path in paths:
        shutil.copy(path, directory)
    return os.path.join(directory, os.path.basename(paths[0]))


# What the writes-journal<N>.snap snapshots hold: three writes in.
SNAPSHOT_STATE = (3, {"a": 1, ("t", 1): [1, 2]}, {"mode": "x"})

# Each record of their journals, as written by journal format 2; format 1 reads the same.
RECORDS = [
    (4, "clear", ()),
    (5, "set", ("b", p(2))),
    (6, "set", ("scratch", p("tmp"))),
    (7, "delete", ("scratch",)),
    (8, "incr", ("n", 5)),
    (9, "incr", ("n", 2.5)),
    (
        10,
        "update",
        ([("cfg", p({"db": {"port": 1}})), ("names", p(["x", "y", "z"])), (("t", 1), p([1, 2]))],),
    ),
    (11, "nested", ("data", (("t", 1),), "append", p(((3,), {})))),
    (12, "nested", ("data", ("cfg", "db"), "__setitem__", p((("port", 5432), {})))),
    (13, "nested", ("data", ("names",), "pop", p(((0,), {}, ((1, 0, "x"),))))),
    (14, "delete_many", (["b"],)),
    (15, "restore", ([("r", p("restored"))], [("owner", p("ops"))], False)),
    (16, "ns_set", ("settings", p({"debug": False}))),
    (17, "nested", ("namespace", ("settings",), "__setitem__", p((("debug", True), {})))),
    (18, "ns_delete", ("mode",)),
    (19, "set", ("d", p("default"))),  # format 1: setdefault
    (20, "delete", ("d",)),  # format 1: pop
    (21, "set", ("e", p("edited"))),
]

# The snapshot with its journal replayed.
FINAL_STATE = (
    21,
    {
        ("t", 1): [1, 2, 3],
        "n": 7.5,
        "cfg": {"db": {"port": 5432}},
        "names": ["y", "z"],
        "r": "restored",
        "e": "edited",
    },
    {"owner": "ops", "settings": {"debug": True}},
)

PIECES_STATE = (
    5,
    {"small": "s", "big": "big " * 100, ("t", 2): b"after"},
    {"huge": list(range(200)), "mode": "m"},
)

EXPIRING_JOURNAL = os.path.join(REFERENCE, "expiring-journal3.snap")

# The journal of expiring writes (format 3), after a snapshot two writes in.
EXPIRING_RECORDS = [
    (3, "set_expiring", ("s", p("session"), 4102444800.5)),
    (4, "update_expiring", ([("u1", p(1)), ("u2", p(2))], 4102444801.0)),
    (5, "incr_expiring", ("hits", 1, 4102444802.0)),
    (6, "expire_at", ("b", 4102444803.0)),
    (7, "persist", ("u2",)),
    (8, "restore_expiring", ([("r", p("r"))], [], False, [("r", 4102444804.0)])),
    (9, "set_expiring", ("gone", p("x"), 1000000000.0)),
    (10, "delete_many", (["gone"],)),
]
EXPIRING_FINAL_STATE: tuple[int, dict[Any, Any], dict[str, Any]] = (
    10,
    {"a": 1, "b": 2, "s": "session", "u1": 1, "u2": 2, "hits": 1, "r": "r"},
    {},
)
EXPIRING_FINAL_TIMES = {
    "a": 4102444800.0,
    "s": 4102444800.5,
    "u1": 4102444801.0,
    "hits": 4102444802.0,
    "b": 4102444803.0,
    "r": 4102444804.0,
}

EXPIRING_STATE = (
    7,
    {
        "session:alice": {"user": "alice"},
        "session:bob": {"user": "bob"},
        ("rate", 1): 3,
        "config": {"a": 1},
        "stale": "old",
    },
    {"mode": "m"},
)
EXPIRING_TIMES = {
    "session:alice": 4102444800.0,
    "session:bob": 4102444800.25,
    ("rate", 1): 4133980800.5,
    "stale": 1000000000.5,  # long past: kept as written
}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_snapshot_of_format_1_loads_to_its_exact_state(version: int) -> None:
    snapshot, _ = writes(version)
    assert format_version(snapshot, snapshot_format.MAGIC) == 1
    contents, damage = read_snapshot(snapshot)
    assert damage is None
    assert state(contents) == SNAPSHOT_STATE


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_journal_of_each_format_reads_as_the_same_records(version: int) -> None:
    _, segment = writes(version)
    assert format_version(segment, journal_format.MAGIC) == version
    found = read_segment(segment)
    assert (found.torn, found.damage) == (None, None)
    assert [(r.seq, r.kind, r.fields) for r in found.records] == RECORDS
    assert all(records.problem(r.kind, r.fields) is None for r in found.records)


def test_the_journals_of_format_3_hold_a_record_of_every_kind() -> None:
    kinds = {kind for _, kind, _ in RECORDS} | {kind for _, kind, _ in EXPIRING_RECORDS}
    assert kinds == set(records.KINDS)


def test_the_journal_of_expiring_writes_reads_as_its_records() -> None:
    found = read_segment(segment_path(EXPIRING_JOURNAL, 3))
    assert format_version(segment_path(EXPIRING_JOURNAL, 3), journal_format.MAGIC) == 3
    assert (found.torn, found.damage) == (None, None)
    assert [(r.seq, r.kind, r.fields) for r in found.records] == EXPIRING_RECORDS
    assert all(records.problem(r.kind, r.fields) is None for r in found.records)


def test_recovery_of_expiring_writes_gives_the_exact_state_and_expiry_times(
    workdir: str,
) -> None:
    snapshot = copied((EXPIRING_JOURNAL, segment_path(EXPIRING_JOURNAL, 3)), workdir)
    recover(store := Store(), snapshot)
    contents = store.export()
    assert state(contents) == EXPIRING_FINAL_STATE
    assert contents.expires == EXPIRING_FINAL_TIMES


def test_format_1_journals_named_methods_now_read_as_kinds() -> None:
    _, segment = writes(1)
    with open(segment, "rb") as file:
        file.seek(len(journal_format.MAGIC) + 2)
        names = [
            load_plain(payload, segment, offset)[1]
            for offset, payload in FrameReader(file, segment, allow_torn_tail=False)
        ]
    assert names[15:17] == ["setdefault", "pop"], "what format 1 wrote for records 19 and 20"


@pytest.mark.parametrize("version", [1, 2, 3])
def test_recovery_from_a_snapshot_and_journal_of_each_format_gives_the_exact_state(
    workdir: str, version: int
) -> None:
    snapshot = copied(writes(version), workdir)
    recover(store := Store(), snapshot)
    assert state(store.export()) == FINAL_STATE


def test_the_journal_of_sharedstate_0_1_replays_onto_its_snapshot(workdir: str) -> None:
    snapshot = os.path.join(REFERENCE, "v1.snap")
    copy = copied((snapshot, segment_path(snapshot, 4)), workdir)
    recover(store := Store(), copy)
    assert state(store.export()) == (5, {("t", 1): [1, 2], "b": 2}, {"mode": "x"})


def test_a_snapshot_of_format_2_with_values_in_pieces_loads_to_its_exact_state() -> None:
    snapshot = os.path.join(REFERENCE, "pieces-snapshot2.snap")
    assert format_version(snapshot, snapshot_format.MAGIC) == 2
    with open(snapshot, "rb") as file:
        file.seek(len(snapshot_format.MAGIC) + 2)
        kinds = [
            load_plain(payload, snapshot, offset)[0]
            for offset, payload in FrameReader(file, snapshot, allow_torn_tail=False)
        ]
    assert kinds.count("large") == 2
    assert kinds.count("piece") > 2
    contents, damage = read_snapshot(snapshot)
    assert damage is None
    assert state(contents) == PIECES_STATE


def test_a_snapshot_of_format_3_with_expiry_times_loads_to_its_exact_state() -> None:
    snapshot = os.path.join(REFERENCE, "expiring-snapshot3.snap")
    assert format_version(snapshot, snapshot_format.MAGIC) == 3
    contents, damage = read_snapshot(snapshot)
    assert damage is None
    assert state(contents) == EXPIRING_STATE
    assert contents.expires == EXPIRING_TIMES
    assert all(type(when) is float for when in contents.expires.values())


def test_every_format_version_today_reads_has_a_reference_file() -> None:
    for version in journal_format.READABLE_VERSIONS:
        assert all(map(os.path.exists, writes(version))), f"journal format {version}"
    snapshot_versions = {
        format_version(os.path.join(REFERENCE, name), snapshot_format.MAGIC)
        for name in os.listdir(REFERENCE)
        if name.endswith(".snap")
    }
    assert snapshot_versions == set(snapshot_format.READABLE_VERSIONS)


def test_the_script_that_wrote_the_reference_files_still_writes_the_same_states(
    workdir: str,
) -> None:
    # It documents how the files were made; the files above are never rewritten.
    out = os.path.join(workdir, "out")
    os.mkdir(out)
    subprocess.run([sys.executable, SCRIPT, out], check=True, capture_output=True, timeout=30)
    snapshot = os.path.join(out, f"writes-journal{journal_format.VERSION}.snap")
    assert state(read_snapshot(snapshot)[0]) == SNAPSHOT_STATE
    recover(store := Store(), snapshot)
    assert state(store.export()) == FINAL_STATE
    assert state(read_snapshot(os.path.join(out, "pieces-snapshot2.snap"))[0]) == PIECES_STATE
    expiring, _ = read_snapshot(os.path.join(out, "expiring-snapshot3.snap"))
    assert (state(expiring), expiring.expires) == (EXPIRING_STATE, EXPIRING_TIMES)
