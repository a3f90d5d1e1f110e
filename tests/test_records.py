"""Journal records: the kinds the store emits, their fields, and reading older formats."""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import pytest

from sharedstate.codec import DATA
from sharedstate.errors import CorruptFile
from sharedstate.persistence import journal as journal_format
from sharedstate.persistence import records
from sharedstate.persistence.frames import frame, preamble
from sharedstate.persistence.journal import Journal, list_segments, read_segment
from sharedstate.persistence.recovery import recover
from sharedstate.server.reservations import LocalCaller
from sharedstate.server.store import APPLY, Store

CLIENT = LocalCaller(1)


def p(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


class ListJournal:
    def __init__(self) -> None:
        self.records: list[tuple[int, str, tuple[Any, ...]]] = []

    def append(self, seq: int, kind: str, fields: tuple[Any, ...]) -> None:
        self.records.append((seq, kind, fields))


def test_the_documented_layout_is_the_table_and_every_kind_is_replayable() -> None:
    documented = dict(
        re.findall(r"^    (\w+) +(\([\w, ]*\))", records.__doc__ or "", flags=re.MULTILINE)
    )
    assert documented == {
        name: "(" + ", ".join(kind.fields) + ("," if len(kind.fields) == 1 else "") + ")"
        for name, kind in records.KINDS.items()
    }
    assert set(APPLY) == set(records.KINDS)


def test_each_write_emits_what_it_did_and_a_write_that_did_nothing_may_emit_nothing() -> None:
    store = Store()
    store.journal = journal = ListJournal()
    store.set(CLIENT, "a", p(1))
    store.setdefault(CLIENT, "a", p("ignored"))  # the key is there: nothing happens
    store.setdefault(CLIENT, "b", p(2))
    store.pop(CLIENT, "missing")
    store.pop(CLIENT, "b")
    store.edit_begin(CLIENT, "c", p(0), None)
    store.edit_commit(CLIENT, "c", p(3))
    store.delete_many(CLIENT, ["missing"])
    store.ns_delete(CLIENT, "missing")
    store.restore(CLIENT, [], [], 0)  # type: ignore[arg-type]  # a client sent 0
    assert journal.records == [
        (1, "set", ("a", p(1))),
        (2, "set", ("b", p(2))),
        (3, "delete", ("b",)),
        (4, "set", ("c", p(3))),
        (5, "restore", ([], [], False)),
    ]
    assert all(records.problem(kind, fields) is None for _, kind, fields in journal.records)


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        ("set", "set"),
        ("setdefault", "set"),
        ("delete", "delete"),
        ("pop", "delete"),
        ("incr", "incr"),
        ("nested", "nested"),
        ("update", "update"),
        ("delete_many", "delete_many"),
        ("clear", "clear"),
        ("restore", "restore"),
        ("ns_set", "ns_set"),
        ("ns_delete", "ns_delete"),
    ],
)
def test_format_1_records_name_a_method_and_read_as_a_kind(method: str, kind: str) -> None:
    fields = ("k", b"v")
    assert records.upgrade(1, method, fields) == (kind, fields)


def test_a_name_only_format_1_knew_is_unknown_in_format_2() -> None:
    assert records.upgrade(2, "setdefault", ("k", b"v")) == ("setdefault", ("k", b"v"))
    assert "unknown operation 'setdefault'" in (records.problem("setdefault", ("k", b"v")) or "")


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("set", ("k",)),
        ("set", ("k", "not bytes")),
        ("set", (["unhashable"], b"v")),
        ("incr", ("k", True)),
        ("incr", ("k", "1")),
        ("nested", ("elsewhere", ("k",), "append", b"")),
        ("nested", (DATA, (), "append", b"")),
        ("nested", (DATA, ("k",), None, b"")),
        ("update", ([("k", 1)],)),
        ("update", ([("k",)],)),
        ("delete_many", ([["unhashable"]],)),
        ("restore", ([], [(1, b"")], False)),
        ("restore", ([], [], 1)),
        ("clear", ("extra",)),
        ("ns_delete", (1,)),
    ],
)
def test_fields_that_do_not_fit_their_kind_are_a_problem(kind: str, fields: Any) -> None:
    assert f"is not a {kind} record of fields" in (records.problem(kind, fields) or "")


def test_a_record_whose_fields_do_not_fit_its_kind_stops_recovery_naming_file_and_offset(
    workdir: str,
) -> None:
    snapshot = os.path.join(workdir, "state.snap")
    journal = Journal(snapshot, "always", first_seq=1)
    journal.append(1, "set", ("a", p(1)))
    journal.close()
    [segment] = list_segments(snapshot)
    offset = os.path.getsize(segment)
    with open(segment, "ab") as file:  # Journal.append refuses it: write it by hand
        file.write(frame(records.dump(2, "set", ("b",))))
    with pytest.raises(
        CorruptFile, match=r"is not a set record of fields \(key, value\)"
    ) as raised:
        recover(Store(), snapshot)
    assert (raised.value.path, raised.value.offset) == (segment, offset)  # type: ignore[attr-defined]
    store = Store()
    recover(store, snapshot, salvage=True)
    assert store.export().data == {"a": p(1)}, "salvage keeps what precedes it"


def test_the_journal_writes_format_3_and_refuses_a_version_it_does_not_know(
    workdir: str,
) -> None:
    snapshot = os.path.join(workdir, "state.snap")
    Journal(snapshot, "always", first_seq=1).close()
    [segment] = list_segments(snapshot)
    with open(segment, "rb") as file:
        assert file.read() == preamble(journal_format.MAGIC, 3)
    newer = os.path.join(workdir, "newer.snap.journal.000000000001")
    with open(newer, "wb") as file:
        file.write(preamble(journal_format.MAGIC, 4) + frame(records.dump(1, "clear", ())))
    with pytest.raises(CorruptFile, match="journal format version 4; this sharedstate reads"):
        read_segment(newer)


def test_a_format_1_segment_cut_inside_its_preamble_is_empty(workdir: str) -> None:
    path = os.path.join(workdir, "state.snap.journal.000000000001")
    with open(path, "wb") as file:
        file.write(preamble(journal_format.MAGIC, 1)[:-1])  # a crash while creating it
    segment = read_segment(path)
    assert segment.records == []
    assert segment.torn is not None
