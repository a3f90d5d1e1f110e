"""Snapshot and journal files on their own: framing, damage, round trips. No server."""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import pytest

from sharedstate.codec import Contents
from sharedstate.errors import CorruptFile
from sharedstate.persistence import durable, records
from sharedstate.persistence import snapshot as snapshot_format
from sharedstate.persistence.frames import FrameReader, dump_plain, frame, load_plain
from sharedstate.persistence.journal import Journal, list_segments, read_segment
from sharedstate.persistence.recovery import recover
from sharedstate.persistence.snapshot import read_snapshot, write_snapshot
from sharedstate.server.store import Store

from .support.faults import FailingDisk, lose_unsynced_writes


def frames_file(tmp: str, payloads: list[bytes], tail: bytes = b"") -> str:
    path = os.path.join(tmp, "frames")
    with open(path, "wb") as file:
        for payload in payloads:
            file.write(frame(payload))
        file.write(tail)
    return path


def read_all(path: str, allow_torn_tail: bool = True) -> tuple[list[bytes], Any]:
    with open(path, "rb") as file:
        reader = FrameReader(file, path, allow_torn_tail=allow_torn_tail)
        payloads = [payload for _, payload in reader]
    return payloads, reader.torn


def test_intact_frames_read_back(workdir: str) -> None:
    payloads = [b"one", b"two" * 1000, b"three"]
    assert read_all(frames_file(workdir, payloads)) == (payloads, None)


@pytest.mark.parametrize(
    "damage",
    ["cut in the payload", "cut in the header", "zero tail", "cut in the payload, zeros"],
)
def test_a_torn_tail_is_dropped_and_measured(workdir: str, damage: str) -> None:
    good = [b"alpha", b"beta"]
    last = frame(b"gamma-gamma")
    tail = {
        "cut in the payload": last[:-3],
        "cut in the header": last[:7],
        "zero tail": bytes(512),
        "cut in the payload, zeros": last[:-3] + bytes(2),  # still shorter than its header says
    }[damage]
    payloads, torn = read_all(frames_file(workdir, good, tail))
    assert payloads == good
    assert torn is not None
    assert torn.size == len(tail)


@pytest.mark.parametrize(
    "damage", ["one bit of the last payload", "the last header's checksum", "the last length"]
)
def test_a_complete_last_record_that_is_damaged_is_corruption_not_a_torn_tail(
    workdir: str, damage: str
) -> None:
    # A complete record was written whole, so its write may have been acknowledged:
    # dropping it as "torn" would lose it silently.
    good = [b"alpha", b"beta"]
    last = bytearray(frame(b"gamma-gamma"))
    position, mask = {
        "one bit of the last payload": (len(last) - 4, 0x01),
        "the last header's checksum": (9, 0x80),  # followed by the (intact) payload
        "the last length": (0, 0x01),  # a length one byte off: no longer a torn record
    }[damage]
    last[position] ^= mask
    path = frames_file(workdir, good, bytes(last))
    with pytest.raises(CorruptFile, match="is damaged") as raised:
        read_all(path)
    offset = len(frame(b"alpha")) + len(frame(b"beta"))
    assert raised.value.offset == offset  # type: ignore[attr-defined]
    assert f"at byte {offset}" in str(raised.value)


def test_damage_before_the_end_is_corruption_even_in_a_journal(workdir: str) -> None:
    path = frames_file(workdir, [b"alpha", b"beta", b"gamma"])
    with open(path, "r+b") as file:
        file.seek(14)  # inside the first payload
        file.write(b"?")
    with pytest.raises(CorruptFile, match="before its end") as raised:
        read_all(path)
    assert raised.value.offset == 0  # type: ignore[attr-defined]
    assert raised.value.path == path  # type: ignore[attr-defined]


def test_a_damaged_length_is_not_mistaken_for_a_torn_tail(workdir: str) -> None:
    path = frames_file(workdir, [b"alpha", b"beta", b"gamma"])
    with open(path, "r+b") as file:
        file.write(b"\xff\xff\xff\x7f")  # the first length: far past the end of the file
    with pytest.raises(CorruptFile, match="header is damaged"):
        read_all(path)


def test_a_torn_tail_is_corruption_where_none_is_allowed(workdir: str) -> None:
    path = frames_file(workdir, [b"alpha"], frame(b"beta")[:-2])
    with pytest.raises(CorruptFile, match="at its end"):
        read_all(path, allow_torn_tail=False)


def test_plain_loading_refuses_classes() -> None:
    assert load_plain(dump_plain(("set", ("k", 1), slice(1, 2))), "f", 0)[2] == slice(1, 2)
    malicious = pickle.dumps(os.system)
    with pytest.raises(CorruptFile, match="refusing to load"):
        load_plain(malicious, "f", 0)


