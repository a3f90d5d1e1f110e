"""The journal: every write, appended before it is acknowledged.

Records are frames (:mod:`sharedstate.persistence.frames`) holding ``(seq, kind, fields)``: the
write's number and what it did, in the format of :mod:`sharedstate.persistence.records`, whose
version the segment's preamble carries. They live in segment files named
``<snapshot>.journal.<N>``, where N grows with each segment (it is the write count when
the segment was created, plus one). Taking a snapshot switches to a new segment at the
same moment the state is copied (:meth:`Journal.rotate`, under the store's lock), so
older segments hold only writes the snapshot contains and are deleted once it is
durable. The new segment file is created beforehand (:meth:`Journal.prepare_rotation`),
because creating a file can wait for the disk, and nothing slow may happen under the
store's lock.

When a record reaches the disk depends on the policy:

- ``always``: the writing client's reply waits for an ``fdatasync`` covering its record.
  Concurrent writers share one fsync (group commit).
- ``everysec``: a background thread syncs once a second.
- ``no``: the OS writes it back when it likes.

Every record is handed to the OS (``pwrite``) before the reply under all policies, so
killing the server loses nothing acknowledged; only an OS crash or power loss can lose
the unsynced last second (``everysec``) or more (``no``).

If a record can't be written (disk full...), the write is refused and so are all
further writes, until a snapshot succeeds and starts a clean segment: appending after a
failed write could leave a damaged record in the middle of a segment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..errors import CorruptFile, InvalidArgument, PersistenceError
from . import durable, records
from .frames import FrameReader, Torn, check_preamble, frame, preamble

logger = logging.getLogger("sharedstate")

MAGIC = b"sharedstate journal\n"
VERSION = records.VERSION  # the record format
READABLE_VERSIONS = records.READABLE_VERSIONS
_PREAMBLE = preamble(MAGIC, VERSION)
_PREAMBLES = [preamble(MAGIC, version) for version in READABLE_VERSIONS]  # all one length
EVERYSEC_INTERVAL = 1.0


def segment_path(snapshot_path: str, first_seq: int) -> str:
    return f"{snapshot_path}.journal.{first_seq:012d}"


def list_segments(snapshot_path: str) -> list[str]:
    """The journal segments of a snapshot, oldest first."""
    directory = os.path.dirname(snapshot_path)
    pattern = re.compile(re.escape(os.path.basename(snapshot_path)) + r"\.journal\.(\d+)$")
    found = []
    for name in os.listdir(directory):
        match = pattern.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, name)))
    return [path for _, path in sorted(found)]


@dataclass
class Record:
    """A journal record as read: the write's number, its kind and fields, and where it is."""

    seq: int
    kind: str
    fields: tuple[Any, ...]
    path: str
    offset: int


@dataclass
class Segment:
    """What reading a segment found."""

    records: list[Record]
    torn: Torn | None = None  # a record cut short at the end by a crash
    damage: str | None = None  # with salvage: the damage the records stop before


def read_segment(path: str, *, salvage: bool = False) -> Segment:
    """The records of one segment file.

    A torn last record is dropped and reported. Damage before the end raises
    :class:`CorruptFile`, or with ``salvage`` ends the records there. A segment cut
    short inside its preamble, or holding only zero bytes (a crash or power loss right
    after creating it), is empty and torn.
    """
    found: list[Record] = []
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        head = file.read(len(_PREAMBLE))
        if len(head) < len(_PREAMBLE) and any(whole.startswith(head) for whole in _PREAMBLES):
            return Segment(found, Torn(0, size) if size else None)
        if not head.strip(b"\0") and _only_zeros(file):
            return Segment(found, Torn(0, size))
        version = check_preamble(head, path, MAGIC, READABLE_VERSIONS, "journal")
        reader = FrameReader(file, path, allow_torn_tail=True)
        try:
            for offset, payload in reader:
                seq, kind, fields = records.load(payload, version, path, offset)
                found.append(Record(seq, kind, fields, path, offset))
        except CorruptFile as damage:
            if not salvage:
                raise
            return Segment(found, damage=str(damage))
    return Segment(found, reader.torn)


