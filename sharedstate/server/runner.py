"""A server process from start to stop: checks, lock, key, socket, signals, clean-up."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import signal
import socket
import stat
import sys
from types import FrameType

from .. import __version__
from ..address import Address
from ..config import Settings
from ..errors import ConfigError, PersistenceError, ServerStartError, SharedStateError
from ..permissions import ensure_files_dir
from ..persistence.coordinator import Persistence
from ..pidlock import ServerLock
from .daemon import Report, detach
from .loop import MAX_GREETING
from .state_server import StateServer
from .store import Store

logger = logging.getLogger("sharedstate")

BACKLOG = 128
START_TIMEOUT = 30.0  # how long `serve --detach` waits for the server to report ready
LOCK_WAIT = 2.0  # a client may be probing the lock for a moment; don't give up at once


def run_server(
    settings: Settings,
    *,
    background: bool = False,
    lock_fd: int | None = None,
    salvage: bool = False,
) -> None:
    """Serve ``settings.address`` until SIGTERM, SIGINT, SIGHUP or ``sharedstate stop``.

    With ``background=True`` the process detaches first (see :mod:`sharedstate.server.daemon`).
    ``lock_fd`` is the server lock handed down by a client that starts us. ``salvage``
    starts from the readable part of damaged persistence files.
    """
    address = settings.address
    check_exposure(settings)
    os.umask(0o077)  # everything the server creates is owner-only
    ensure_files_dir(address)
    log_path = settings.log_file or address.log_path
    # A server handed a lock was started by a client: our parent, until we detach.
    started_by = os.getppid() if lock_fd is not None else None
    memory_only = settings.snapshot is None
    note = "; no --snapshot: its state lives in memory only" if memory_only else ""
    report: Report | None = detach(log_path, START_TIMEOUT, note) if background else None
    _configure_logging(settings, to_file=None if background else settings.log_file)
    try:
        lock, server, listener = _start(settings, lock_fd, salvage, started_by)
    except (SharedStateError, OSError) as error:
        logger.error("could not start: %s", error)
        if report:
            report(str(error))
        raise
    _stop_on_signals(server)
    if settings.owner_pid is not None:
        server.watch_owner(settings.owner_pid, settings.when_owner_dies)
    key_origin = (
        "the configured key" if settings.has_explicit_key else f"key file {address.key_path}"
    )
    logger.info(
        "sharedstate %s serving at %s (pid %d, %s)", __version__, address, os.getpid(), key_origin
    )
    if memory_only:
        logger.info("no snapshot: the state lives in memory only (--snapshot FILE keeps it)")
    if report:
        report(None)
    outcome: list[str | None] = []

    def final_snapshot() -> str | None:
        # Before another server may start here, and before `stop` hears how it went.
        if server.persistence is not None and not outcome:
            outcome.append(server.persistence.close())
        return outcome[0] if outcome else None

    try:
        server.serve_until_stopped(final_snapshot)
    finally:
        final_snapshot()  # if serving ended some other way
        listener.close()
        lock.release()
        logger.info("stopped; %s removed", address if address.is_unix else "listener")
    if outcome and outcome[0] is not None:
        raise PersistenceError(outcome[0])  # so `serve` exits 1, saying why


def check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond this machine unless the operator asked for it with a key."""
    address = settings.address
    if address.is_redis:
        raise ConfigError(
            f"{address} is a Redis server, which holds the state itself: there is no "
            "sharedstate server to run. Point the workers at it (SHAREDSTATE_ADDRESS) "
            "and run Redis instead"
        )
    if address.is_loopback:
        return
    if not settings.allow_remote:
        raise ConfigError(
            f"{address} can be reached from other machines; to allow that, pass "
            "--allow-remote (SHAREDSTATE_ALLOW_REMOTE=1) and an explicit key, or listen "
            "on 127.0.0.1 or a Unix socket"
        )
    if not settings.has_explicit_key:
        raise ConfigError(
            f"{address} can be reached from other machines, so it needs a key you chose: "
            "set SHAREDSTATE_AUTHKEY_FILE (or SHAREDSTATE_AUTHKEY) on the server and clients"
        )


