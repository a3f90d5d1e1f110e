"""Connections from a worker process to the server.

One connection per thread: each thread's calls (and the lock and edits it takes) are
its own, and threads never wait on each other's round trips. Connections are re-made:

- after ``fork()``: the child closes its copies of the parent's connections at once
  (``os.register_at_fork``). It never writes to them (two processes interleaving
  messages on one connection corrupt both, CPython gh-101320), and it must not keep them
  open either: while a child held a copy, a SIGKILLed parent's connection stayed up, and
  so did the lock it held. The child opens its own connections on first use;
- after the server restarted: a connection the server closed is noticed before use
  (it reads as end-of-file) and replaced, so the call goes through;
- after a call was cut off mid-flight: a read is simply sent again; a write is sent
  again with the number it had in this thread's *session*, and the server applies it at
  most once (:mod:`sharedstate.server.sessions`). If the new connection reached another run of
  the server, or one that forgot the session, the call raises :class:`ConnectionLost`
  (it may or may not have taken effect).

A thread that held the lock or an edit when its connection dropped lost it: the server
freed it, and another process may hold it now. Such a thread never reconnects silently:
its calls raise :class:`LockLost` until it leaves the ``with`` block (or releases).
"""

from __future__ import annotations

import os
import select
import socket
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ..address import Address
from ..codec import Where, encode_within
from ..config import DEFAULT_CALL_TIMEOUT, DEFAULT_MAX_VALUE_BYTES
from ..errors import (
    AuthenticationFailed,
    ConnectionLost,
    InsecurePermissions,
    LockLost,
    ServerError,
    Timeout,
    ValueNotPicklable,
    ValueTooLarge,
)
from ..handshake import HandshakeFailed, authenticate
from ..protocol import (
    ERROR,
    MAX_REQUEST_BYTES,
    OPERATIONS,
    READS,
    RETURN,
    SESSION_ID_BYTES,
    STORE,
    Reply,
    dump_request,
    load_reply,
)
from ..sockets import connect, io_timeout, loopback_tcp_owner, peer_credentials, set_timeouts

LOCK = "state.lock"  # what a thread holds: LOCK, or ("edit", key)
# A reset after fork only closes descriptors. A fork lock still held after this long was
# inherited held: another thread of the parent was resetting when the parent forked.
FORK_LOCK_WAIT = 5.0
# poll() takes milliseconds as a C int: wait in slices no longer than a day.
_LONGEST_POLL_MS = 86_400_000


@dataclass(frozen=True)
class Hello:
    """What a client tells the server when it connects: who it is, and its session."""

    name: str
    session: bytes
    resume: bool  # this thread had a connection before: the server may know the session


@dataclass
class Link:
    """A connection ready for store calls, and what the server said of it."""

    conn: Connection
    instance: bytes  # the server's run: a restarted server has another
    session_known: bool  # False: the server does not know the session we resumed


def handshake(
    address: Address, authkey: bytes, timeout: float, trusted_uids: frozenset[int]
) -> tuple[Connection, bytes]:
    """Connect, check who listens, and authenticate both ways; give up after ``timeout``.

    Returns the connection and the server's instance id. Raises ``FileNotFoundError`` or
    ``ConnectionRefusedError`` when nothing listens, and :class:`InsecurePermissions`
    before sending a byte when the listening process belongs to a user not in
    ``trusted_uids``.
    """
    family = socket.AF_UNIX if address.is_unix else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        connect(sock, address.target, timeout)  # left blocking, as Connection needs
        check_listener(sock, address, trusted_uids)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    conn = Connection(sock.detach())
    try:
        with io_timeout(conn, timeout):
            instance = authenticate(conn, authkey)
    except HandshakeFailed as failure:
        conn.close()
        raise refused_handshake(failure, address) from None
    except BaseException as error:
        conn.close()
        raise connecting_error(error, address, timeout) from None
    return conn, instance