def _only_zeros(file: BinaryIO) -> bool:
    """Does the rest of ``file`` hold only zero bytes?"""
    while chunk := file.read(1 << 20):
        if chunk.strip(b"\0"):
            return False
    return True


class _Segment:
    """One open segment file: where appends go, and how far it is known durable."""

    def __init__(self, path: str, fd: int, size: int) -> None:
        self.path = path
        self.fd = fd
        self.size = size  # bytes handed to the OS
        self.synced = 0  # bytes known to be on disk
        self.dir_synced = False  # is the file's directory entry on disk?
        self.closed = False
        self.sync_lock = threading.Lock()

    @classmethod
    def create(cls, path: str) -> _Segment:
        fd = durable.disk.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            durable.write_all(fd, _PREAMBLE, 0)
        except BaseException:
            durable.disk.close(fd)
            with contextlib.suppress(OSError):
                durable.disk.unlink(path)
            raise
        return cls(path, fd, len(_PREAMBLE))

    def sync_to(self, offset: int) -> None:
        """Make the first ``offset`` bytes durable (one fsync serves every waiter)."""
        if self.synced >= offset:
            return
        with self.sync_lock:
            if self.synced >= offset or self.closed:
                return
            target = self.size
            if not self.dir_synced:
                durable.disk.sync_dir(os.path.dirname(self.path))
                self.dir_synced = True
            durable.disk.sync(self.fd)
            self.synced = target

    def close(self) -> None:
        with self.sync_lock:
            if not self.closed:
                self.closed = True
                durable.disk.close(self.fd)


class _Pending(threading.local):
    segment: _Segment | None = None
    offset = 0