def _start(
    settings: Settings, lock_fd: int | None, salvage: bool, started_by: int | None
) -> tuple[ServerLock, StateServer, _Listener]:
    address = settings.address
    if lock_fd is not None:
        lock = ServerLock.adopt(address.lock_path, lock_fd)
    else:
        lock = ServerLock.acquire(address.lock_path, LOCK_WAIT)
    persistence = None
    try:
        lock.write_pid()
        key = settings.load_key(create=True)
        assert key is not None
        store = Store(settings.max_memory, settings.eviction)
        if settings.snapshot is not None:
            persistence = Persistence(store, settings)
            persistence.recover(salvage=salvage)
        listener = _listen(address)
    except BaseException:
        if persistence is not None:
            persistence.abandon()
        lock.release()
        raise
    if not address.is_loopback:
        logger.warning("listening on %s: traffic is authenticated but not encrypted", address)
    if persistence is not None:
        persistence.start()
    _make_room_for(settings.max_clients)
    server = StateServer(
        store, listener.sock, key, str(address), persistence, started_by, settings.max_clients
    )
    return lock, server, listener


def _make_room_for(max_clients: int) -> None:
    """Raise the soft open-files limit so ``max_clients`` connections fit, if allowed."""
    # A descriptor per client and per handshake, plus files, logs and the event loop.
    needed = max_clients + MAX_GREETING + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        logger.warning(
            "the open-files limit (%d) leaves room for about %d clients, fewer than "
            "max_clients=%d; raise it (ulimit -n, LimitNOFILE=) or lower "
            "SHAREDSTATE_MAX_CLIENTS",
            target,
            target - MAX_GREETING - 64,
            max_clients,
        )


class _Listener:
    """The listening socket; closing it removes its socket file (if still ours)."""

    def __init__(self, sock: socket.socket, path: str | None) -> None:
        self.sock = sock
        self.path = path
        self._inode = os.lstat(path).st_ino if path is not None else None

    def close(self) -> None:
        self.sock.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                if os.lstat(self.path).st_ino == self._inode:
                    os.unlink(self.path)


def _listen(address: Address) -> _Listener:
    if address.path is not None:
        _remove_stale_socket(address.path)
    family = socket.AF_UNIX if address.is_unix else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address.target)
        if address.path is not None:
            os.chmod(address.path, 0o600)
        sock.listen(BACKLOG)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise ServerStartError(
                f"{address} is already in use by another program; choose another address",
                address=str(address),
            ) from None
        raise ServerStartError(
            f"can't listen at {address}: {error}", address=str(address)
        ) from None
    return _Listener(sock, address.path)


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse anything else at ``path``.

    Called with the server lock held, so no sharedstate server is alive here.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ServerStartError(
            f"{path} exists and is not a socket; refusing to replace it. Move it away, or "
            "choose another address",
            address=path,
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except BlockingIOError:
        pass  # its backlog is full: something listens there, and is busy
    except OSError:
        os.unlink(path)
        logger.info("removed stale socket %s left by a server that is gone", path)
        return
    finally:
        probe.close()
    raise ServerStartError(
        f"another program is listening on {path}; stop it or choose another address",
        address=path,
    )


def _stop_on_signals(server: StateServer) -> None:
    def stop(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s; stopping", signal.Signals(signum).name)
        server.stop()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)


def _configure_logging(settings: Settings, to_file: str | None) -> None:
    handler: logging.Handler = (
        logging.FileHandler(to_file) if to_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(
        logging.Formatter("%(asctime)s sharedstate[%(process)d] %(levelname)s %(message)s")
    )
    root = logging.getLogger("sharedstate")
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    root.propagate = False
