"""One snapshot file, one server: the lock file beside the snapshot.

Two servers on one snapshot would each replay and compact the other's journal, and the
writes one of them acknowledged would be lost. So a server takes an exclusive ``flock``
on ``<snapshot>.lock`` before it reads or changes any persistence file, holds it for its
whole life (the kernel drops it when the process dies, even by SIGKILL), and writes its
pid and address in it so a refused server can say who holds it.

The lock file sits in the snapshot's directory under the snapshot's name, so every
spelling of the path (a symlinked directory, ``..``, a bind mount) reaches the same file.
"""

from __future__ import annotations

import os

from ..errors import SnapshotInUse
from ..pidlock import ServerLock


def snapshot_lock_path(snapshot_path: str) -> str:
    """The lock file of a snapshot (its directory resolved, for messages)."""
    directory = os.path.realpath(os.path.dirname(os.path.abspath(snapshot_path)))
    return os.path.join(directory, os.path.basename(snapshot_path) + ".lock")


class SnapshotLock:
    """The held lock on one snapshot file."""

    def __init__(self, lock: ServerLock) -> None:
        self._lock = lock

    @classmethod
    def acquire(cls, snapshot_path: str, address: str) -> SnapshotLock:
        """Take the lock for the server at ``address``, or raise :class:`SnapshotInUse`."""
        path = snapshot_lock_path(snapshot_path)
        lock = ServerLock.try_acquire(path)  # refuses a symbolic link (open_private_file)
        if lock is None:
            pid, holder = read_holder(path)
            who = f"the sharedstate server at {holder}" if holder else "another sharedstate server"
            stop = f"sharedstate stop --address {holder}" if holder else "sharedstate stop"
            raise SnapshotInUse(
                f"the snapshot {snapshot_path} is in use by {who} (pid {pid or 'unknown'}, "
                f"lock {path}); one snapshot file serves one server, and a second would "
                f"replay and remove the first one's journal. Stop that server first ({stop}), "
                "or give this one its own --snapshot (SHAREDSTATE_SNAPSHOT)",
                path=snapshot_path,
                pid=pid,
                holder=holder,
            )
        os.ftruncate(lock.fd, 0)
        os.pwrite(lock.fd, f"{os.getpid()}\n{address}\n".encode(), 0)
        return cls(lock)

    def release(self) -> None:
        self._lock.release()


def read_holder(path: str) -> tuple[int | None, str | None]:
    """The pid and address the holder of a snapshot lock wrote in it, if readable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            pid, _, address = file.read().partition("\n")
        return int(pid) or None, address.rstrip("\n") or None
    except (OSError, ValueError):
        return None, None
