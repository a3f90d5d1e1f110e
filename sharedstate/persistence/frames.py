"""Framed records, as written to snapshots and journals, and reading them back safely.

A frame is a 12-byte header, then the payload::

    length (u32) | crc32 of payload (u32) | crc32 of the first 8 header bytes (u32)

The header has its own checksum so a damaged length is recognised as damage, instead of
sending the reader past the end of the file and passing for a torn tail.

When reading, a bad frame is either a *torn tail* or *damage*. A torn tail is what a
crash during the last append leaves: the file ends inside a header, or inside a payload
(fewer bytes than the header says), or only zero bytes follow (a filesystem's
zero-filled tail after a power loss). Anything else is damage, even in the last frame: a
complete frame whose checksum fails was written whole, so its write may have been
acknowledged, and dropping it as torn would lose it silently. Journals may drop a torn
tail; damage is never skipped.

Payloads are pickles of plain data (tuples, lists, str, bytes, numbers). They are read
with an unpickler that refuses every class, so reading a file never runs code from it.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..codec import PROTOCOL
from ..errors import CorruptFile

HEADER = struct.Struct("<III")
MAX_PAYLOAD = (1 << 31) - 1


def frame(payload: bytes) -> bytes:
    """``payload`` with its header in front."""
    return frame_header(payload) + payload


def frame_header(payload: bytes) -> bytes:
    """The header of ``payload``'s frame: write it, then the payload (no joined copy)."""
    if not 0 < len(payload) <= MAX_PAYLOAD:
        raise ValueError(f"a frame holds 1 to {MAX_PAYLOAD} bytes, not {len(payload)}")
    head = struct.pack("<II", len(payload), zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head))


def dump_plain(value: Any) -> bytes:
    """Pickle plain data for a frame."""
    return pickle.dumps(value, protocol=PROTOCOL)


class _PlainUnpickler(pickle.Unpickler):
    # Plain data needs no classes, except slices, which nested list paths may hold.
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "slice"):
            return slice
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_plain(payload: bytes, path: str, offset: int) -> Any:
    """Unpickle a frame's payload, allowing no classes."""
    try:
        return _PlainUnpickler(io.BytesIO(payload)).load()
    except Exception as error:
        raise CorruptFile(
            f"{path}: the record at byte {offset} is not valid ({error})",
            path=path,
            offset=offset,
        ) from None


def preamble(magic: bytes, version: int) -> bytes:
    """What a file of ours starts with: a magic line, then the format version."""
    return magic + struct.pack("<H", version)


def check_preamble(
    data: bytes, path: str, magic: bytes, versions: tuple[int, ...], kind: str
) -> int:
    """Refuse a file that is not ours, or of a format version we can't read; return it."""
    if data[: len(magic)] != magic:
        raise CorruptFile(f"{path} is not a sharedstate {kind}", path=path, offset=0)
    end = len(magic) + 2
    found: int = struct.unpack("<H", data[len(magic) : end])[0] if len(data) >= end else -1
    if found not in versions:
        readable = " or ".join(str(version) for version in versions)
        raise CorruptFile(
            f"{path} has {kind} format version {found}; this sharedstate reads version "
            f"{readable}. Use the sharedstate version that wrote it.",
            path=path,
            offset=len(magic),
        )
    return found


@dataclass
class Torn:
    """Where a file's torn tail starts, and how many bytes it holds."""

    offset: int
    size: int


class FrameReader:
    """Reads the frames of an open file from its current position to the end.

    Iterate for ``(offset, payload)`` pairs. A torn tail ends the iteration and is
    recorded in :attr:`torn` when ``allow_torn_tail`` is set; otherwise, like any
    corruption, it raises :class:`CorruptFile` naming the file and offset.
    """

    def __init__(self, file: BinaryIO, path: str, *, allow_torn_tail: bool) -> None:
        self._file = file
        self._path = path
        self._allow_torn_tail = allow_torn_tail
        self._size = os.fstat(file.fileno()).st_size
        self.torn: Torn | None = None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while True:
            offset = self._file.tell()
            if offset == self._size:
                return
            header = self._file.read(HEADER.size)
            if len(header) < HEADER.size:
                self._damaged(offset, "the file ends inside a record header", tail=True)
                return
            length, payload_crc, header_crc = HEADER.unpack(header)
            if zlib.crc32(header[:8]) != header_crc or length == 0:
                self._damaged(
                    offset, "a record header is damaged", tail=self._only_zeros_after(offset)
                )
                return
            payload = self._file.read(length)
            if len(payload) < length:
                self._damaged(offset, "the file ends inside a record", tail=True)
                return
            if zlib.crc32(payload) != payload_crc:
                # Complete, so not torn: damage, even as the last record of the file.
                last = offset + HEADER.size + length == self._size
                what = "a record's checksum does not match"
                if last:
                    what = "the last record is complete but its checksum does not match"
                self._damaged(offset, what, tail=False, last=last)
                return
            yield offset, payload

    def _only_zeros_after(self, offset: int) -> bool:
        self._file.seek(offset)
        while chunk := self._file.read(1 << 20):
            if chunk.count(0) != len(chunk):
                return False
        return True

    def _damaged(self, offset: int, what: str, *, tail: bool, last: bool = False) -> None:
        if tail and self._allow_torn_tail:
            self.torn = Torn(offset, self._size - offset)
            return
        where = "at its end" if tail or last else "before its end"
        raise CorruptFile(
            f"{self._path} is damaged {where}: {what} at byte {offset} of {self._size}",
            path=self._path,
            offset=offset,
        )