class Journal:
    """Appends records for the store; syncs them according to ``policy``."""

    def __init__(self, snapshot_path: str, policy: str, first_seq: int) -> None:
        self.snapshot_path = snapshot_path
        self.policy = policy
        self.error: str | None = None  # why writes are refused, if they are
        self._failed: _Segment | None = None  # the segment that failed, if any
        self._current = _Segment.create(segment_path(snapshot_path, first_seq))
        try:
            self._current.sync_to(self._current.size)
        except BaseException:
            self._current.close()
            with contextlib.suppress(OSError):
                durable.disk.unlink(self._current.path)
            raise
        self._retired: list[_Segment] = []
        self._next: _Segment | None = None  # created ahead of the next rotation
        self._pending = _Pending()
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if policy == "everysec":
            self._syncer = threading.Thread(target=self._sync_every_second, daemon=True)
            self._syncer.name = "journal-fsync"
            self._syncer.start()

    # -- called by the store, under its lock ---------------------------------------

    def append(self, seq: int, kind: str, fields: tuple[Any, ...]) -> None:
        """Hand a record to the OS; raise :class:`PersistenceError` if that fails."""
        if self.error is not None:
            raise PersistenceError(
                f"writes are refused: {self.error}. They resume after the next snapshot "
                "succeeds (free disk space, or fix the permissions, first)",
                path=self._current.path,
            )
        wrong = records.problem(kind, fields)
        if wrong is not None:
            # Only a client of its own making gets here (ours check what they send); a
            # record recovery would refuse must never reach the disk.
            raise InvalidArgument(
                f"the write was refused: as a journal record it {wrong}. The client sent "
                "arguments of the wrong types; sharedstate's own clients never do"
            )
        record = frame(records.dump(seq, kind, fields))
        segment = self._current
        try:
            durable.write_all(segment.fd, record, segment.size)
        except Exception as error:  # not only OSError: any failure may leave half a record
            problem = _describe(error)
            self._fail(segment, f"the journal {segment.path} could not be written ({problem})")
            with contextlib.suppress(Exception):
                durable.disk.truncate(segment.fd, segment.size)  # drop the partial record
            raise PersistenceError(
                f"the write was refused: the journal {segment.path} could not be written "
                f"({problem})",
                path=segment.path,
            ) from error
        segment.size += len(record)
        self._pending.segment = segment
        self._pending.offset = segment.size

    def rotate(self) -> None:
        """Switch to the segment :meth:`prepare_rotation` created (a snapshot is copying)."""
        if self._next is not None:
            self._retired.append(self._current)
            self._current, self._next = self._next, None

    # -- called outside the store's lock -----------------------------------------------

    def prepare_rotation(self, seq: int) -> None:
        """Create the segment the next :meth:`rotate` switches to; ``seq``: writes so far."""
        path = segment_path(self.snapshot_path, seq + 1)
        if self._next is not None or path == self._current.path:
            return  # already prepared, or nothing written since the current one began
        try:
            self._next = _Segment.create(path)
        except OSError as error:
            logger.error(
                "could not start a new journal segment (%s); keeping %s", error, self._current.path
            )

    def take_pending_sync(self) -> Callable[[], None] | None:
        """Under ``always``: the sync this thread's last record needs before its reply.

        Returns a function to run (in any thread) that raises :class:`PersistenceError`
        if the record could not be made durable; ``None`` when nothing needs syncing.
        """
        segment = self._pending.segment
        if segment is None or self.policy != "always":
            return None
        self._pending.segment = None
        offset = self._pending.offset

        def sync() -> None:
            try:
                self._sync(segment, offset)
            except Exception as error:
                problem = _describe(error)
                self._fail(segment, f"the journal {segment.path} could not be synced ({problem})")
                raise PersistenceError(
                    f"the write was applied in memory but could not be made durable "
                    f"({problem}); it may be lost if the server stops. Check the disk",
                    path=segment.path,
                ) from error

        return sync

    def seal_retired(self) -> None:
        """Sync and close the segments retired by :meth:`rotate`."""
        for segment in self._retired:
            segment.sync_to(segment.size)
            segment.close()

    def remove_retired(self) -> None:
        """Delete every segment but the current one: a durable snapshot now holds them.

        Writes resume if they were refused and the failed segment was among them.
        """
        keep = {self._current.path, self._next.path if self._next else None}
        for path in list_segments(self.snapshot_path):
            if path not in keep:
                durable.disk.unlink(path)
        self._retired.clear()
        durable.disk.sync_dir(os.path.dirname(self.snapshot_path))
        if self._failed is not None and self._failed is not self._current:
            logger.info("journal healthy again in %s; accepting writes", self._current.path)
            self._failed = None
            self.error = None

    def close(self, *, remove: bool = False) -> None:
        """Sync and close every segment; with ``remove``, delete them (a final snapshot
        holds everything)."""
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        for segment in (*self._retired, self._current):
            with contextlib.suppress(OSError):
                segment.sync_to(segment.size)
            segment.close()
        if self._next is not None:  # prepared but never used: empty
            self._next.close()
            with contextlib.suppress(OSError):
                durable.disk.unlink(self._next.path)
        if remove:
            self.remove_retired()
            durable.disk.unlink(self._current.path)
            durable.disk.sync_dir(os.path.dirname(self.snapshot_path))

    @property
    def size(self) -> int:
        return self._current.size

    def _fail(self, segment: _Segment, message: str) -> None:
        if self.error is None:
            logger.error("%s; refusing writes until a snapshot succeeds", message)
        self.error = message
        self._failed = segment

    def _sync(self, segment: _Segment, offset: int) -> None:
        """Make ``segment`` durable up to ``offset``, and every older segment first.

        Otherwise a power loss could keep a newer segment's records and lose the end of
        an older one, and recovery would find a gap in the sequence and refuse to start.
        """
        for older in list(self._retired):  # a copy: snapshots retire and remove them
            if older is segment:
                break
            older.sync_to(older.size)
        segment.sync_to(offset)

    def _sync_every_second(self) -> None:
        while not self._stop.wait(EVERYSEC_INTERVAL):
            segment = self._current
            try:
                self._sync(segment, segment.size)
            except Exception as error:  # this thread must never die silently
                problem = _describe(error)
                self._fail(segment, f"the journal {segment.path} could not be synced ({problem})")


def _describe(error: Exception) -> str:
    """An error for a message: an OSError as its text, anything else with its type too."""
    if isinstance(error, OSError):
        return str(error)
    logger.error("unexpected error in the journal", exc_info=error)
    return f"{type(error).__name__}: {error}"
