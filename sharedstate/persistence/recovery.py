"""Start-up: load the snapshot, replay the journal, and tidy up without needing free space.

Recovery reads every file before it changes any: damage raises :class:`CorruptFile`
(naming file and offset) and leaves every byte as it was. When all is readable, it only
does what needs no room on the disk:

- a record cut short at the end of a segment (a crash in the middle of an append, whose
  write was never acknowledged) is truncated away, and the log says how many bytes;
- segments holding no write newer than the snapshot are removed;
- the other segments are synced (a server that died may have left them in the OS's
  cache only) and stay until the next snapshot holds their writes.

It does not write a snapshot: after a crash on a nearly full disk there may be no room
for one, and the server must still start. The server then journals into a new segment
and takes a snapshot in the background soon after it starts serving.

``--salvage`` is an explicit operator action, and may need room: it writes a snapshot of
what was readable, keeps the damaged files as ``<file>.damaged-<time>`` and the segments
it could not replay (after the damage) as ``<file>.unreplayed-<time>``, so no later start
replays them on top of the newer state.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from dataclasses import dataclass, field

from ..codec import Contents
from ..errors import CorruptFile, PersistenceError
from ..permissions import check_not_writable_by_others
from ..server.store import Store
from . import durable, records
from .journal import Segment, list_segments, read_segment
from .snapshot import read_snapshot, write_snapshot

logger = logging.getLogger("sharedstate")


@dataclass
class Recovery:
    """What recovery found and left on disk."""

    snapshot_seq: int = 0  # the last write the snapshot file holds
    # Segments holding writes the snapshot file lacks: removed after the next snapshot.
    replayed_segments: list[str] = field(default_factory=list)
    bytes_on_disk: int = 0  # snapshot plus journal: roughly what the next snapshot needs


def recover(store: Store, path: str, *, salvage: bool = False) -> Recovery:
    """Load the snapshot at ``path`` and replay its journal into ``store``.

    Raises :class:`CorruptFile` for damage (unless ``salvage``), leaving every file as
    it was. The caller must hold the snapshot's lock (:mod:`sharedstate.persistence.snapshotlock`).
    """
    started = time.monotonic()
    _remove_leftover_temp_files(path)
    paths = list_segments(path)
    for candidate in (path, *paths):
        if os.path.lexists(candidate):
            check_not_writable_by_others(candidate, "persistence file")
    bytes_on_disk = sum(os.path.getsize(p) for p in (path, *paths) if os.path.exists(p))
    try:
        contents, snapshot_damage = _read_snapshot(path, salvage)
        segments = {segment: read_segment(segment, salvage=salvage) for segment in paths}
    except CorruptFile as error:
        raise advise(error) from None

    store.load(contents)
    replayed = _replay(store, segments, contents.seq, salvage)
    logger.info(
        "recovered %d keys from %s and %d journal records in %.2f s",
        store.stats()["keys"],
        path if os.path.exists(path) else "nothing (no snapshot yet)",
        replayed,
        time.monotonic() - started,
    )
    damaged = [path] if snapshot_damage else []
    damaged += [segment for segment, found in segments.items() if found.damage]
    unreplayed = [
        segment
        for segment, found in segments.items()
        if segment not in damaged and any(record.seq > store.seq for record in found.records)
    ]
    if damaged or unreplayed:  # only with salvage: otherwise they raised
        _salvage(store, path, list(segments), damaged, unreplayed, bytes_on_disk)
        return Recovery(store.seq, [], bytes_on_disk)
    kept = _tidy(path, segments, contents.seq)
    return Recovery(contents.seq, kept, bytes_on_disk)


def advise(error: CorruptFile) -> CorruptFile:
    """The same error, with what the operator can do about it."""
    return CorruptFile(
        f"{error}. The file was left unchanged. To start from the part before the damage "
        "(losing what follows it), run: sharedstate serve --salvage (it keeps the damaged "
        "file as <file>.damaged-<time>)",
        path=getattr(error, "path", None),
        offset=getattr(error, "offset", None),
    )


def no_room_advice(directory: str, error: OSError, needed: int) -> str:
    """What to tell the operator when a file in ``directory`` can't be written."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free at least {describe_size(needed)} in {directory}"
    return f"check {directory} (permissions, mount, disk)"


def describe_size(size: int) -> str:
    """``size`` bytes for a person: ``"12 KB"``, ``"3.4 MB"``."""
    amount = float(max(size, 1))
    for unit in ("bytes", "KB", "MB", "GB"):
        if amount < 1000:
            return f"{amount:.0f} {unit}" if unit in ("bytes", "KB") else f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{amount:.1f} TB"


# -- reading -------------------------------------------------------------------------------


def _read_snapshot(path: str, salvage: bool) -> tuple[Contents, str | None]:
    if not os.path.exists(path):
        return Contents(), None
    contents, damage = read_snapshot(path, salvage=salvage)
    if damage:
        logger.warning("salvaging %s: kept what precedes the damage (%s)", path, damage)
    return contents, damage


