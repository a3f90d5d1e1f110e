"""Socket-level helpers shared by client and server.

``multiprocessing.connection.Connection`` reads with plain ``os.read`` on a blocking
file descriptor, so a Python-level socket timeout would not apply. Kernel timeouts
(``SO_RCVTIMEO``) do: a read that waits too long fails with ``EAGAIN``. We use them to
bound the authentication handshake on both sides, so a peer that connects and then
says nothing can't hold a thread forever.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator
from multiprocessing.connection import Connection


def _socket_of(conn: Connection) -> socket.socket:
    # A duplicate descriptor: options set through it apply to the shared socket, and
    # closing it leaves the connection open. The family is read from the descriptor.
    return socket.socket(fileno=os.dup(conn.fileno()))


def set_timeouts(conn: Connection, seconds: float | None) -> None:
    """Make reads and writes on ``conn`` fail with ``BlockingIOError`` after ``seconds``.

    ``None`` (or 0) removes the timeout.
    """
    seconds = seconds or 0.0
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock = socket.socket(fileno=conn.fileno())  # no dup: a wrapper we detach, not close
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    finally:
        sock.detach()


@contextlib.contextmanager
def io_timeout(conn: Connection, seconds: float) -> Iterator[None]:
    """Make reads and writes on ``conn`` fail with ``OSError`` after ``seconds``."""
    set_timeouts(conn, max(seconds, 0.001))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            set_timeouts(conn, None)


def describe_peer(conn: Connection) -> str:
    """Who is at the other end: ``pid 1234`` for Unix sockets, ``host:port`` for TCP."""
    pid = peer_pid(conn)
    if pid is not None:
        return f"pid {pid}"
    try:
        with _socket_of(conn) as sock:
            peer = sock.getpeername()
    except OSError:
        return "an unknown peer"
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "a local process"


def peer_pid(conn: Connection) -> int | None:
    """The process id of a Unix-socket peer, when the platform tells it."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        with _socket_of(conn) as sock:
            if sock.family != socket.AF_UNIX:
                return None
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    except OSError:
        return None
    pid = int(struct.unpack("3i", raw)[0])
    return pid or None