def refused_handshake(failure: HandshakeFailed, address: Address) -> AuthenticationFailed:
    """What to tell the caller when the server at ``address`` failed the handshake."""
    if failure.wrong_key:
        return AuthenticationFailed(
            f"the server at {address} and this process use different keys; give both "
            "the same SHAREDSTATE_AUTHKEY_FILE (or SHAREDSTATE_AUTHKEY), or let clients "
            f"read the server's key file {address.key_path}",
            address=str(address),
        )
    return AuthenticationFailed(
        f"the program listening at {address} is not a sharedstate server holding our "
        f"key: {failure}. Nothing it sent was loaded",
        address=str(address),
    )


def check_listener(sock: socket.socket, address: Address, trusted_uids: frozenset[int]) -> None:
    """Refuse a server run by a user we don't trust, before it can send us a pickle.

    The kernel says who: the peer's credentials on a Unix socket, the owner of the
    server's end on a loopback TCP connection (Linux). A remote TCP server can't be
    checked this way; only the handshake vouches for it.
    """
    if address.is_unix:
        credentials = peer_credentials(sock)
        uid = credentials[1] if credentials is not None else None
    else:
        uid = loopback_tcp_owner(sock)
    if uid is None or uid in trusted_uids:
        return
    raise InsecurePermissions(
        f"the process listening at {address} runs as uid {uid}, not as you (uid "
        f"{os.getuid()}) or root; it may be another user posing as your server, so nothing "
        "was sent to it. If it is your server, run it as your user, or name its user in "
        "SHAREDSTATE_SERVER_USER",
        address=str(address),
        uid=uid,
    )


def server_request(
    conn: Connection, address: Address, function: str, args: tuple[Any, ...], timeout: float
) -> Any:
    """Call a server function (``accept_connection``, ``shutdown``...) on a new connection."""
    try:
        with io_timeout(conn, timeout):
            conn.send_bytes(dump_request(None, function, args))
            kind, result = load_reply(conn.recv_bytes())
    except BaseException as error:
        conn.close()
        raise connecting_error(error, address, timeout) from None
    if kind == ERROR:
        conn.close()
        raise result
    if kind != RETURN:
        conn.close()
        raise ServerError(f"the server at {address} refused {function}: {result}")
    return result


def connecting_error(error: BaseException, address: Address, timeout: float) -> BaseException:
    """What to raise for ``error`` met while connecting to ``address`` (or ``error``)."""
    if isinstance(error, (BlockingIOError, TimeoutError)):
        return Timeout(
            f"the server at {address} accepted the connection but did not answer within "
            f"{timeout:g} s; is it stopped or overloaded?",
            address=str(address),
        )
    if isinstance(error, (EOFError, OSError)):
        return ConnectionLost(
            f"the server at {address} closed the connection while we were connecting "
            f"({error!r})",
            address=str(address),
        )
    return error


def store_request(method: str, args: tuple[Any, ...], number: int) -> bytes:
    """The message for one store call, refused here if it can't be sent."""
    try:
        request = dump_request(STORE, method, args, number)
    except Exception as error:
        raise ValueNotPicklable(f"the arguments of {method}() can't be pickled: {error}") from error
    if len(request) > MAX_REQUEST_BYTES:
        raise ValueTooLarge(
            f"{method}() would send {len(request):,} bytes; one call carries at most "
            f"{MAX_REQUEST_BYTES:,}. Send fewer values per call"
        )
    return request


def outcome(kind: str, result: Any, address: Address, method: str) -> Any:
    """A store call's result, or the error it raised (on the server, or failing there)."""
    if kind == RETURN:
        return result
    if kind == ERROR:
        raise result
    raise ServerError(f"the server at {address} failed during {method}():\n{result}")


def not_answered(address: Address, method: str, call_timeout: float | None) -> Timeout:
    """The error of a call whose reply did not come within the call timeout."""
    return Timeout(
        f"the server at {address} did not answer {method}() within {call_timeout:g} s "
        "(SHAREDSTATE_CALL_TIMEOUT); it may be stopped, wedged or overloaded. The call "
        "may or may not have taken effect; the next call reconnects",
        address=str(address),
    )


