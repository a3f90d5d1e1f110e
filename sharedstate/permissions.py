"""Owner-only directories and files, and the key file.

The socket, the key and the lock file decide who may talk to the server, so we refuse
to use any of them when another user could read or replace them (in the spirit of ssh's
StrictModes), and we never loosen or "fix" modes on a user's files behind their back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

from .address import Address, runtime_dir
from .errors import ConfigError, InsecurePermissions

KEY_BYTES = 32  # of entropy; written as 64 hex characters
MIN_KEY_BYTES = 16


def ensure_private_dir(path: str) -> None:
    """Create ``path`` owner-only if missing; refuse it if others can enter or change it.

    Used for the per-user runtime directory, which must be ours alone.
    """
    with contextlib.suppress(FileExistsError):
        os.makedirs(path, mode=0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise InsecurePermissions(
            f"{path} should be a directory but is not; move it away so sharedstate can "
            "create its private directory there",
            path=path,
        )
    if info.st_uid != os.getuid():
        raise InsecurePermissions(
            f"directory {path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); "
            "another user may be trying to intercept your state. Remove it, or set "
            "SHAREDSTATE_ADDRESS to a socket in a directory of yours",
            path=path,
        )
    if info.st_mode & 0o077:
        raise InsecurePermissions(
            f"directory {path} is open to other users (mode {_mode(info)}); "
            f"run: chmod 700 {path}",
            path=path,
        )


def ensure_safe_dir(path: str) -> None:
    """Check a directory we put files in (a configured socket's, the snapshot's).

    It is created owner-only if missing. Others may be allowed to enter it (our files
    in it are owner-only) but not to replace files in it: it must not be writable by
    others unless it has the sticky bit, like ``/tmp``; and it must belong to us or root.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)  # many workers may race to create it
    _check_safe_dir(path, os.stat(path))


def _check_safe_dir(path: str, info: os.stat_result) -> None:
    writable_by_others = info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX
    if info.st_uid not in (os.getuid(), 0) or writable_by_others:
        raise InsecurePermissions(
            f"directory {path} (mode {_mode(info)}, uid {info.st_uid}) lets other users "
            "replace the files sharedstate keeps there; use a directory that only you "
            "can write to",
            path=path,
        )


def check_private_file(path: str, info: os.stat_result, what: str) -> None:
    """Refuse a file that other users can access, or that belongs to someone else."""
    if info.st_uid not in (os.getuid(), 0):
        raise InsecurePermissions(
            f"{what} {path} belongs to uid {info.st_uid}, not to you; refusing to use it",
            path=path,
        )
    if info.st_mode & 0o077:
        raise InsecurePermissions(
            f"{what} {path} is accessible by other users (mode {_mode(info)}); "
            f"run: chmod 600 {path}",
            path=path,
        )


def check_not_writable_by_others(path: str, what: str) -> None:
    """Refuse a file others could have written: loading a pickle from it would run their code."""
    info = os.stat(path)
    if info.st_uid not in (os.getuid(), 0) or info.st_mode & 0o022:
        raise InsecurePermissions(
            f"{what} {path} (mode {_mode(info)}, uid {info.st_uid}) could have been written "
            "by another user, and loading it could run their code; refusing it. If you "
            f"trust its content, run: chmod go-w {path} (and chown it to yourself)",
            path=path,
        )


def open_private_file(path: str, what: str, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    """Open (creating owner-only if needed) one of our companion files; return the fd."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _symbolic_link(path, what, "Remove it") from None
        raise
    try:
        check_private_file(path, os.fstat(fd), what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _symbolic_link(path: str, what: str, advice: str) -> InsecurePermissions:
    return InsecurePermissions(
        f"{what} {path} is a symbolic link; refusing to follow it (someone could point it "
        f"at another file of yours). {advice}",
        path=path,
    )


def read_key_file(path: str) -> bytes:
    """Read an authentication key from an owner-only file (surrounding whitespace ignored).

    The file itself must be ours: a symbolic link or a second hard link placed by
    someone else would make us use any private file of ours, whose content they may
    know, as the key.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(
            f"key file {path} does not exist; check SHAREDSTATE_AUTHKEY_FILE", path=path
        ) from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _symbolic_link(path, "key file", "Use the real file's path") from None
        raise ConfigError(f"key file {path} can't be read ({error.strerror})", path=path) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"key file {path} is not a regular file", path=path)
        check_private_file(path, info, "key file")
        if info.st_nlink > 1:
            raise InsecurePermissions(
                f"key file {path} has {info.st_nlink} hard links; refusing it (someone could "
                "have linked another file of yours there). Copy the key into a file of its own",
                path=path,
            )
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as file:
        key = file.read().strip()
    if not key:
        raise ConfigError(f"key file {path} is empty; put a long random key in it", path=path)
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"key file {path} holds {len(key)} bytes; put a key of at least {MIN_KEY_BYTES} "
            "random bytes in it, e.g. the output of: "
            "python -c 'import secrets; print(secrets.token_hex(32))'",
            path=path,
        )
    return key


def load_or_create_key(path: str) -> bytes:
    """Return the key stored at ``path``, creating a random one there first if needed.

    The file appears atomically (written aside, then hard-linked into place), so a
    client never reads half a key, and an existing key is never replaced.
    """
    if os.path.lexists(path):
        return read_key_file(path)
    key = secrets.token_hex(KEY_BYTES).encode()
    partial = f"{path}.{os.getpid()}.tmp"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(key + b"\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(partial, path)
        except FileExistsError:
            return read_key_file(path)
    finally:
        os.unlink(partial)
    return key


def check_files_dir(address: Address) -> None:
    """Before a client trusts anything in the directory of ``address``'s files: the
    checks the server makes when it creates it. A missing directory is fine (nothing
    listens there), a directory another user made or can change is refused."""
    path = address.files_dir
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    if path == runtime_dir():
        ensure_private_dir(path)
    else:
        _check_safe_dir(path, info)


def _mode(info: os.stat_result) -> str:
    return oct(stat.S_IMODE(info.st_mode)).replace("0o", "0")


def ensure_files_dir(address: Address) -> None:
    """Create and check the directory holding the socket, key, lock and log of ``address``."""
    if address.files_dir == runtime_dir():
        ensure_private_dir(address.files_dir)
    else:
        ensure_safe_dir(address.files_dir)
