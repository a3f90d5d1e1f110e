"""The lock file that says "a server is alive at this address", holding its pid.

A running server holds an exclusive ``flock`` on ``<address>.lock`` for its whole life;
the kernel drops it when the process dies, even by SIGKILL. So:

- a client that can take the lock knows no server is alive: any socket file left
  behind is stale, and it may start a server;
- it then hands the locked descriptor to the server it starts (``flock`` locks belong
  to the open file, which the child inherits), so there is no moment between "no server"
  and "the new server" in which another client could start a second one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from .errors import AlreadyRunning, ServerStartError
from .permissions import open_private_file


class ServerLock:
    """An exclusive lock on ``path``, held through the open descriptor ``fd``."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def try_acquire(cls, path: str) -> ServerLock | None:
        """Take the lock if nobody holds it; ``None`` if a server (or a starter) does."""
        fd = open_private_file(path, "lock file")
        if _try_flock(fd):
            return cls(path, fd)
        os.close(fd)
        return None

    @classmethod
    def acquire(cls, path: str, wait: float) -> ServerLock:
        """Take the lock, retrying for ``wait`` seconds; :class:`AlreadyRunning` if held."""
        deadline = time.monotonic() + wait
        while True:
            lock = cls.try_acquire(path)
            if lock is not None:
                return lock
            if time.monotonic() >= deadline:
                pid = read_pid(path)
                raise AlreadyRunning(
                    f"a sharedstate server is already running (pid {pid or 'unknown'}, "
                    f"lock {path}); stop it first with: sharedstate stop",
                    pid=pid,
                )
            time.sleep(0.05)

    @classmethod
    def adopt(cls, path: str, fd: int) -> ServerLock:
        """Take over a lock handed down by the client that started this server."""
        try:
            same_file = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same_file = False
        if not same_file or not _try_flock(fd):
            raise ServerStartError(f"descriptor {fd} is not a held lock on {path}")
        os.set_inheritable(fd, False)
        return cls(path, fd)

    def write_pid(self) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self.fd)  # closing our descriptor releases the flock


def is_held(path: str) -> bool:
    """True if a live process holds the lock at ``path``."""
    if not os.path.exists(path):
        return False
    lock = ServerLock.try_acquire(path)
    if lock is None:
        return True
    lock.release()
    return False


def read_pid(path: str) -> int | None:
    """The pid the last server wrote into its lock file, if any."""
    try:
        with open(path, encoding="ascii") as file:
            return int(file.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def is_running(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as file:
                return file.read().rsplit(b")", 1)[1].split()[0] != b"Z"
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's process
    return True