def lock_lost(address: Address, what_happened: object, holds: set[Any], holder: str) -> LockLost:
    """The error of every call of a ``holder`` (thread, task) whose lock or edit was lost."""
    what = " and ".join(
        sorted(LOCK if held == LOCK else f"the edit of state[{held[1]!r}]" for held in holds)
    )
    block = "`with` block" if holder == "thread" else "`async with` block"
    return LockLost(
        f"this {holder}'s connection to the server at {address} {what_happened} while "
        f"it held {what or 'the lock'}; the server freed it, and another process may hold "
        f"it now. Leave the {block} (or call release()): until then, every call of this "
        f"{holder} raises LockLost",
        address=str(address),
    )


class _CutOff(Exception):
    """A call's connection broke after the request may have reached the server."""


class _ThreadState(threading.local):
    """One thread's connection, session and what it holds on the server."""

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.poller: select.poll | None = None
        self.instance = b""
        self.session = os.urandom(SESSION_ID_BYTES)
        self.connected_before = False
        self.session_known = True  # False: the server forgot the session we resumed
        self.last_request_number = 0  # of its writes, in its session
        self.holds: set[Any] = set()  # LOCK and ("edit", key)
        self.lost: str | None = None  # what happened to the connection it held them on


_transports: weakref.WeakSet[Transport] = weakref.WeakSet()