def test_snapshot_round_trip(workdir: str) -> None:
    path = os.path.join(workdir, "state.snap")
    data: dict[Any, bytes] = {f"k{i}": pickle.dumps(i) for i in range(25_000)}  # several chunks
    data[("tuple", 1)] = pickle.dumps({"nested": [1, 2]})
    size = write_snapshot(path, Contents(41, data, {"mode": pickle.dumps("x")}))
    assert size == os.path.getsize(path)
    contents, damage = read_snapshot(path)
    assert damage is None
    assert contents.seq == 41
    assert contents.data == data
    assert contents.namespace == {"mode": pickle.dumps("x")}


def _frame_sizes(path: str) -> list[int]:
    with open(path, "rb") as file:
        file.seek(len(b"sharedstate snapshot\n") + 2)
        return [len(payload) for _, payload in FrameReader(file, path, allow_torn_tail=False)]


def test_snapshot_chunks_are_bounded_by_bytes_not_only_by_count(workdir: str) -> None:
    # 37 values of 60 MB in one chunk of 10,000 entries made a frame over 2 GiB, which
    # no snapshot could hold: smaller here, the same shape.
    path = os.path.join(workdir, "state.snap")
    value_size = 24 << 20
    data = {f"k{i}": bytes([i]) * value_size for i in range(8)}
    write_snapshot(path, Contents(8, data, {}))
    assert max(_frame_sizes(path)) < 100_000_000  # a chunk of 64 MiB, plus one value
    contents, _ = read_snapshot(path)
    assert contents.data == data


