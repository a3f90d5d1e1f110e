"""The snapshot file: the whole state at one moment, written atomically.

Layout: a magic line with the format version, then frames (:mod:`sharedstate.persistence.frames`):

1. ``("meta", {"seq": ..., "created": ..., "keys": ..., "attributes": ...})``;
2. ``("data", [(key, pickled value), ...])`` and ``("namespace", [...])`` chunks of at
   most :data:`CHUNK` entries and about :data:`CHUNK_BYTES` of values, so serialising
   a large state lets client threads run between chunks, and no chunk comes near the
   2 GiB one frame holds (37 values of 60 MB did, when chunks were bounded by count);
3. format version 2 only: a value larger than :data:`LARGEST_WHOLE_VALUE`, which no
   request can carry but nested writes can grow, a small append at a time, is written
   as ``("large", (space, key, piece count))`` followed by that many
   ``("piece", bytes)`` frames of :data:`CHUNK_BYTES`;
4. ``("end", (entry count, crc32 of all payloads before it))``: a snapshot without
   it, or whose checksum over the body does not match, is damaged.

A snapshot is written as version 1 unless it holds such a large value, so the
sharedstate versions that read only version 1 still read every state they could hold.

``seq`` is the number of the last write the snapshot contains; journal records up to it
are already in it.

A snapshot holds each entry as its key and pickled value, nothing else: no store method
or its arguments. What an entry may later hold beside its value (an expiry time, see
:class:`~sharedstate.server.entries.Entry`) is in neither format, and keeping it will
take a new record kind in a format 3, with readers of 1 and 2 kept (the rules are in
:mod:`sharedstate.persistence.records`).
"""

from __future__ import annotations

import itertools
import time
import zlib
from collections.abc import Iterator
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
VERSION = 2  # the newest; version 1 is version 2 without "large" values
READABLE_VERSIONS = (1, 2)
_PREAMBLE_SIZE = len(preamble(MAGIC, VERSION))
CHUNK = 10_000  # entries
CHUNK_BYTES = 64 << 20  # of pickled values; a single larger value goes alone
LARGEST_WHOLE_VALUE = MAX_REQUEST_BYTES  # what one request can carry; larger ones go in pieces


def write_snapshot(path: str, contents: Contents) -> int:
    """Write ``contents`` to ``path`` atomically and durably; return its size in bytes."""
    return write_atomically(path, snapshot_bytes(contents))


def snapshot_bytes(contents: Contents) -> Iterator[bytes]:
    """The file's bytes, a chunk at a time."""
    yield preamble(MAGIC, 2 if _has_large_values(contents) else 1)
    meta = {
        "seq": contents.seq,
        "created": time.time(),
        "keys": len(contents.data),
        "attributes": len(contents.namespace),
    }
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
    if len(payload) > MAX_PAYLOAD and kind in (DATA, NAMESPACE) and len(entries) > 1:
        # Only keys, which CHUNK_BYTES does not count, can get a chunk here: halve it.
        del payload
        half = len(entries) // 2
        yield from _pickled(kind, entries[:half])
        yield from _pickled(kind, entries[half:])
        return
    yield payload, len(entries) if kind in (DATA, NAMESPACE) else int(kind == "large")


def read_snapshot(path: str, *, salvage: bool = False) -> tuple[Contents, str | None]:
    """Load a snapshot; return it and, when salvaging a damaged one, what was lost.

    Without ``salvage`` any damage raises :class:`CorruptFile`. With it, the entries
    before the damage are returned with a description of the damage (a value split in
    pieces is only ever loaded whole).
    """
    contents = Contents()
    with open(path, "rb") as file:
        head = file.read(_PREAMBLE_SIZE)
        check_preamble(head, path, MAGIC, READABLE_VERSIONS, "snapshot")
        try:
            _read_frames(FrameReader(file, path, allow_torn_tail=False), path, contents)
        except CorruptFile as damage:
            if not salvage:
                raise
            return contents, str(damage)
    return contents, None


@dataclass
class _LargeValue:
    """A value being read back from its pieces."""

    space: dict[Any, bytes]
    key: Any
    count: int
    pieces: list[bytes] = field(default_factory=list)


def _read_frames(reader: FrameReader, path: str, contents: Contents) -> None:
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
        elif kind in spaces:
            spaces[kind].update(entries)
            count += len(entries)
        elif kind == "large" and _is_large_header(entries):
            space, key, pieces = entries
            large = _LargeValue(spaces[space], key, pieces)
        else:
            raise CorruptFile(f"{path}: unknown record {kind!r}", path=path, offset=offset)
    raise CorruptFile(
        f"{path} ends without its end record (it was cut short)", path=path, offset=offset
    )


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
