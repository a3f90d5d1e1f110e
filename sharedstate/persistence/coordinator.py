"""Keeping the state across restarts: recovery at start, periodic snapshots, the journal.

At start the snapshot file is locked for this server (:mod:`sharedstate.persistence.snapshotlock`),
then loaded and the journal segments written since are replayed
(:mod:`sharedstate.persistence.recovery`, which needs no free space). While serving, every write is
journaled before it is acknowledged (:mod:`sharedstate.persistence.journal`), and a snapshot is
taken every ``snapshot_interval`` seconds when the state changed, and soon after start
when recovery replayed writes; each snapshot empties the journal. On a clean stop,
writes are refused and a final snapshot is taken.

No failure while taking a snapshot is silent: whatever its cause, it becomes a
:class:`PersistenceError` naming the file, ``status`` reports persistence as unhealthy
with the reason, and the snapshot thread tries again a few seconds later.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..errors import ConfigError, PersistenceError
from ..permissions import ensure_safe_dir
from ..server.store import Store
from . import durable
from .journal import Journal, segment_path
from .recovery import describe_size, no_room_advice, recover
from .snapshot import write_snapshot
from .snapshotlock import SnapshotLock

logger = logging.getLogger("sharedstate")

RETRY_SECONDS = 5.0  # how soon to try again after a failed snapshot


class Persistence:
    """The snapshot file and journal of one store."""

    def __init__(self, store: Store, settings: Settings) -> None:
        assert settings.snapshot is not None
        self.store = store
        self.path = settings.snapshot
        self.create_dir = settings.create_snapshot_dir
        self.address = str(settings.address)
        self.interval = settings.snapshot_interval
        self.policy = settings.fsync
        self.use_journal = settings.journal
        self.journal: Journal | None = None
        self.error: str | None = None  # why the last snapshot failed
        self.last_snapshot: dict[str, Any] | None = None
        self.saved_seq = 0  # the last write the snapshot file holds
        # Segments of an earlier run whose writes no snapshot file holds yet.
        self._replayed_segments: list[str] = []
        self._lock: SnapshotLock | None = None  # held from recover() to close()
        self._snapshot_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- start-up ------------------------------------------------------------------------

    def recover(self, *, salvage: bool = False) -> None:
        """Lock the snapshot file, load it, replay the journal, open a new segment.

        Raises :class:`SnapshotInUse` if another server holds the snapshot (before
        anything is read), :class:`CorruptFile` for damage (unless ``salvage``), leaving
        every file as it was, and :class:`PersistenceError` if the journal can't start.
        """
        self._check_dir_exists()
        ensure_safe_dir(os.path.dirname(self.path))
        # Before reading anything: another server's files are not ours to replay or tidy.
        self._lock = SnapshotLock.acquire(self.path, self.address)
        try:
            recovery = recover(self.store, self.path, salvage=salvage)
            self.saved_seq = recovery.snapshot_seq
            self._replayed_segments = recovery.replayed_segments
            if self.use_journal:
                self.journal = self._open_journal(recovery.bytes_on_disk)
        except BaseException:
            self.abandon()
            raise

    def _check_dir_exists(self) -> None:
        # A mistyped directory would otherwise be created, and the server start with no data.
        directory = os.path.dirname(self.path)
        if self.create_dir or os.path.lexists(directory):
            return
        raise ConfigError(
            f"the snapshot directory {directory} does not exist (snapshot {self.path}); "
            "check the path, create the directory, or pass --create-snapshot-dir "
            "(SHAREDSTATE_CREATE_SNAPSHOT_DIR=1) to have it created",
            path=self.path,
        )

    def start(self) -> None:
        """Attach the journal and start taking snapshots in the background."""
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

        Raises :class:`PersistenceError`, and only that, if it fails; the previous
        snapshot stays intact.
        """
        with self._snapshot_lock:
            try:
                return self._snapshot()
            except PersistenceError as error:
                self.error = str(error)
            except Exception as error:  # a bug, MemoryError...: reported all the same
                logger.error("unexpected error while writing a snapshot", exc_info=True)
                self.error = (
                    f"writing the snapshot {self.path} failed ({type(error).__name__}: "
                    f"{error}; the server log has the details)"
                )
            kept = "the previous snapshot is intact"
            if self.journal is not None:
                kept += " and the journal holds every write since"
            logger.error("%s; %s", self.error, kept)
            raise PersistenceError(f"{self.error}; {kept}", path=self.path)

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

    def close(self) -> str | None:
        """Stop: refuse further writes, take a final snapshot, close the journal.

        Returns why the final snapshot failed (``None`` when it succeeded), for the
        operator who stopped the server.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.store.freeze()
        try:
            self.snapshot_now()
        except PersistenceError as error:
            if self.journal is not None:
                outcome = "the journal still holds every write; the next start recovers them"
                self.journal.close()
            else:
                unsaved = self.store.seq - self.saved_seq
                outcome = (
                    f"without a journal, the {unsaved} writes since the last snapshot are lost"
                )
            failure = f"the final snapshot failed: {error}; {outcome}"
            logger.error("%s", failure)
            self._release_lock()
            return failure
        if self.journal is not None:
            try:
                self.journal.close(remove=True)  # the final snapshot holds every write
            except OSError as error:
                logger.warning("could not remove the journal after the final snapshot: %s", error)
        self._release_lock()
        return None

    def abandon(self) -> None:
        """Let go of the files without a final snapshot (the server failed to start)."""
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        self._release_lock()

    # -- internals -----------------------------------------------------------------------

    def _open_journal(self, bytes_on_disk: int) -> Journal:
        first = self.store.seq + 1
        try:
            return Journal(self.path, self.policy, first)
        except OSError as error:
            path = segment_path(self.path, first)
            advice = no_room_advice(os.path.dirname(path), error, bytes_on_disk)
            raise PersistenceError(
                f"can't start the journal: creating {path} failed "
                f"({error.strerror or error}); {advice} (the journal needs a few KB to "
                f"start, the first snapshot about {describe_size(bytes_on_disk)}), then "
                "start again",
                path=path,
            ) from None

    def _snapshot(self) -> dict[str, Any]:
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
            problem = f"writing the snapshot {self.path} failed ({error.strerror or error})"
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                needed = sum(map(len, contents.data.values())) + sum(
                    map(len, contents.namespace.values())
                )
                problem += "; " + no_room_advice(os.path.dirname(self.path), error, needed)
            raise PersistenceError(problem, path=self.path) from error
        self.error = None
        self.saved_seq = contents.seq
        self._remove_segments_the_snapshot_holds()
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

    def _remove_segments_the_snapshot_holds(self) -> None:
        """After a durable snapshot: the older segments, this run's and an earlier one's."""
        if self.journal is not None:
            try:
                self.journal.remove_retired()  # every segment but the current one
            except OSError as error:
                logger.warning("could not remove old journal segments: %s", error)
            else:
                self._replayed_segments = []
            return
        remaining = []
        for path in self._replayed_segments:
            try:
                durable.disk.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as error:
                logger.warning("could not remove the old journal segment %s: %s", path, error)
                remaining.append(path)
            else:
                logger.info("removed %s: the snapshot holds its writes", path)
        self._replayed_segments = remaining

    def _start_new_segment(self) -> None:
        # Runs under the store's lock, at the moment the snapshot's copy is taken.
        if self.journal is not None:
            self.journal.rotate()

    def _snapshot_periodically(self) -> None:
        # Soon after start if recovery replayed writes: until a snapshot holds them,
        # the old segments stay, and every start replays them again.
        wait = 0.0 if self._replayed_segments else self.interval
        while not self._stop.wait(wait):
            try:
                if self.store.seq != self.saved_seq or self._unhealthy():
                    self.snapshot_now()
            except PersistenceError:
                pass  # logged and shown by status; tried again soon
            except Exception:  # this thread must never die: nothing would save the state
                logger.exception("unexpected error in the snapshot thread; it carries on")
            wait = RETRY_SECONDS if self._unhealthy() else self.interval

    def _unhealthy(self) -> bool:
        return self.error is not None or (
            self.journal is not None and self.journal.error is not None
        )

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
