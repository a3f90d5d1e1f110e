"""Connections from a worker process to the server.

One connection per thread: each thread's calls (and the lock and edits it takes) are
its own, and threads never wait on each other's round trips. Connections are re-made:

- after ``fork()``: the child must never write to the parent's socket (two processes
  interleaving messages on one connection corrupt both, CPython gh-101320), so a
  process only uses connections it opened itself (diskcache does the same with its pid
  check);
- after the server restarted: a connection the server closed is noticed before use
  (it reads as end-of-file) and replaced, so the call goes through;
- after a call was cut off mid-flight: the call raises :class:`ConnectionLost`, since it
  may or may not have happened, and the next call connects afresh.
"""

from __future__ import annotations

import os
import pickle
import select
import socket
import threading
import weakref
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import (
    Connection,
    answer_challenge,
    deliver_challenge,
)
from typing import Any

from .address import Address
from .codec import PROTOCOL, Where, encode, where_text
from .config import DEFAULT_CALL_TIMEOUT, DEFAULT_MAX_VALUE_BYTES, MAX_REQUEST_BYTES
from .errors import (
    AuthenticationFailed,
    ConnectionLost,
    ServerError,
    Timeout,
    ValueNotPicklable,
    ValueTooLarge,
)
from .manager import STORE_IDENT
from .sockets import io_timeout, set_timeouts


def handshake(address: Address, authkey: bytes, timeout: float) -> Connection:
    """Connect and authenticate, BaseManager-style; give up after ``timeout`` seconds.

    Raises ``FileNotFoundError`` or ``ConnectionRefusedError`` when nothing listens.
    """
    family = socket.AF_UNIX if address.is_unix else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address.target)
        sock.settimeout(None)  # Connection needs a blocking socket
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    conn = Connection(sock.detach())
    try:
        with io_timeout(conn, timeout):
            answer_challenge(conn, authkey)
            deliver_challenge(conn, authkey)
    except AuthenticationError:
        conn.close()
        raise AuthenticationFailed(
            f"the server at {address} and this process use different keys; give both the "
            "same SHAREDSTATE_AUTHKEY_FILE (or SHAREDSTATE_AUTHKEY), or let clients read "
            f"the server's key file {address.key_path}",
            address=str(address),
        ) from None
    except BaseException as error:
        conn.close()
        raise _handshake_error(error, address, timeout) from None
    return conn


def server_request(
    conn: Connection, address: Address, function: str, args: tuple[Any, ...], timeout: float
) -> Any:
    """Call a server function (``accept_connection``, ``shutdown``...) on a new connection."""
    try:
        with io_timeout(conn, timeout):
            conn.send_bytes(_dumps((None, function, args, {})))
            kind, result = pickle.loads(conn.recv_bytes())
    except BaseException as error:
        conn.close()
        raise _handshake_error(error, address, timeout) from None
    if kind == "#ERROR":
        conn.close()
        raise result
    if kind != "#RETURN":
        conn.close()
        raise ServerError(f"the server at {address} refused {function}: {result}")
    return result


def _handshake_error(error: BaseException, address: Address, timeout: float) -> BaseException:
    if isinstance(error, BlockingIOError):
        return Timeout(
            f"the server at {address} accepted the connection but did not answer within "
            f"{timeout:g} s; is it stopped or overloaded?",
            address=str(address),
        )
    if isinstance(error, (AssertionError, ValueError)):
        # multiprocessing's handshake asserts on what it reads: not a sharedstate server.
        return ConnectionLost(
            f"the program listening at {address} does not speak sharedstate's handshake; "
            "is another program using that address?",
            address=str(address),
        )
    if isinstance(error, (EOFError, OSError)):
        return ConnectionLost(
            f"the server at {address} closed the connection while we were connecting "
            f"({error!r})",
            address=str(address),
        )
    return error


class _ThreadConnection(threading.local):
    conn: Connection | None = None
    poller: select.poll | None = None


