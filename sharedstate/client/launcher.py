"""Connect to the server, or start it: exactly once, however many workers race.

The server lock (:mod:`sharedstate.pidlock`) decides who starts it. A worker that finds
nothing listening tries to take the lock:

- it gets it: no server is alive, so it starts one in the background
  (``sharedstate serve --detach``), handing it the locked descriptor, and connects once
  the server reports ready;
- someone holds it: a server is running or being started by another worker, so it
  retries connecting until the server answers or ``timeout`` runs out.

The started server is not a child of the worker (it detaches into its own session), so
it outlives the worker that happened to start it, and multiprocessing's child
bookkeeping in that worker never sees it.
"""

from __future__ import annotations

import os
import site
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from ..config import Settings
from ..errors import (
    AuthenticationFailed,
    ConfigError,
    PersistenceError,
    ServerNotRunning,
    ServerStartError,
    Timeout,
)
from ..permissions import check_files_dir, ensure_files_dir
from ..pidlock import ServerLock, is_held, is_running, read_pid
from ..protocol import ACCEPT_CONNECTION, SESSION_ID_BYTES
from .transport import Hello, Link, handshake, server_request

RETRY_SECONDS = 0.02


def connect_or_start(
    settings: Settings, *, start: bool, timeout: float, hello: Hello | None = None
) -> Link:
    """A connection to the server at ``settings.address``, starting it if allowed."""
    hello = hello or Hello(f"client-{os.getpid()}", os.urandom(SESSION_ID_BYTES), resume=False)
    link = try_connect(settings, timeout, hello)
    if link is not None:
        return link
    if not start:
        raise not_running(settings)
    ensure_server(settings, timeout)
    link = try_connect(settings, timeout, hello)
    if link is None:
        raise not_accepting(settings)
    return link


def not_running(settings: Settings) -> ServerNotRunning:
    """The error of a client told not to start the server, when none is running."""
    return ServerNotRunning(
        f"no sharedstate server is running at {settings.address}; start one with "
        "`sharedstate serve`, or call get_shared_state(start=True)",
        address=str(settings.address),
    )


def not_accepting(settings: Settings) -> ServerStartError:
    """The error when a server was started (or found starting) but refuses connections."""
    return ServerStartError(
        f"a server was started at {settings.address} but does not accept connections; "
        f"see its log {settings.log_file or settings.address.log_path}",
        address=str(settings.address),
    )


def ensure_server(settings: Settings, timeout: float) -> None:
    """Start the server, or wait for the one another worker is starting, until it listens.

    Blocks (for the asyncio client, in a thread). Raises :class:`Timeout` if no server
    listens within ``timeout``, or :class:`ServerStartError` if ours failed to start.
    """
    address = settings.address
    deadline = time.monotonic() + timeout
    ensure_files_dir(address)
    while True:
        lock = ServerLock.try_acquire(address.lock_path)
        if lock is not None:
            try:
                spawn_server(settings, lock, max(deadline - time.monotonic(), 1.0))
            finally:
                lock.release()  # the server holds its own copy now
            return
        if _listening(settings):
            return
        if time.monotonic() >= deadline:
            raise Timeout(
                f"waited {timeout:g} s for the server at {address} (pid "
                f"{read_pid(address.lock_path) or 'unknown'}) to accept connections; see "
                f"`sharedstate status` and the log {settings.log_file or address.log_path}",
                address=str(address),
            )
        time.sleep(RETRY_SECONDS)


def try_connect(settings: Settings, timeout: float, hello: Hello) -> Link | None:
    """A connection ready for store calls, or ``None`` if nothing listens at the address."""
    # A listening server that doesn't answer is as stuck as one that doesn't answer a call.
    timeout = min(timeout, settings.call_timeout or timeout)
    found = try_handshake(settings, timeout)
    if found is None:
        return None
    conn, instance = found
    welcome = server_request(
        conn,
        settings.address,
        ACCEPT_CONNECTION,
        (hello.name, hello.session, hello.resume),
        timeout,
    )
    return Link(conn, instance, bool(welcome.get("session_known", False)))


def call_server_function(
    settings: Settings, function: str, timeout: float, args: tuple[Any, ...] = ()
) -> Any:
    """Call a server function (``server_info``, ``shutdown``...) of the running server."""
    refuse_redis(settings, function)
    found = try_handshake(settings, timeout)
    if found is None:
        raise ServerNotRunning(
            f"no sharedstate server is running at {settings.address}",
            address=str(settings.address),
        )
    conn, _ = found
    try:
        return server_request(conn, settings.address, function, args, timeout)
    finally:
        conn.close()