class Transport:
    """Sends store calls to the server over per-thread, per-process connections.

    ``call_timeout`` bounds the wait for each reply (None: forever), so a stopped or
    wedged server gives :class:`Timeout` instead of hanging every worker.
    ``max_value_bytes`` is the largest value :meth:`encode` lets through.
    """

    def __init__(
        self,
        connect: Callable[[Hello], Link],
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
        self._local = _ThreadState()
        self._opened: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._opened_lock = threading.Lock()
        self._fork_lock = threading.Lock()  # one thread resets after a fork; see _reset_if_forked
        _transports.add(self)

    def encode(self, value: Any, where: Where) -> bytes:
        """Pickle a value to send; refuse it if it is larger than ``max_value_bytes``."""
        return encode_within(value, where, self.max_value_bytes)

    def call(self, method: str, *args: Any, waits: float | None = 0.0) -> Any:
        """Run ``Store.<method>(client, *args)`` on the server and return its result.

        ``waits``: seconds the server may take on purpose (a lock or edit timeout) on
        top of ``call_timeout``; None if it may wait forever.
        """
        self._reset_if_forked()
        local = self._local
        if local.lost is not None:
            self._refuse_while_lost(local, method, args)
        number = 0  # a write's number in this thread's session; reads have none
        if OPERATIONS[method].writes:
            local.last_request_number += 1
            number = local.last_request_number
        request = store_request(method, args, number)
        try:
            kind, result = self._round_trip(local, method, request, waits)
        except _CutOff as cut_off:
            kind, result = self._resend_once(local, method, request, number, waits, cut_off)
        self._note_reservations(local, method, args, kind, result)
        return outcome(kind, result, self.address, method)

    # -- one round trip ----------------------------------------------------------------

    def _round_trip(
        self, local: _ThreadState, method: str, request: bytes, waits: float | None
    ) -> Reply:
        """Send ``request`` on this thread's connection and read the reply.

        Raises :class:`_CutOff` if the connection broke once the request may have
        reached the server, for the caller to decide whether sending it again is safe.
        """
        conn = self._send_request(local, request, method)
        return self._receive_reply(local, conn, method, waits)

    def _send_request(self, local: _ThreadState, request: bytes, method: str) -> Connection:
        """Send ``request``; return the connection it went on.

        A connection that turns out to have died while idle delivered nothing, so the
        request goes once on a new one.
        """
        conn, reused = self._connection(local)
        try:
            conn.send_bytes(request)
            return conn
        except BlockingIOError:
            self._drop(local, "did not take the request in time")
            raise self._timeout(local, method) from None
        except OSError:
            self._drop(local, "was found closed")
            if not reused:
                raise ConnectionLost(f"could not send to the server at {self.address}") from None
        except BaseException:
            self._drop(local, "was interrupted")
            raise
        conn, _ = self._connection(local)
        try:
            conn.send_bytes(request)
        except OSError:
            self._drop(local, "broke")
            raise ConnectionLost(f"could not send to the server at {self.address}") from None
        return conn

    def _receive_reply(
        self, local: _ThreadState, conn: Connection, method: str, waits: float | None
    ) -> Reply:
        """Read the reply to the request just sent on ``conn``.

        A connection whose reply did not come in time, or whose read was interrupted, is
        dropped: the reply may still come, out of turn, so nothing reads it again.
        """
        if waits != 0.0 and self.call_timeout is not None:
            self._await_reply(local, method, waits, self.call_timeout)
        try:
            return load_reply(conn.recv_bytes())
        except BlockingIOError:
            self._drop(local, f"timed out during {method}()")
            raise self._timeout(local, method) from None
        except (EOFError, OSError) as error:
            self._drop(local, f"broke during {method}()")
            raise _CutOff(repr(error)) from error
        except BaseException:
            self._drop(local, f"was interrupted during {method}()")
            raise

    def _resend_once(
        self,
        local: _ThreadState,
        method: str,
        request: bytes,
        number: int,
        waits: float | None,
        cut_off: _CutOff,
    ) -> Reply:
        """After a call was cut off: send it once more on a new connection, if that is safe.

        A read is safe to send again. A write is, with its ``number``, only to the same
        run of the server that still knows this thread's session: it applies each number
        at most once. Anything else raises :class:`ConnectionLost`, and so does a
        second cut.
        """
        if local.lost is not None:
            raise self._lock_lost(local) from cut_off
        lost = ConnectionLost(
            f"the connection to the server at {self.address} broke during {method}(); it may "
            "or may not have taken effect. The next call reconnects.",
            address=str(self.address),
        )
        if method not in READS and not number:
            raise lost from cut_off
        instance_before = local.instance
        try:
            self._connection(local)  # reconnect first, to learn which server answers
        except (ConnectionError, Timeout):
            raise lost from cut_off
        if number and (local.instance != instance_before or not local.session_known):
            raise lost from cut_off  # another server run, or one that forgot our session
        try:
            return self._round_trip(local, method, request, waits)
        except _CutOff as cut_again:
            raise lost from cut_again

    def _await_reply(
        self, local: _ThreadState, method: str, waits: float | None, call_timeout: float
    ) -> None:
        """Wait for the reply to a call the server may hold ``waits`` seconds on purpose.

        The socket's own timeout (``call_timeout``) would cut it short, so wait for the
        reply to start here: ``call_timeout`` on top of ``waits``, or forever if None.
        """
        poller = local.poller
        assert poller is not None  # opened with the connection
        remaining_ms = None if waits is None else (call_timeout + waits) * 1000
        try:
            while True:
                slice_ms: float = _LONGEST_POLL_MS
                if remaining_ms is not None:
                    slice_ms = min(remaining_ms, _LONGEST_POLL_MS)
                if poller.poll(slice_ms):
                    return
                if remaining_ms is not None:
                    remaining_ms -= slice_ms
                    if remaining_ms <= 0:
                        break
        except BaseException:
            # The reply would come out of turn: never read this socket again.
            self._drop(local, f"was interrupted during {method}()")
            raise
        self._drop(local, f"timed out during {method}()")
        raise self._timeout(local, method)

    def _timeout(self, local: _ThreadState, method: str) -> Exception:
        if local.lost is not None:
            return self._lock_lost(local)
        return not_answered(self.address, method, self.call_timeout)

    # -- what a thread holds -----------------------------------------------------------

    @staticmethod
    def _note_reservations(
        local: _ThreadState, method: str, args: tuple[Any, ...], kind: str, result: Any
    ) -> None:
        if method == "lock_acquire":
            if kind == RETURN and result:
                local.holds.add(LOCK)
        elif method == "lock_release":
            local.holds.discard(LOCK)
        elif method == "edit_begin":
            if kind == RETURN:
                local.holds.add(("edit", args[0]))
        elif method in ("edit_commit", "edit_abort"):
            local.holds.discard(("edit", args[0]))

    def _refuse_while_lost(self, local: _ThreadState, method: str, args: tuple[Any, ...]) -> None:
        """A call from a thread whose lock or edit was lost: always LockLost.

        Leaving the block (``release()``, the end of an edit) ends that state.
        """
        error = self._lock_lost(local)
        if method == "lock_release":
            local.holds.discard(LOCK)
        elif method in ("edit_commit", "edit_abort"):
            local.holds.discard(("edit", args[0]))
        if not local.holds:
            local.lost = None
        raise error

    def _lock_lost(self, local: _ThreadState) -> LockLost:
        return lock_lost(self.address, local.lost, local.holds, "thread")

    # -- connections -------------------------------------------------------------------

    def connect(self) -> None:
        """Open this thread's connection now (starting the server if allowed)."""
        self._reset_if_forked()
        self._connection(self._local)

    def close(self) -> None:
        """Close every connection this process opened; later calls reconnect."""
        with self._opened_lock:
            opened = list(self._opened)
            self._opened = weakref.WeakSet()
        for conn in opened:
            conn.close()
        self._local = _ThreadState()

    def _connection(self, local: _ThreadState) -> tuple[Connection, bool]:
        """This thread's usable connection, and whether it was already open."""
        if local.conn is not None:
            assert local.poller is not None
            if not local.poller.poll(0):
                return local.conn, True
            self._drop(local, "was closed by the server")  # readable while idle
        if local.lost is not None:
            raise self._lock_lost(local)  # reconnecting would run its calls unprotected
        link = self._connect(
            Hello(f"client-{os.getpid()}", local.session, resume=local.connected_before)
        )
        conn = link.conn
        if self.call_timeout is not None:
            set_timeouts(conn, self.call_timeout)
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        local.conn, local.poller = conn, poller
        local.instance = link.instance
        local.connected_before = True
        local.session_known = link.session_known
        with self._opened_lock:
            self._opened.add(conn)
        return conn, False

    def _drop(self, local: _ThreadState, what_happened: str) -> None:
        """Close this thread's connection, never to read it again.

        ``what_happened`` to it ("broke during incr()") is kept if the thread held the
        lock or an edit: the server freed them, and the thread's calls say so.
        """
        conn = local.conn
        local.conn = local.poller = None
        if conn is not None:
            conn.close()
            if local.holds and local.lost is None:
                local.lost = what_happened

    def forget_inherited(self) -> None:
        """After ``fork()``: drop the parent's connections (the fork hook closed them)."""
        self._reset_if_forked()

    def _reset_if_forked(self) -> None:
        """In a child whose at-fork hook did not run: drop the parent's connections, once.

        The hook does not run after a ``fork()`` made from C (an extension, say), and
        then the first call of each thread of the child lands here. Only one of them
        may reset: a second reset would replace ``_local`` and close the connection the
        first thread had opened since, and with it the lock or edit that thread holds.
        So the pid is checked again under the fork lock, and set only once the reset is
        done (see :meth:`_forget_parent_connections`).
        """
        if self._pid == os.getpid():
            return
        if not self._fork_lock.acquire(timeout=FORK_LOCK_WAIT):
            raise Timeout(
                f"waited {FORK_LOCK_WAIT:g} s for another thread to reset the connections to "
                f"the server at {self.address} after fork(): this process was forked without "
                "Python's at-fork hooks while a thread of its parent was doing the same reset. "
                "Fork before starting threads that use the state",
                address=str(self.address),
            )
        try:
            if self._pid != os.getpid():
                self._forget_parent_connections()
        finally:
            self._fork_lock.release()

    def _forget_parent_connections(self) -> None:
        # Close our copies of the parent's descriptors (the parent's stay open), and
        # never take the parent's locks, which another of its threads may have held at
        # the fork. The pid is set last: a thread that sees it equal skips the fork lock
        # and must find the reset done.
        for conn in list(self._opened):
            conn.close()
        self._local = _ThreadState()
        self._opened = weakref.WeakSet()
        self._opened_lock = threading.Lock()
        self._pid = os.getpid()


def _close_inherited_connections() -> None:
    # Runs in the child before any other thread exists there; a lock the parent's
    # threads held at the fork would stay held here, so each transport gets new ones.
    for transport in list(_transports):
        transport._fork_lock = threading.Lock()
        transport._forget_parent_connections()


os.register_at_fork(after_in_child=_close_inherited_connections)
