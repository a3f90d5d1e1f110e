"""Socket-level helpers: kernel timeouts, and who is at the other end.

``multiprocessing.connection.Connection`` reads with plain ``os.read`` on a blocking
file descriptor, so a Python-level socket timeout would not apply. Kernel timeouts
(``SO_RCVTIMEO``) do: a read that waits too long fails with ``EAGAIN``. Clients use them
to bound the handshake and every call, so a server that stops answering can't hang a
worker.

Who is at the other end comes from the kernel, never from what the peer says: its
credentials on a Unix socket, and on Linux the owner of a loopback TCP socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection


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


def connect(sock: socket.socket, target: str | tuple[str, int], timeout: float) -> None:
    """Connect ``sock`` within ``timeout`` seconds; it is left blocking.

    A Unix socket whose listen backlog is full refuses a non-blocking connect at once
    (EAGAIN) instead of waiting like TCP: a server busy with a flood of new
    connections is not a missing server, so keep trying until the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            sock.connect(target)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{target} did not accept the connection in time") from None
            time.sleep(0.005)
    sock.settimeout(None)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """``(pid, uid, gid)`` of the process at the other end of a Unix socket, from the
    kernel; None for other sockets, or where the platform doesn't say."""
    if not hasattr(socket, "SO_PEERCRED") or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def loopback_tcp_owner(sock: socket.socket) -> int | None:
    """The uid owning the far end of a TCP connection on this machine, or None.

    Linux lists every TCP socket of the network namespace in ``/proc/net/tcp`` with
    its owner; the server's end of our connection is the line whose local address is
    our peer and whose remote address is us. (An accepted socket, or one still waiting
    to be accepted, belongs to whoever owns the listening one.) The table is read in
    pieces while connections come and go, so a line can be missed: look again a few
    times. None where there is no such table or no such line.
    """
    try:
        ours, theirs = sock.getsockname(), sock.getpeername()
    except OSError:
        return None
    wanted = (_proc_address(theirs), _proc_address(ours))
    for _ in range(_TABLE_READS):
        try:
            table = _read_whole("/proc/net/tcp")
        except OSError:
            return None
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 7 and (fields[1], fields[2]) == wanted:
                # Only a live socket's owner counts: one its owner closed already is
                # listed as root's (and the connection will read as closed).
                return int(fields[7]) if fields[3] in _OPEN_STATES else None
    return None


_TABLE_READS = 5
_OPEN_STATES = ("01", "03")  # ESTABLISHED, SYN_RECV (not yet accepted)


def _read_whole(path: str) -> str:
    # Large reads: the kernel fills each one in a single walk of the table.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")


def _proc_address(address: tuple[str, int]) -> str:
    # /proc/net/tcp prints the IPv4 address as a number in host byte order, then the port.
    (number,) = struct.unpack("=I", socket.inet_aton(address[0]))
    return f"{number:08X}:{address[1]:04X}"