def refuse_redis(settings: Settings, function: str) -> None:
    """What an operator asks of sharedstate's own server makes no sense for Redis."""
    if settings.address.is_redis:
        raise ConfigError(
            f"{settings.address} is a Redis server, not a sharedstate server: {function} is "
            "for sharedstate's own server; manage Redis with its own tools (redis-cli)",
            address=str(settings.address),
        )


def stop_server(settings: Settings, timeout: float) -> int | None:
    """Ask the running server to stop and wait until it has exited; return its pid.

    Returns after its final snapshot, once the server lock is free, so a new server
    may start right away. Raises :class:`PersistenceError` if the final snapshot failed
    (the server stopped all the same; its journal still holds every write).
    """
    refuse_redis(settings, "shutdown")
    lock_path = settings.address.lock_path
    pid = read_pid(lock_path)
    outcome = call_server_function(settings, "shutdown", timeout)
    deadline = time.monotonic() + timeout
    # The server frees its lock just before its process ends: wait for both, so that
    # "stopped" means the process is gone.
    while is_held(lock_path) or (pid is not None and is_running(pid)):
        if time.monotonic() > deadline:
            raise Timeout(
                f"the server at {settings.address} (pid {pid}) did not exit within {timeout:g} s",
                address=str(settings.address),
            )
        time.sleep(0.05)
    error = (outcome or {}).get("final_snapshot_error")
    if error:
        raise PersistenceError(
            f"the server at {settings.address} (pid {pid}) stopped, but {error}",
            address=str(settings.address),
        )
    return pid


def try_handshake(settings: Settings, timeout: float) -> tuple[Connection, bytes] | None:
    """An authenticated connection and the server's instance id, or ``None`` if nothing
    listens at the address."""
    key = key_to_connect(settings)
    if key is None:
        return None
    try:
        return handshake(settings.address, key, timeout, settings.trusted_uids)
    except (FileNotFoundError, ConnectionRefusedError):
        return None


def key_to_connect(settings: Settings) -> bytes | None:
    """The key to prove ourselves with, or None if there is none because nothing listens.

    The files' directory is checked first, before a key file or socket found there is
    trusted.
    """
    address = settings.address
    check_files_dir(address)
    key = settings.load_key()
    if key is not None:
        return key
    if not _listening(settings):
        return None
    # A server writes its key file before it listens: if we looked for the key just
    # before a starting server wrote it, it is there now.
    key = settings.load_key()
    if key is None:
        raise AuthenticationFailed(
            f"something listens at {address} but there is no key file "
            f"{address.key_path}: either another program uses that address (choose "
            "another), or a sharedstate server there has a key of its own (set "
            "SHAREDSTATE_AUTHKEY_FILE, or SHAREDSTATE_AUTHKEY)",
            address=str(address),
        )
    return key


def _listening(settings: Settings) -> bool:
    address = settings.address
    family = socket.AF_UNIX if address.is_unix else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(address.target)
        except BlockingIOError:
            return True  # a Unix socket's backlog is full: something listens, and is busy
        except OSError:
            return False
    return True


def spawn_server(settings: Settings, lock: ServerLock, timeout: float) -> None:
    """Run ``sharedstate serve --detach`` and wait until it reports ready (or fails)."""
    argv = [
        _python_executable(),
        "-m", "sharedstate", "serve", "--detach",
        "--address", str(settings.address),
        "--lock-fd", str(lock.fd),
    ]  # fmt: skip
    env = dict(os.environ)
    if settings.authkey is not None:
        env["SHAREDSTATE_AUTHKEY"] = os.fsdecode(settings.authkey)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if package_root not in _site_dirs():  # running from a source tree
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    try:
        result = subprocess.run(
            argv,
            env=env,
            pass_fds=(lock.fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise Timeout(
            f"the server at {settings.address} did not start within {timeout:g} s; see its "
            f"log {settings.log_file or settings.address.log_path}",
            address=str(settings.address),
        ) from None
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        reason = lines[-1].removeprefix("error: ") if lines else f"exit status {result.returncode}"
        raise ServerStartError(
            f"could not start a server at {settings.address}: {reason}",
            address=str(settings.address),
        )


def _python_executable() -> str:
    executable = sys.executable
    if not executable or "uwsgi" in os.path.basename(executable).lower():
        raise ServerStartError(
            f"can't start a server from this process: sys.executable is {executable!r}, "
            "not a Python interpreter (uWSGI?). Run `sharedstate serve` yourself (for "
            "uWSGI, as an attach-daemon) and the workers will connect to it"
        )
    return executable


def _site_dirs() -> set[str]:
    dirs = set(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.add(site.getusersitepackages())
    return dirs
