"""The snapshot file: the whole state at one moment, written atomically.

Layout: a magic line with the format version, then frames (:mod:`sharedstate.persistence.frames`):

1. ``("meta", {"seq": ..., "created": ..., "keys": ..., "attributes": ...})``, and in
   format version 3 also ``"expiring"``: how many keys have an expiry time;
2. ``("data", [(key, pickled value), ...])`` and ``("namespace", [...])`` chunks of at
   most :data:`CHUNK` entries and about :data:`CHUNK_BYTES` of values, so serialising
   a large state lets client threads run between chunks, and no chunk comes near the
   2 GiB one frame holds (37 values of 60 MB did, when chunks were bounded by count);
3. format versions 2 and 3: a value larger than :data:`LARGEST_WHOLE_VALUE`, which no
   request can carry but nested writes can grow, a small append at a time, is written
   as ``("large", (space, key, piece count))`` followed by that many
   ``("piece", bytes)`` frames of :data:`CHUNK_BYTES`;
4. format version 3 only, after every value: ``("expires", [(key, time), ...])``
   chunks of at most :data:`CHUNK` entries, the wall-clock time (a float,
   :func:`time.time`) at which each key of the dict that expires does; a key not
   listed never expires. A time that is not a finite number, or one for a key the
   file's dict does not hold, is damage. Times are kept as written, past ones too:
   removing what has expired is the server's business, not the file's;
5. ``("end", (entry count, crc32 of all payloads before it))``, the entries of the
   "data", "namespace" and "expires" records and the large values counted: a snapshot
   without it, or whose checksum over the body does not match, is damaged.

A snapshot is written in the oldest version that holds it: 3 if a key has an expiry
time, else 2 if it holds such a large value, else 1; so the sharedstate versions that
read only versions 1 or 2 still read every state they could hold. Salvaging a damaged
version 3 file keeps the expiry times before the damage; its description of the damage
says how many were lost (those keys will not expire).

``seq`` is the number of the last write the snapshot contains; journal records up to it
are already in it.

A snapshot holds each entry as its key and pickled value, and (format 3) the expiry
times, nothing else: no store method or its arguments. Anything more an entry comes to
hold takes a new record kind in a new format version, with the readers of the older
ones kept (the rules are in :mod:`sharedstate.persistence.records`).
"""

from __future__ import annotations

import itertools
import math
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from ..codec import DATA, NAMESPACE, Contents
from ..errors import CorruptFile
from ..protocol import MAX_REQUEST_BYTES
from .durable import write_atomically
from .frames import (
    MAX_PAYLOAD,
    FrameReader,
    check_preamble,
    dump_plain,
    frame,
    frame_header,
    load_plain,
    preamble,
)

MAGIC = b"sharedstate snapshot\n"
VERSION = 3  # the newest; 2 is 3 without expiry times, 1 is 2 without "large" values
READABLE_VERSIONS = (1, 2, 3)
EXPIRES = "expires"
_PREAMBLE_SIZE = len(preamble(MAGIC, VERSION))
CHUNK = 10_000  # entries
CHUNK_BYTES = 64 << 20  # of pickled values; a single larger value goes alone
LARGEST_WHOLE_VALUE = MAX_REQUEST_BYTES  # what one request can carry; larger ones go in pieces


def write_snapshot(path: str, contents: Contents) -> int:
    """Write ``contents`` to ``path`` atomically and durably; return its size in bytes."""
    return write_atomically(path, snapshot_bytes(contents))


def snapshot_bytes(contents: Contents) -> Iterator[bytes]:
    """The file's bytes, a chunk at a time."""
    yield preamble(MAGIC, oldest_version_for(contents))
    meta = {
        "seq": contents.seq,
        "created": time.time(),
        "keys": len(contents.data),
        "attributes": len(contents.namespace),
    }
    if contents.expires:
        meta["expiring"] = len(contents.expires)
    body_crc = 0
    count = 0
    # Lazily: holding every chunk at once would also free them all at once at the end,
    # one long deallocation that blocks every client thread (~90 ms at 1M keys).
    for payload, entries in _payloads(itertools.chain([("meta", meta)], _records(contents))):
        body_crc = zlib.crc32(payload, body_crc)
        count += entries
        yield frame_header(payload)
        yield payload  # apart from its header: joining them would copy it
    yield frame(dump_plain(("end", (count, body_crc))))