def _replay(store: Store, segments: dict[str, Segment], snapshot_seq: int, salvage: bool) -> int:
    expected = snapshot_seq + 1
    replayed = 0
    for path, segment in segments.items():
        if segment.damage:
            logger.warning("salvaging %s: kept what precedes the damage (%s)", path, segment.damage)
        for record in segment.records:
            if record.seq <= snapshot_seq:
                continue  # already in the snapshot
            problem = records.problem(record.kind, record.fields)
            if record.seq != expected:
                message = (
                    f"{record.path}: the journal jumps from write {expected - 1} to write "
                    f"{record.seq} at byte {record.offset}; a segment is missing or damaged"
                )
            elif problem is not None:
                message = f"{record.path}: the record at byte {record.offset} {problem}"
            else:
                store.replay(record.seq, record.kind, record.fields)
                expected += 1
                replayed += 1
                continue
            if not salvage:
                raise advise(CorruptFile(message, path=record.path, offset=record.offset))
            logger.warning("salvaging: stopped replaying there (%s)", message)
            return replayed
    return replayed


# -- tidying, without needing room ---------------------------------------------------------


def _tidy(path: str, segments: dict[str, Segment], snapshot_seq: int) -> list[str]:
    """Drop torn tails, remove segments the snapshot covers; return the segments kept."""
    kept = []
    covered = []
    for segment_path, segment in segments.items():
        if not any(record.seq > snapshot_seq for record in segment.records):
            covered.append(segment_path)
            continue
        if segment.torn is not None:
            logger.warning(
                "dropped %d bytes at the end of %s: a record cut short by a crash, whose "
                "write was never acknowledged",
                segment.torn.size,
                segment_path,
            )
        _make_durable(segment_path, segment.torn.offset if segment.torn else None)
        kept.append(segment_path)
    if not segments:
        return kept
    directory = os.path.dirname(path)
    # The snapshot's rename and the kept segments must be durable before anything goes.
    durable.disk.sync_dir(directory)
    for segment_path in covered:
        durable.disk.unlink(segment_path)
        logger.info(
            "removed %s: it holds no write newer than the snapshot (an empty segment, or "
            "one a crash kept from being removed)",
            segment_path,
        )
    if covered:
        durable.disk.sync_dir(directory)
    return kept


def _make_durable(path: str, cut_at: int | None) -> None:
    """Sync a segment a dead server may have left unsynced, cutting its torn tail first."""
    fd = durable.disk.open(path, os.O_WRONLY if cut_at is not None else os.O_RDONLY)
    try:
        if cut_at is not None:
            durable.disk.truncate(fd, cut_at)
        durable.disk.sync(fd)
    finally:
        durable.disk.close(fd)


def _remove_leftover_temp_files(path: str) -> None:
    directory = os.path.dirname(path)
    for name in os.listdir(directory):
        if durable.is_temp_of(path, name):
            candidate = os.path.join(directory, name)
            if os.lstat(candidate).st_uid == os.getuid():
                os.unlink(candidate)
                logger.info("removed %s, left by a snapshot interrupted by a crash", candidate)


# -- salvaging -----------------------------------------------------------------------------


def _salvage(
    store: Store,
    path: str,
    segments: list[str],
    damaged: list[str],
    unreplayed: list[str],
    bytes_on_disk: int,
) -> None:
    """Save what was readable as the snapshot; keep every file it can't use aside."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept_snapshot = f"{path}.damaged-{stamp}" if path in damaged else None
    moved = False
    if kept_snapshot is not None:
        try:
            durable.disk.link(path, kept_snapshot)  # the new snapshot replaces only this name
        except OSError:  # a filesystem without hard links
            durable.disk.rename(path, kept_snapshot)
            moved = True
    try:
        write_snapshot(path, store.export())
    except OSError as error:
        if kept_snapshot is not None:
            with contextlib.suppress(OSError):
                if moved:
                    durable.disk.rename(kept_snapshot, path)
                else:
                    durable.disk.unlink(kept_snapshot)
        advice = no_room_advice(os.path.dirname(path), error, bytes_on_disk)
        raise PersistenceError(
            f"--salvage writes a new snapshot of what was readable, and writing {path} "
            f"failed ({error.strerror or error}); {advice}, then run it again. No file "
            "was changed",
            path=path,
        ) from None
    if kept_snapshot is not None:
        logger.warning("kept the damaged %s as %s", path, kept_snapshot)
    for segment in segments:
        if segment in damaged:
            aside = f"{segment}.damaged-{stamp}"
            durable.disk.rename(segment, aside)
            logger.warning("moved the damaged %s aside to %s", segment, aside)
        elif segment in unreplayed:
            aside = f"{segment}.unreplayed-{stamp}"
            durable.disk.rename(segment, aside)
            logger.warning(
                "moved %s aside to %s: its writes come after the damage, so they were not "
                "replayed",
                segment,
                aside,
            )
        else:
            durable.disk.unlink(segment)  # every write in it is in the new snapshot
    durable.disk.sync_dir(os.path.dirname(path))
