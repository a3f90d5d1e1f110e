"""Writing files so they survive crashes, through one seam tests can make fail.

Every file operation of the persistence layer goes through :data:`disk`. Tests replace
it with a subclass that fails the Nth call (disk full, I/O error), the way SQLite's test
VFS does, to prove that no failure loses acknowledged data or leaves a file unreadable.
Code must therefore call ``durable.disk.<op>``, never bind the operations early.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable

_sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class Disk:
    """The file operations persistence uses, one method each."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        return os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, mode)

    def write(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def sync(self, fd: int) -> None:
        _sync(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, source: str, target: str) -> None:
        os.replace(source, target)

    def rename(self, source: str, target: str) -> None:
        os.rename(source, target)

    def link(self, source: str, target: str) -> None:
        os.link(source, target, follow_symlinks=False)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def sync_dir(self, path: str) -> None:
        """Make renames and new files in ``path`` durable."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


disk = Disk()


def write_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``pwrite`` may write less than asked)."""
    view = memoryview(data)
    while view:
        written = disk.write(fd, view, offset)
        view = view[written:]
        offset += written


def temp_name(path: str) -> str:
    """A fresh temporary name beside ``path``; :func:`is_temp_of` recognises it."""
    return f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def is_temp_of(path: str, candidate: str) -> bool:
    return candidate.startswith(os.path.basename(path) + ".tmp-")


def write_atomically(path: str, chunks: Iterable[bytes]) -> int:
    """Replace ``path`` with ``chunks``, durably; return the number of bytes written.

    Temp file in the same directory, write, fsync, rename over ``path``, fsync the
    directory. On any failure ``path`` is left exactly as it was and the temp file
    is removed; the error propagates.
    """
    partial = temp_name(path)
    fd = disk.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    size = 0
    try:
        try:
            for chunk in chunks:
                write_all(fd, chunk, size)
                size += len(chunk)
            disk.sync(fd)
        finally:
            disk.close(fd)
        disk.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    disk.sync_dir(os.path.dirname(path) or ".")  # a bare file name is in the working directory
    return size