def test_a_value_too_large_for_one_frame_is_split_into_pieces(
    workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nested writes can grow one value past what one frame holds (2 GiB); here the
    # limit is lowered so that a few MB show the same thing.
    monkeypatch.setattr(snapshot_format, "LARGEST_WHOLE_VALUE", 1 << 20)
    monkeypatch.setattr(snapshot_format, "CHUNK_BYTES", 256 << 10)
    path = os.path.join(workdir, "state.snap")
    big = os.urandom(3 << 20) + b"end"
    data = {"small": b"s", "big": big, ("t", 1): b"after"}
    namespace = {"huge": big[::-1], "mode": b"m"}
    write_snapshot(path, Contents(5, data, namespace))
    assert max(_frame_sizes(path)) < 1 << 20
    contents, damage = read_snapshot(path)
    assert damage is None
    assert (contents.seq, contents.data, contents.namespace) == (5, data, namespace)
    with open(path, "rb") as file:
        assert file.read(len(snapshot_format.MAGIC) + 2)[-2:] == b"\x02\x00", "format version 2"


def test_a_snapshot_without_large_values_keeps_format_version_1(workdir: str) -> None:
    # Older sharedstate versions read version 1; only what they could never hold needs 2.
    path = os.path.join(workdir, "state.snap")
    write_snapshot(path, Contents(1, {"a": pickle.dumps(1)}, {}))
    with open(path, "rb") as file:
        assert file.read(len(snapshot_format.MAGIC) + 2)[-2:] == b"\x01\x00"


def test_a_snapshot_cut_inside_a_split_value_is_refused(
    workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_format, "LARGEST_WHOLE_VALUE", 1 << 10)
    monkeypatch.setattr(snapshot_format, "CHUNK_BYTES", 1 << 10)
    path = os.path.join(workdir, "state.snap")
    write_snapshot(path, Contents(1, {"big": os.urandom(10_000)}, {}))
    sizes = _frame_sizes(path)
    # Keep the preamble, the meta record, the "large" record and three of ten pieces.
    keep = len(snapshot_format.MAGIC) + 2 + sum(size + 12 for size in sizes[:5])
    os.truncate(path, keep)
    with pytest.raises(CorruptFile, match="end record|cut short"):
        read_snapshot(path)
    contents, damage = read_snapshot(path, salvage=True)
    assert damage is not None
    assert "big" not in contents.data, "half a value is never loaded"


def test_a_snapshot_without_its_end_record_is_refused(workdir: str) -> None:
    path = os.path.join(workdir, "state.snap")
    write_snapshot(path, Contents(1, {"a": pickle.dumps(1)}, {}))
    with open(path, "rb") as file:
        file.seek(len(b"sharedstate snapshot\n") + 2)
        offsets = [offset for offset, _ in FrameReader(file, path, allow_torn_tail=False)]
    os.truncate(path, offsets[-1])  # cut off exactly the end record
    with pytest.raises(CorruptFile, match="end record"):
        read_snapshot(path)


def test_journal_appends_rotates_and_removes_retired_segments(workdir: str) -> None:
    snapshot = os.path.join(workdir, "state.snap")
    journal = Journal(snapshot, "always", first_seq=1)
    journal.append(1, "set", ("a", b"1"))
    sync = journal.take_pending_sync()
    assert sync is not None
    sync()
    assert journal.take_pending_sync() is None
    journal.append(2, "delete", ("a",))
    journal.prepare_rotation(seq=2)
    journal.rotate()
    journal.append(3, "set", ("b", b"2"))
    first, second = list_segments(snapshot)
    assert [r.seq for r in read_segment(first).records] == [1, 2]
    assert [(r.seq, r.kind, r.fields) for r in read_segment(second).records] == [
        (3, "set", ("b", b"2"))
    ]
    journal.seal_retired()
    journal.remove_retired()
    assert list_segments(snapshot) == [second]
    journal.close(remove=True)
    assert list_segments(snapshot) == []


@pytest.mark.parametrize("policy", ["always", "everysec"])
def test_a_newer_segment_is_never_durable_before_an_older_one(
    workdir: str, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    # Found with the power-loss simulation: syncing the new segment while the retired
    # one was still unsynced left a gap that recovery refuses.
    snapshot = os.path.join(workdir, "state.snap")
    synced_log = os.path.join(workdir, "synced.log")
    monkeypatch.setattr(durable, "disk", FailingDisk([], synced_log))
    journal = Journal(snapshot, policy, first_seq=1)
    journal.append(1, "set", ("a", b"1"))  # not synced yet
    journal.prepare_rotation(seq=1)
    journal.rotate()  # a snapshot begins
    journal.append(2, "set", ("b", b"2"))
    if policy == "always":
        sync = journal.take_pending_sync()
        assert sync is not None
        sync()
    else:
        journal._sync(journal._current, journal.size)  # what the once-a-second thread does
    lose_unsynced_writes(snapshot, synced_log)  # the power fails before the snapshot ends
    records = [r.seq for path in list_segments(snapshot) for r in read_segment(path).records]
    assert records == [1, 2]
    journal.close()


def test_a_segment_cut_inside_its_header_is_empty(workdir: str) -> None:
    path = os.path.join(workdir, "state.snap.journal.000000000001")
    with open(path, "wb") as file:
        file.write(b"sharedstate jou")
    segment = read_segment(path)
    assert segment.records == []
    assert segment.torn is not None


def test_a_segment_of_only_zero_bytes_is_empty(workdir: str) -> None:
    # A power loss right after a segment was created can leave its length but no data.
    path = os.path.join(workdir, "state.snap.journal.000000000001")
    with open(path, "wb") as file:
        file.write(bytes(4096))
    segment = read_segment(path)
    assert segment.records == []
    assert segment.torn is not None
    assert segment.torn.size == 4096


def test_a_segment_that_is_not_ours_is_refused(workdir: str) -> None:
    path = os.path.join(workdir, "state.snap.journal.000000000001")
    with open(path, "wb") as file:
        file.write(b"hello, world" + bytes(100))
    with pytest.raises(CorruptFile, match="not a sharedstate journal"):
        read_segment(path)


def test_files_written_by_format_version_1_still_load() -> None:
    # Written by sharedstate 0.1.0 (commit 6d6b0a6), before format version 2 existed.
    reference = os.path.join(os.path.dirname(__file__), "reference")
    contents, damage = read_snapshot(os.path.join(reference, "v1.snap"))
    assert damage is None
    assert contents.seq == 3
    assert {key: pickle.loads(value) for key, value in contents.data.items()} == {
        "a": 1,
        ("t", 1): [1, 2],
    }
    assert pickle.loads(contents.namespace["mode"]) == "x"
    segment = read_segment(os.path.join(reference, "v1.snap.journal.000000000004"))
    assert [(r.seq, r.kind, r.fields) for r in segment.records] == [
        (4, "set", ("b", pickle.dumps(2, protocol=5))),
        (5, "delete", ("a",)),
    ]


def test_a_journal_record_of_an_unknown_operation_is_refused_naming_it(workdir: str) -> None:
    # What a newer sharedstate might write: refused as a file this version can't read.
    snapshot = os.path.join(workdir, "state.snap")
    journal = Journal(snapshot, "always", first_seq=1)
    journal.append(1, "set", ("a", pickle.dumps(1)))
    journal.close()
    [segment] = list_segments(snapshot)
    with open(segment, "ab") as file:  # Journal.append refuses it: write it by hand
        file.write(frame(records.dump(2, "frobnicate", ("a",))))
    with pytest.raises(CorruptFile, match="unknown operation 'frobnicate'") as raised:
        recover(Store(), snapshot)
    assert raised.value.path == segment  # type: ignore[attr-defined]


def test_frame_refuses_empty_payloads() -> None:
    with pytest.raises(ValueError, match="1 to"):
        frame(b"")
    assert len(frame(b"x")) == 13
    assert io.BytesIO(frame(b"x")).read(4) == b"\x01\x00\x00\x00"