def oldest_version_for(contents: Contents) -> int:
    """The format version a snapshot of ``contents`` is written in: the oldest that holds it."""
    if contents.expires:
        return 3
    return 2 if _has_large_values(contents) else 1


def expiry_problem(key: Any, when: Any, data: Mapping[Any, Any]) -> str | None:
    """What is wrong with ``key`` expiring at ``when`` beside ``data``, or None.

    A time must be a finite int or float (seconds since the epoch), for a key of ``data``.
    """
    if type(when) not in (int, float) or not math.isfinite(when):
        return (
            f"the expiry time of {key!r} is {when!r}, not a finite number of seconds "
            "since the epoch"
        )
    try:
        held = key in data
    except TypeError:  # unhashable, so no key of any dict
        held = False
    if not held:
        return f"{key!r} has an expiry time but is not a key of the data"
    return None


def _has_large_values(contents: Contents) -> bool:
    longest = max(
        max(map(len, contents.data.values()), default=0),
        max(map(len, contents.namespace.values()), default=0),
    )
    return longest > LARGEST_WHOLE_VALUE


def _records(contents: Contents) -> Iterator[tuple[str, Any]]:
    # Lazily, a chunk at a time: listing a million items at once would hold the GIL
    # (and so stall every client thread) for the whole listing.
    for kind, entries in ((DATA, contents.data), (NAMESPACE, contents.namespace)):
        items = iter(entries.items())
        while batch := list(itertools.islice(items, CHUNK)):
            if sum(map(len, map(itemgetter(1), batch))) <= CHUNK_BYTES:
                yield kind, batch  # the usual case, counted at C speed
            else:
                yield from _by_bytes(kind, batch)
    # After every value, so that a reader checks each key against the whole dict.
    expiring = iter(contents.expires.items())
    while times := list(itertools.islice(expiring, CHUNK)):
        for key, when in times:
            if problem := expiry_problem(key, when, contents.data):
                # Never write a file that no reader would load.
                raise ValueError(f"can't write this snapshot: {problem}")
        yield EXPIRES, times


def _by_bytes(kind: str, batch: list[tuple[Any, bytes]]) -> Iterator[tuple[str, Any]]:
    """Split a batch of entries into chunks of about :data:`CHUNK_BYTES`."""
    chunk: list[tuple[Any, bytes]] = []
    size = 0
    for key, value in batch:
        if chunk and (size + len(value) > CHUNK_BYTES or len(value) > LARGEST_WHOLE_VALUE):
            yield kind, chunk
            chunk, size = [], 0
        if len(value) > LARGEST_WHOLE_VALUE:
            pieces = range(0, len(value), CHUNK_BYTES)
            yield "large", (kind, key, len(pieces))
            for start in pieces:
                yield "piece", value[start : start + CHUNK_BYTES]
            continue
        chunk.append((key, value))
        size += len(value)
    if chunk:
        yield kind, chunk


def _payloads(records: Iterator[tuple[str, Any]]) -> Iterator[tuple[bytes, int]]:
    """Each record pickled, with the number of entries it completes."""
    for kind, entries in records:
        yield from _pickled(kind, entries)


def _pickled(kind: str, entries: Any) -> Iterator[tuple[bytes, int]]:
    payload = dump_plain((kind, entries))
    if len(payload) > MAX_PAYLOAD and kind in _ENTRY_KINDS and len(entries) > 1:
        # Only keys, which CHUNK_BYTES does not count, can get a chunk here: halve it.
        del payload
        half = len(entries) // 2
        yield from _pickled(kind, entries[:half])
        yield from _pickled(kind, entries[half:])
        return
    yield payload, len(entries) if kind in _ENTRY_KINDS else int(kind == "large")


_ENTRY_KINDS = (DATA, NAMESPACE, EXPIRES)  # records of entries, counted in the end record