class Transport:
    """Sends store calls to the server over per-thread, per-process connections.

    ``call_timeout`` bounds the wait for each reply (None: forever), so a stopped or
    wedged server gives :class:`Timeout` instead of hanging every worker.
    ``max_value_bytes`` is the largest value :meth:`encode` lets through.
    """

    def __init__(
        self,
        connect: Callable[[], Connection],
        address: Address,
        *,
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        self._connect = connect
        self.address = address
        self.call_timeout = call_timeout
        self.max_value_bytes = max_value_bytes
        self._pid = os.getpid()
        self._local = _ThreadConnection()
        self._opened: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._opened_lock = threading.Lock()

    def encode(self, value: Any, where: Where) -> bytes:
        """Pickle a value to send; refuse it if it is larger than ``max_value_bytes``."""
        data = encode(value, where)
        if len(data) > self.max_value_bytes:
            place = where_text(where)
            raise ValueTooLarge(
                f"the value for {place} is {len(data):,} bytes pickled, over the limit of "
                f"{self.max_value_bytes:,} (SHAREDSTATE_MAX_VALUE_BYTES); it was not sent. "
                "Store it in smaller pieces, or raise the limit",
                where=place,
            )
        return data

    def call(self, method: str, *args: Any, waits: float | None = 0.0) -> Any:
        """Run ``Store.<method>(client, *args)`` on the server and return its result.

        ``waits``: seconds the server may take on purpose (a lock or edit timeout) on
        top of ``call_timeout``; None if it may wait forever.
        """
        try:
            request = _dumps((STORE_IDENT, method, args, {}))
        except Exception as error:
            raise ValueNotPicklable(
                f"the arguments of {method}() can't be pickled: {error}"
            ) from error
        if len(request) > MAX_REQUEST_BYTES:
            raise ValueTooLarge(
                f"{method}() would send {len(request):,} bytes; one call carries at most "
                f"{MAX_REQUEST_BYTES:,}. Send fewer values per call"
            )
        conn, reused = self._connection()
        try:
            conn.send_bytes(request)
        except BlockingIOError:
            self._drop()
            raise self._timeout(method) from None
        except OSError:
            self._drop()
            if not reused:
                raise ConnectionLost(f"could not send to the server at {self.address}") from None
            conn, _ = self._connection()  # it died while idle; nothing was delivered
            self._send_or_drop(conn, request)
        except BaseException:
            self._drop()
            raise
        if waits != 0.0 and self.call_timeout is not None:
            self._await_reply(method, waits, self.call_timeout)
        try:
            kind, result = pickle.loads(conn.recv_bytes())
        except BlockingIOError:
            self._drop()  # the reply may still come, out of turn: never read this socket again
            raise self._timeout(method) from None
        except (EOFError, OSError) as error:
            self._drop()
            raise ConnectionLost(
                f"the connection to the server at {self.address} broke during {method}(); "
                "it may or may not have taken effect. The next call reconnects.",
                address=str(self.address),
            ) from error
        except BaseException:
            self._drop()  # e.g. KeyboardInterrupt: the reply would arrive out of turn
            raise
        if kind == "#RETURN":
            return result
        if kind == "#ERROR":
            raise result
        raise ServerError(f"the server at {self.address} failed during {method}():\n{result}")

    def _await_reply(self, method: str, waits: float | None, call_timeout: float) -> None:
        """Wait for the reply to a call the server may hold ``waits`` seconds on purpose.

        The socket's own timeout (``call_timeout``) would cut it short, so wait for the
        reply to start here: ``call_timeout`` on top of ``waits``, or forever if None.
        """
        poller = self._local.poller
        assert poller is not None  # opened with the connection
        limit = -1 if waits is None else (call_timeout + waits) * 1000
        try:
            ready = poller.poll(limit)
        except BaseException:
            self._drop()  # e.g. KeyboardInterrupt: the reply would arrive out of turn
            raise
        if not ready:
            self._drop()
            raise self._timeout(method)

    def _timeout(self, method: str) -> Timeout:
        return Timeout(
            f"the server at {self.address} did not answer {method}() within "
            f"{self.call_timeout:g} s (SHAREDSTATE_CALL_TIMEOUT); it may be stopped, "
            "wedged or overloaded. The call may or may not have taken effect; the next "
            "call reconnects",
            address=str(self.address),
        )

    def connect(self) -> None:
        """Open this thread's connection now (starting the server if allowed)."""
        self._connection()

    def close(self) -> None:
        """Close every connection this process opened; later calls reconnect."""
        with self._opened_lock:
            opened = list(self._opened)
            self._opened = weakref.WeakSet()
        for conn in opened:
            conn.close()
        self._local = _ThreadConnection()

    def _connection(self) -> tuple[Connection, bool]:
        """This thread's usable connection, and whether it was already open."""
        if self._pid != os.getpid():
            self._forget_parent_connections()
        local = self._local
        if local.conn is not None:
            assert local.poller is not None
            if not local.poller.poll(0):
                return local.conn, True
            self._drop()  # readable while idle: the server closed it
        conn = self._connect()
        if self.call_timeout is not None:
            set_timeouts(conn, self.call_timeout)
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        local.conn, local.poller = conn, poller
        with self._opened_lock:
            self._opened.add(conn)
        return conn, False

    def _send_or_drop(self, conn: Connection, request: bytes) -> None:
        try:
            conn.send_bytes(request)
        except OSError:
            self._drop()
            raise ConnectionLost(f"could not send to the server at {self.address}") from None

    def _drop(self) -> None:
        conn = self._local.conn
        self._local.conn = self._local.poller = None
        if conn is not None:
            conn.close()

    def forget_inherited(self) -> None:
        """After ``fork()``: drop the parent's connections (never close them)."""
        if self._pid != os.getpid():
            self._forget_parent_connections()

    def _forget_parent_connections(self) -> None:
        # Never close them here: that is the parent's business. Dropping our
        # references closes only this process's copies of the descriptors.
        self._pid = os.getpid()
        self._local = _ThreadConnection()
        self._opened = weakref.WeakSet()


def _dumps(message: Any) -> bytes:
    return pickle.dumps(message, protocol=PROTOCOL)
