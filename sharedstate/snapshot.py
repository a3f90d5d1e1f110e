"""The snapshot file: the whole state at one moment, written atomically.

Layout: a magic line with the format version, then frames (:mod:`sharedstate.frames`):

1. ``("meta", {"seq": ..., "created": ..., "keys": ..., "attributes": ...})``;
2. ``("data", [(key, pickled value), ...])`` and ``("namespace", [...])`` chunks of
   :data:`CHUNK` entries, so serialising a large state lets client threads run between
   chunks;
3. ``("end", (entry count, crc32 of all payloads before it))``: a snapshot without
   it, or whose checksum over the body does not match, is damaged.

``seq`` is the number of the last write the snapshot contains; journal records up to it
are already in it.
"""

from __future__ import annotations

import itertools
import time
import zlib
from collections.abc import Iterator
from typing import Any

from .durable import write_atomically
from .errors import CorruptFile
from .frames import FrameReader, check_preamble, dump_plain, frame, load_plain, preamble
from .store import Contents

MAGIC = b"sharedstate snapshot\n"
VERSION = 1
_PREAMBLE = preamble(MAGIC, VERSION)
CHUNK = 10_000


def write_snapshot(path: str, contents: Contents) -> int:
    """Write ``contents`` to ``path`` atomically and durably; return its size in bytes."""
    return write_atomically(path, snapshot_bytes(contents))


def snapshot_bytes(contents: Contents) -> Iterator[bytes]:
    """The file's bytes, a chunk at a time."""
    yield _PREAMBLE
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
    for kind, entries in itertools.chain([("meta", meta)], _chunks(contents)):
        payload = dump_plain((kind, entries))
        body_crc = zlib.crc32(payload, body_crc)
        count += len(entries) if kind != "meta" else 0
        yield frame(payload)
    yield frame(dump_plain(("end", (count, body_crc))))


def _chunks(contents: Contents) -> Iterator[tuple[str, Any]]:
    # Lazily, a chunk at a time: listing a million items at once would hold the GIL
    # (and so stall every client thread) for the whole listing.
    for kind, entries in (("data", contents.data), ("namespace", contents.namespace)):
        items = iter(entries.items())
        while chunk := list(itertools.islice(items, CHUNK)):
            yield kind, chunk


def read_snapshot(path: str, *, salvage: bool = False) -> tuple[Contents, str | None]:
    """Load a snapshot; return it and, when salvaging a damaged one, what was lost.

    Without ``salvage`` any damage raises :class:`CorruptFile`. With it, the entries
    before the damage are returned with a description of the damage.
    """
    contents = Contents()
    with open(path, "rb") as file:
        check_preamble(file.read(len(_PREAMBLE)), path, MAGIC, VERSION, "snapshot")
        try:
            _read_frames(FrameReader(file, path, allow_torn_tail=False), path, contents)
        except CorruptFile as damage:
            if not salvage:
                raise
            return contents, str(damage)
    return contents, None


def _read_frames(reader: FrameReader, path: str, contents: Contents) -> None:
    body_crc = 0
    count = 0
    offset = len(_PREAMBLE)
    for offset, payload in reader:
        try:
            kind, entries = load_plain(payload, path, offset)
        except (TypeError, ValueError):  # checksummed, but not a (kind, entries) pair
            raise CorruptFile(
                f"{path}: unexpected record at byte {offset}", path=path, offset=offset
            ) from None
        if kind == "end":
            expected_count, expected_crc = entries
            if (count, body_crc) != (expected_count, expected_crc):
                raise CorruptFile(
                    f"{path}: the body checksum or entry count does not match its end record",
                    path=path,
                    offset=offset,
                )
            return
        body_crc = zlib.crc32(payload, body_crc)
        if kind == "meta":
            contents.seq = entries["seq"]
        elif kind == "data":
            contents.data.update(entries)
            count += len(entries)
        elif kind == "namespace":
            contents.namespace.update(entries)
            count += len(entries)
        else:
            raise CorruptFile(f"{path}: unknown record {kind!r}", path=path, offset=offset)
    raise CorruptFile(
        f"{path} ends without its end record (it was cut short)", path=path, offset=offset
    )
