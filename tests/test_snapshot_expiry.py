"""Keys' expiry times in files: snapshot format 3 and the dumps' "expires" section."""

from __future__ import annotations

import json
import os
import pickle
import zlib
from typing import Any

import pytest

from sharedstate.codec import Contents
from sharedstate.errors import CorruptFile
from sharedstate.persistence import snapshot as snapshot_format
from sharedstate.persistence.dumpfile import read_dump, write_dump
from sharedstate.persistence.frames import FrameReader, dump_plain, frame, load_plain, preamble
from sharedstate.persistence.snapshot import read_snapshot, write_snapshot

IN_2100 = 4102444800.0  # far enough ahead that no test outlives it
LONG_AGO = 1000000000.5


def p(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


def format_version(path: str) -> int:
    with open(path, "rb") as file:
        head = file.read(len(snapshot_format.MAGIC) + 2)
    assert head.startswith(snapshot_format.MAGIC)
    return int.from_bytes(head[-2:], "little")


def record_kinds(path: str) -> list[str]:
    with open(path, "rb") as file:
        file.seek(len(snapshot_format.MAGIC) + 2)
        reader = FrameReader(file, path, allow_torn_tail=False)
        return [load_plain(payload, path, offset)[0] for offset, payload in reader]


def handmade_snapshot(path: str, version: int, records: list[tuple[str, Any]]) -> str:
    """A snapshot of ``records`` with a correct end record, whatever they hold."""
    body = [dump_plain(record) for record in records]
    count = sum(len(entries) for kind, entries in records if kind != "meta")
    crc = 0
    for payload in body:
        crc = zlib.crc32(payload, crc)
    with open(path, "wb") as file:
        file.write(preamble(snapshot_format.MAGIC, version))
        for payload in body:
            file.write(frame(payload))
        file.write(frame(dump_plain(("end", (count, crc)))))
    return path


def meta(expiring: int) -> tuple[str, dict[str, Any]]:
    return "meta", {"seq": 3, "created": 0.0, "keys": 2, "attributes": 0, "expiring": expiring}


DATA = ("data", [("a", p(1)), ("b", p(2))])


def test_expiry_times_survive_a_snapshot_round_trip(workdir: str) -> None:
    path = os.path.join(workdir, "state.snap")
    data = {"a": p(1), ("t", 1): p([1]), "forever": p("f")}
    expires = {"a": IN_2100, ("t", 1): LONG_AGO}
    write_snapshot(path, Contents(9, data, {"mode": p("m")}, expires))
    assert format_version(path) == 3
    assert record_kinds(path) == ["meta", "data", "namespace", "expires", "end"]
    contents, damage = read_snapshot(path)
    assert damage is None
    assert contents == Contents(9, data, {"mode": p("m")}, expires)


def test_expiry_times_are_kept_beside_values_in_pieces(
    workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_format, "LARGEST_WHOLE_VALUE", 1 << 10)
    monkeypatch.setattr(snapshot_format, "CHUNK_BYTES", 1 << 10)
    path = os.path.join(workdir, "state.snap")
    big = os.urandom(10_000)
    data = {"small": p("s"), "big": big}
    expires = {"big": IN_2100, "small": IN_2100 + 0.5}
    write_snapshot(path, Contents(4, data, {"huge": big[::-1]}, expires))
    assert format_version(path) == 3
    kinds = record_kinds(path)
    assert kinds.count("large") == 2
    assert kinds.index("expires") > max(i for i, kind in enumerate(kinds) if kind == "piece")
    contents, damage = read_snapshot(path)
    assert damage is None
    assert contents == Contents(4, data, {"huge": big[::-1]}, expires)


def test_more_expiring_keys_than_a_chunk_holds_round_trip(workdir: str) -> None:
    path = os.path.join(workdir, "state.snap")
    count = snapshot_format.CHUNK * 2 + 5
    data = {f"k{i}": p(i) for i in range(count)}
    expires = {f"k{i}": IN_2100 + i / 8 for i in range(count)}
    write_snapshot(path, Contents(1, data, {}, expires))
    assert record_kinds(path).count("expires") == 3
    contents, damage = read_snapshot(path)
    assert damage is None
    assert contents.expires == expires
    assert contents.data == data


@pytest.mark.parametrize(
    ("expires", "large", "version"),
    [({}, False, 1), ({}, True, 2), ({"a": IN_2100}, False, 3), ({"a": IN_2100}, True, 3)],
)
def test_a_snapshot_is_written_in_the_oldest_format_version_that_holds_it(
    workdir: str,
    monkeypatch: pytest.MonkeyPatch,
    expires: dict[str, float],
    large: bool,
    version: int,
) -> None:
    # Older sharedstate reads versions 1 and 2: a state without expiry must stay readable.
    monkeypatch.setattr(snapshot_format, "LARGEST_WHOLE_VALUE", 1 << 10)
    path = os.path.join(workdir, "state.snap")
    value = os.urandom(2 << 10) if large else p(1)
    write_snapshot(path, Contents(1, {"a": value}, {}, expires))
    with open(path, "rb") as file:
        head = file.read(len(snapshot_format.MAGIC) + 2)
    assert head == snapshot_format.MAGIC + version.to_bytes(2, "little")
    assert "expires" not in record_kinds(path) or version == 3


@pytest.mark.parametrize(
    ("expiry_record", "complaint"),
    [
        (("expires", [("a", float("nan"))]), "expiry time of 'a' is nan, not a finite number"),
        (("expires", [("a", float("inf"))]), "expiry time of 'a' is inf, not a finite number"),
        (("expires", [("a", "soon")]), "expiry time of 'a' is 'soon', not a finite number"),
        (("expires", [("a", True)]), "expiry time of 'a' is True, not a finite number"),
        (("expires", [("a", None)]), "expiry time of 'a' is None, not a finite number"),
        (("expires", [("gone", IN_2100)]), "'gone' has an expiry time but is not a key of"),
        (("expires", [(["a"], IN_2100)]), r"\['a'\] has an expiry time but is not a key of"),
        (("expires", {"a": IN_2100}), "not a list of \\(key, time\\) pairs"),
        (("expires", [("a", IN_2100, 1)]), "not a list of \\(key, time\\) pairs"),
    ],
)
def test_a_bad_expiry_time_is_refused_naming_the_file(
    workdir: str, expiry_record: tuple[str, Any], complaint: str
) -> None:
    path = handmade_snapshot(os.path.join(workdir, "state.snap"), 3, [meta(1), DATA, expiry_record])
    with pytest.raises(CorruptFile, match=complaint) as caught:
        read_snapshot(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert "expiry times at byte" in str(caught.value)


def test_an_expiry_time_before_its_key_is_refused(workdir: str) -> None:
    # The writer puts them after every value, so that each is checked against the whole dict.
    records = [meta(1), ("expires", [("a", IN_2100)]), DATA]
    path = handmade_snapshot(os.path.join(workdir, "state.snap"), 3, records)
    with pytest.raises(CorruptFile, match="'a' has an expiry time but is not a key of the data"):
        read_snapshot(path)


@pytest.mark.parametrize("version", [1, 2])
def test_expiry_times_in_a_file_of_an_older_format_version_are_refused(
    workdir: str, version: int
) -> None:
    records = [meta(1), DATA, ("expires", [("a", IN_2100)])]
    path = handmade_snapshot(os.path.join(workdir, "state.snap"), version, records)
    with pytest.raises(CorruptFile, match=f"{path}: unknown record 'expires'"):
        read_snapshot(path)


def test_salvage_keeps_the_expiry_times_before_the_damage_and_says_how_many_were_lost(
    workdir: str,
) -> None:
    records = [meta(2), DATA, ("expires", [("a", IN_2100)]), ("expires", [("b", "soon")])]
    path = handmade_snapshot(os.path.join(workdir, "state.snap"), 3, records)
    contents, damage = read_snapshot(path, salvage=True)
    assert contents == Contents(3, {"a": p(1), "b": p(2)}, {}, {"a": IN_2100})
    assert damage is not None
    assert "'b' is 'soon'" in damage
    assert "1 of its 2 expiry times were lost with it: those keys, if kept, will not expire" in (
        damage
    )


def test_an_expiry_time_for_a_missing_key_is_never_written(workdir: str) -> None:
    path = os.path.join(workdir, "state.snap")
    with pytest.raises(ValueError, match="'gone' has an expiry time but is not a key"):
        write_snapshot(path, Contents(1, {"a": p(1)}, {}, {"gone": IN_2100}))
    assert os.listdir(workdir) == []


@pytest.mark.parametrize("fmt", ["pickle", "json"])
def test_a_dump_keeps_expiry_times(workdir: str, fmt: str) -> None:
    path = os.path.join(workdir, f"backup.{fmt}")
    data = {"a": p(1), "b": p({"x": [1]}), "forever": p("f")}
    expires = {"a": IN_2100, "b": LONG_AGO}
    write_dump(path, Contents(5, data, {"mode": p("m")}, expires), fmt)
    contents = read_dump(path)
    assert (contents.data, contents.namespace, contents.expires) == (
        data,
        {"mode": p("m")},
        expires,
    )


def test_a_json_dump_has_an_expires_section_only_when_keys_expire(workdir: str) -> None:
    expiring = os.path.join(workdir, "expiring.json")
    write_dump(expiring, Contents(1, {"a": p(1), "b": p(2)}, {}, {"a": IN_2100}), "json")
    with open(expiring, encoding="utf-8") as file:
        assert json.load(file) == {
            "data": {"a": 1, "b": 2},
            "namespace": {},
            "expires": {"a": IN_2100},
        }
    plain = os.path.join(workdir, "plain.json")
    write_dump(plain, Contents(1, {"a": p(1)}, {}), "json")
    with open(plain, encoding="utf-8") as file:
        assert json.load(file) == {"data": {"a": 1}, "namespace": {}}


def test_a_json_dump_with_integer_expiry_times_reads_them_as_floats(workdir: str) -> None:
    path = os.path.join(workdir, "backup.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump({"data": {"a": 1}, "expires": {"a": 4102444800}}, file)
    contents = read_dump(path)
    assert contents.expires == {"a": IN_2100}
    assert type(contents.expires["a"]) is float


@pytest.mark.parametrize(
    ("expires_text", "complaint"),
    [
        ('{"a": "soon"}', "expiry time of 'a' is 'soon', not a finite number"),
        ('{"a": NaN}', "expiry time of 'a' is nan, not a finite number"),
        ('{"a": Infinity}', "expiry time of 'a' is inf, not a finite number"),
        ('{"a": true}', "expiry time of 'a' is True, not a finite number"),
        ('{"a": null}', "expiry time of 'a' is None, not a finite number"),
        ('{"a": [1]}', r"expiry time of 'a' is \[1\], not a finite number"),
        ('{"gone": 4102444800.0}', "'gone' has an expiry time but is not a key of the data"),
        ('[["a", 4102444800.0]]', '"expires" must be a JSON object'),
    ],
)
def test_a_json_dump_with_a_bad_expires_section_is_refused_naming_the_file(
    workdir: str, expires_text: str, complaint: str
) -> None:
    path = os.path.join(workdir, "backup.json")
    with open(path, "w", encoding="utf-8") as file:
        file.write('{"data": {"a": 1}, "namespace": {}, "expires": ' + expires_text + "}")
    with pytest.raises(CorruptFile, match=complaint) as caught:
        read_dump(path)
    assert str(caught.value).startswith(f"{path}: ")
