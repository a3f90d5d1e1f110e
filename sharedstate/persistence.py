"""Keeping the state across restarts: recovery at start, periodic snapshots, the journal.

At start the snapshot is loaded and the journal segments written since are replayed
(:meth:`Persistence.recover`). While serving, every write is journaled before it is
acknowledged (:mod:`sharedstate.journal`), and a snapshot is taken every
``snapshot_interval`` seconds when the state changed; each snapshot empties the journal.
On a clean stop, writes are refused and a final snapshot is taken.

Damaged files stop the server from starting, with a message naming the file and the
offset; they are never modified. ``--salvage`` starts from what is readable and moves
the damaged files aside.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from . import durable
from .config import Settings
from .errors import CorruptFile, PersistenceError
from .journal import Journal, Record, list_segments, read_segment
from .permissions import check_not_writable_by_others, ensure_safe_dir
from .snapshot import read_snapshot, write_snapshot
from .snapshotlock import SnapshotLock
from .store import Contents, Store

logger = logging.getLogger("sharedstate")

RETRY_SECONDS = 5.0  # how soon to try again after a failed snapshot


class Persistence:
    """The snapshot file and journal of one store."""

    def __init__(self, store: Store, settings: Settings) -> None:
        assert settings.snapshot is not None
        self.store = store
        self.path = settings.snapshot
        self.address = str(settings.address)
        self._lock: SnapshotLock | None = None  # held from recover() to close()
        self.interval = settings.snapshot_interval
        self.policy = settings.fsync
        self.use_journal = settings.journal
        self.journal: Journal | None = None
        self.error: str | None = None  # why the last snapshot failed
        self.last_snapshot: dict[str, Any] | None = None
        self.saved_seq = 0  # the last write the snapshot file holds
        self._snapshot_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- start-up ------------------------------------------------------------------------

    def recover(self, *, salvage: bool = False) -> None:
        """Load the snapshot and replay the journal into the store.

        Raises :class:`CorruptFile` for damage (unless ``salvage``), leaving every file
        as it was. After replaying a journal, writes a fresh snapshot and removes the
        replayed segments, so the server starts with an empty journal.
        """
        ensure_safe_dir(os.path.dirname(self.path))
        # Before reading anything: another server's files are not ours to replay or tidy.
        self._lock = SnapshotLock.acquire(self.path, self.address)
        try:
            self._recover(salvage)
        except BaseException:
            self.abandon()
            raise

    def _recover(self, salvage: bool) -> None:
        started = time.monotonic()
        self._remove_leftover_temp_files()
        segments = list_segments(self.path)
        for path in (self.path, *segments):
            if os.path.lexists(path):
                check_not_writable_by_others(path, "persistence file")

        damaged: list[str] = []
        contents = Contents()
        records: list[Record] = []
        try:
            if os.path.exists(self.path):
                contents, damage = read_snapshot(self.path, salvage=salvage)
                if damage:
                    logger.warning(
                        "salvaging %s: kept what precedes the damage (%s)", self.path, damage
                    )
                    damaged.append(self.path)
            for path in segments:
                segment = read_segment(path, salvage=salvage)
                if segment.torn:
                    logger.warning(
                        "dropped %d bytes at the end of %s: a record cut short by a crash, "
                        "whose write was never acknowledged",
                        segment.torn.size,
                        path,
                    )
                if segment.damage:
                    logger.warning(
                        "salvaging %s: kept what precedes the damage (%s)", path, segment.damage
                    )
                    damaged.append(path)
                records.extend(segment.records)
        except CorruptFile as error:
            raise _advise(error) from None

        self.store.load(contents)
        self.saved_seq = contents.seq
        replayed = self._replay(records, contents.seq, salvage)
        logger.info(
            "recovered %d keys from %s and %d journal records in %.2f s",
            self.store.stats()["keys"],
            self.path if os.path.exists(self.path) else "nothing (no snapshot yet)",
            replayed,
            time.monotonic() - started,
        )
        if segments or damaged:
            self._compact_after_recovery(segments, damaged)

    def start(self) -> None:
        """Attach the journal and start taking periodic snapshots."""
        if self.use_journal:
            self.journal = Journal(self.path, self.policy, self.store.seq + 1)
            self.store.journal = self.journal
        self._thread = threading.Thread(target=self._snapshot_periodically, daemon=True)
        self._thread.name = "snapshots"
        self._thread.start()

    # -- while serving -------------------------------------------------------------------

    def take_pending_sync(self) -> Callable[[], None] | None:
        """Under ``always``: what must run before the reply to the write just made."""
        return self.journal.take_pending_sync() if self.journal is not None else None

    def snapshot_now(self) -> dict[str, Any]:
        """Write a snapshot of the current state; return what was written.

        Raises :class:`PersistenceError` if it fails; the previous snapshot stays intact.
        """
        with self._snapshot_lock:
            journal = self.journal
            if journal is not None:
                journal.prepare_rotation(self.store.seq)
            started = time.monotonic()
            contents = self.store.export(while_locked=self._start_new_segment)
            stall = time.monotonic() - started
            if journal is not None:
                try:
                    journal.seal_retired()
                except OSError as error:
                    logger.warning("could not sync the old journal segment: %s", error)
            try:
                size = write_snapshot(self.path, contents)
            except OSError as error:
                self.error = f"writing the snapshot {self.path} failed: {error}"
                logger.error("%s; the previous snapshot is intact", self.error)
                raise PersistenceError(self.error, path=self.path) from error
            self.error = None
            self.saved_seq = contents.seq
            if journal is not None:
                try:
                    journal.remove_retired()
                except OSError as error:
                    logger.warning("could not remove old journal segments: %s", error)
            info = {
                "path": self.path,
                "seq": contents.seq,
                "keys": len(contents.data),
                "bytes": size,
                "seconds": time.monotonic() - started,
                "stall_seconds": stall,
                "at": time.time(),
            }
            self.last_snapshot = info
            logger.info(
                "snapshot %s: %d keys, %d bytes in %.2f s (store paused %.1f ms)",
                self.path,
                info["keys"],
                size,
                info["seconds"],
                stall * 1000,
            )
            return info

    def status(self) -> dict[str, Any]:
        """Health and figures for ``sharedstate status``."""
        journal_error = self.journal.error if self.journal is not None else None
        problems = [problem for problem in (journal_error, self.error) if problem]
        return {
            "snapshot": self.path,
            "journal": self.use_journal,
            "fsync": self.policy,
            "healthy": not problems,
            "problems": problems,
            "last_snapshot": self.last_snapshot,
            "journal_bytes": self.journal.size if self.journal is not None else None,
            "writes_since_snapshot": self.store.seq - self.saved_seq,
        }

    def close(self) -> None:
        """Stop: refuse further writes, take a final snapshot, close the journal."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.store.freeze()
        try:
            self.snapshot_now()
        except PersistenceError:
            logger.error("the final snapshot failed; the journal still holds every write")
            if self.journal is not None:
                self.journal.close()
            self._release_lock()
            return
        if self.journal is not None:
            try:
                self.journal.close(remove=True)  # the final snapshot holds every write
            except OSError as error:
                logger.warning("could not remove the journal after the final snapshot: %s", error)
        self._release_lock()

    def abandon(self) -> None:
        """Let go of the files without a final snapshot (the server failed to start)."""
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- internals -----------------------------------------------------------------------

    def _start_new_segment(self) -> None:
        # Runs under the store's lock, at the moment the snapshot's copy is taken.
        if self.journal is not None:
            self.journal.rotate()

    def _snapshot_periodically(self) -> None:
        while not self._stop.wait(RETRY_SECONDS if self._unhealthy() else self.interval):
            if self.store.seq != self.saved_seq or self._unhealthy():
                with contextlib.suppress(PersistenceError):
                    self.snapshot_now()

    def _unhealthy(self) -> bool:
        return self.error is not None or (
            self.journal is not None and self.journal.error is not None
        )

    def _replay(self, records: list[Record], snapshot_seq: int, salvage: bool) -> int:
        expected = snapshot_seq + 1
        replayed = 0
        for record in records:
            if record.seq <= snapshot_seq:
                continue  # already in the snapshot
            if record.seq != expected:
                message = (
                    f"{record.path}: the journal jumps from write {expected - 1} to write "
                    f"{record.seq} at byte {record.offset}; a segment is missing or damaged"
                )
                if not salvage:
                    raise _advise(CorruptFile(message, path=record.path, offset=record.offset))
                logger.warning("salvaging: stopped replaying at the gap (%s)", message)
                break
            self.store.replay(record.seq, record.method, record.args)
            expected += 1
            replayed += 1
        return replayed

    def _compact_after_recovery(self, segments: list[str], damaged: list[str]) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for path in damaged:
            aside = f"{path}.damaged-{stamp}"
            durable.disk.rename(path, aside)
            logger.warning("moved the damaged %s aside to %s", path, aside)
        contents = self.store.export()
        write_snapshot(self.path, contents)
        self.saved_seq = contents.seq
        for path in segments:
            if path not in damaged:
                durable.disk.unlink(path)
        durable.disk.sync_dir(os.path.dirname(self.path))

    def _remove_leftover_temp_files(self) -> None:
        directory = os.path.dirname(self.path)
        for name in os.listdir(directory):
            if durable.is_temp_of(self.path, name):
                candidate = os.path.join(directory, name)
                if os.lstat(candidate).st_uid == os.getuid():
                    os.unlink(candidate)
                    logger.info("removed %s, left by a snapshot interrupted by a crash", candidate)


def _advise(error: CorruptFile) -> CorruptFile:
    """The same error, with what the operator can do about it."""
    return CorruptFile(
        f"{error}. The file was left unchanged. To start from the part before the damage "
        "(losing what follows it), run: sharedstate serve --salvage (it keeps the damaged "
        "file as <file>.damaged-<time>)",
        path=getattr(error, "path", None),
        offset=getattr(error, "offset", None),
    )