def read_snapshot(path: str, *, salvage: bool = False) -> tuple[Contents, str | None]:
    """Load a snapshot; return it and, when salvaging a damaged one, what was lost.

    Without ``salvage`` any damage raises :class:`CorruptFile`. With it, the entries
    before the damage are returned with a description of the damage (a value split in
    pieces is only ever loaded whole, a record of expiry times only whole), which says
    how many expiry times were lost.
    """
    contents = Contents()
    meta: dict[str, Any] = {}
    with open(path, "rb") as file:
        head = file.read(_PREAMBLE_SIZE)
        version = check_preamble(head, path, MAGIC, READABLE_VERSIONS, "snapshot")
        reader = FrameReader(file, path, allow_torn_tail=False)
        try:
            _read_frames(reader, path, contents, version, meta)
        except CorruptFile as damage:
            if not salvage:
                raise
            return contents, str(damage) + _expiries_lost(meta, contents)
    return contents, None


def _expiries_lost(meta: dict[str, Any], contents: Contents) -> str:
    expiring = meta.get("expiring")
    if type(expiring) is not int or expiring <= len(contents.expires):
        return ""
    return (
        f"; {expiring - len(contents.expires)} of its {expiring} expiry times were lost "
        "with it: those keys, if kept, will not expire"
    )


@dataclass
class _LargeValue:
    """A value being read back from its pieces."""

    space: dict[Any, bytes]
    key: Any
    count: int
    pieces: list[bytes] = field(default_factory=list)


def _read_frames(
    reader: FrameReader, path: str, contents: Contents, version: int, meta: dict[str, Any]
) -> None:
    body_crc = 0
    count = 0
    offset = _PREAMBLE_SIZE
    spaces = {DATA: contents.data, NAMESPACE: contents.namespace}
    large: _LargeValue | None = None
    for offset, payload in reader:
        kind, entries = _record(payload, path, offset)
        if kind == "end":
            expected_count, expected_crc = entries
            if large is not None or (count, body_crc) != (expected_count, expected_crc):
                raise CorruptFile(
                    f"{path}: the body checksum or entry count does not match its end record",
                    path=path,
                    offset=offset,
                )
            return
        body_crc = zlib.crc32(payload, body_crc)
        if large is not None:
            if kind != "piece" or type(entries) is not bytes:
                raise CorruptFile(
                    f"{path}: a value in pieces is interrupted at byte {offset}",
                    path=path,
                    offset=offset,
                )
            large.pieces.append(entries)
            if len(large.pieces) == large.count:
                large.space[large.key] = b"".join(large.pieces)
                count += 1
                large = None
        elif kind == "meta":
            contents.seq = entries["seq"]
            meta.update(entries)
        elif kind in spaces:
            spaces[kind].update(entries)
            count += len(entries)
        elif kind == EXPIRES and version >= 3:
            _read_expiries(entries, path, offset, contents)
            count += len(entries)
        elif kind == "large" and _is_large_header(entries):
            space, key, pieces = entries
            large = _LargeValue(spaces[space], key, pieces)
        else:
            raise CorruptFile(f"{path}: unknown record {kind!r}", path=path, offset=offset)
    raise CorruptFile(
        f"{path} ends without its end record (it was cut short)", path=path, offset=offset
    )


def _read_expiries(entries: Any, path: str, offset: int, contents: Contents) -> None:
    """Add a record's expiry times to ``contents``, all of them or, if one is bad, none."""
    if type(entries) is not list or not all(
        type(entry) is tuple and len(entry) == 2 for entry in entries
    ):
        raise CorruptFile(
            f"{path}: the expiry times at byte {offset} are not a list of (key, time) pairs",
            path=path,
            offset=offset,
        )
    for key, when in entries:
        if problem := expiry_problem(key, when, contents.data):
            raise CorruptFile(
                f"{path}: in the expiry times at byte {offset}, {problem}",
                path=path,
                offset=offset,
            )
    contents.expires.update((key, float(when)) for key, when in entries)


def _record(payload: bytes, path: str, offset: int) -> tuple[str, Any]:
    try:
        kind, entries = load_plain(payload, path, offset)
    except (TypeError, ValueError):  # checksummed, but not a (kind, entries) pair
        raise CorruptFile(
            f"{path}: unexpected record at byte {offset}", path=path, offset=offset
        ) from None
    return kind, entries


def _is_large_header(entries: Any) -> bool:
    return (
        type(entries) is tuple
        and len(entries) == 3
        and entries[0] in (DATA, NAMESPACE)
        and type(entries[2]) is int
        and entries[2] > 0
    )
