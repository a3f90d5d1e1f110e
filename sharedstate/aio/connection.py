"""One connection to the server on the event loop: frames in, replies to their callers.

:class:`FrameProtocol` is an :class:`asyncio.Protocol`: the loop hands it bytes as they
arrive, it cuts them into frames (:mod:`sharedstate.protocol`'s framing) and gives each
whole frame to the oldest caller still waiting, in order, since the server answers in
order. Nothing ever reads a frame halfway: a caller that was cancelled or timed out
simply leaves its future behind, and the reply, when it comes, is dropped. So a
cancelled task never leaves the connection out of step.

:func:`open_connection` connects, checks who listens (as the sync client does) and runs
the handshake (:class:`~sharedstate.handshake.ClientProof`), all without blocking the loop.
A :class:`Channel` is what the pool (:mod:`sharedstate.aio.pool`) keeps of a connection:
the current one, and the session that outlives it, whose writes it numbers.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..client.launcher import ensure_server, key_to_connect, not_accepting, not_running
from ..client.transport import Hello, check_listener, connecting_error, refused_handshake
from ..config import Settings
from ..errors import ServerError, Timeout
from ..handshake import MAX_MESSAGE_BYTES, ClientProof, HandshakeFailed
from ..protocol import (
    ACCEPT_CONNECTION,
    ERROR,
    LENGTH,
    MAX_REQUEST_BYTES,
    RETURN,
    SESSION_ID_BYTES,
    dump_request,
    frame_header,
    load_reply,
    take_message,
)

# Replies larger than this are sent in pieces: one write of header and payload below it.
_JOIN_BELOW = 1 << 16


class Broken(Exception):
    """The connection closed (or broke) with this caller's reply still to come.

    ``in_flight``: how many calls were waiting for a reply on it then (this one too).
    """

    def __init__(self, why: str, in_flight: int = 0) -> None:
        super().__init__(why)
        self.in_flight = in_flight


class FrameProtocol(asyncio.Protocol):
    """A connection whose callers each send one frame and await the one that answers it."""

    def __init__(self, limit: int = MAX_REQUEST_BYTES) -> None:
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket | None = None  # ours, to detach in a forked child
        self.waiting: deque[asyncio.Future[bytes]] = deque()
        self.broken: str | None = None  # why it can't be used any more
        self._inbox = bytearray()
        self._can_write: asyncio.Future[None] | None = None
        self.loop = asyncio.get_running_loop()
        self._outbox: list[bytes] = []  # frames sent behind others, written together

    # -- the loop's side ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        if not self._inbox and len(data) >= LENGTH.size:
            (size,) = LENGTH.unpack_from(data)
            if 0 <= size == len(data) - LENGTH.size:  # the usual case: one whole frame
                self._answer(data[LENGTH.size :])
                return
        self._inbox += data
        while True:
            try:
                message = take_message(self._inbox, self.limit)
            except ValueError as error:
                self.close(f"sent a malformed frame ({error})")
                return
            if message is None:
                return
            self._answer(message)

    def _answer(self, message: bytes) -> None:
        if not self.waiting:
            self.close("sent a frame nobody asked for")
            return
        waiter = self.waiting.popleft()
        if not waiter.done():  # else its caller gave up: the reply is dropped
            waiter.set_result(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"was closed ({exc!r})" if exc else "was closed by the server")

    def pause_writing(self) -> None:
        if self._can_write is None:
            self._can_write = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._can_write is not None:
            if not self._can_write.done():
                self._can_write.set_result(None)
            self._can_write = None

    # -- the callers' side -------------------------------------------------------------

    def send(self, payload: bytes) -> asyncio.Future[bytes]:
        """Send one frame; the future gets the frame that answers it (or :class:`Broken`).

        A frame sent while others await their replies can't be answered before them:
        it is written at the end of this turn of the loop, with the others sent in the
        same turn, in one system call.
        """
        transport = self.transport
        if self.broken is not None or transport is None:
            raise Broken(self.broken or "is not connected")
        waiter: asyncio.Future[bytes] = self.loop.create_future()
        header = frame_header(len(payload))
        if self.waiting:
            if not self._outbox:
                self.loop.call_soon(self._flush)
            self._outbox += (header, payload)
        elif len(payload) < _JOIN_BELOW:
            transport.write(header + payload)
        else:
            transport.writelines((header, payload))
        self.waiting.append(waiter)
        return waiter

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if self.transport is not None and self.broken is None:
            self.transport.write(b"".join(outbox))

    @property
    def paused(self) -> bool:
        """Whether the kernel's buffer is full: :meth:`writable` would wait."""
        return self._can_write is not None

    async def writable(self) -> None:
        """Wait while the kernel's buffer is full (a large value going out): back-pressure."""
        while self._can_write is not None:
            await asyncio.shield(self._can_write)
            if self.broken is not None:
                raise Broken(self.broken)

    async def exchange(self, payload: bytes) -> bytes:
        """Send a frame and wait for its answer (the handshake's messages)."""
        await self.writable()
        return await self.send(payload)

    def close(self, why: str = "was closed by this client") -> None:
        """Close the connection; every caller still waiting gets :class:`Broken`."""
        self._fail(why)
        if self.transport is not None:
            self.transport.abort()

    def forget(self) -> None:
        """In a forked child: let go of the parent's socket without touching the loop.

        The child's descriptor is closed, the parent's stays open; the transport (which
        would close whatever descriptor later gets the same number) is left holding a
        detached socket, so nothing it does later reaches the parent's connection.
        """
        was_open = self.broken is None
        self.broken = "belongs to the parent process"
        self.waiting.clear()
        if self.sock is not None and was_open:
            # Only a connection still open: a closed one's transport (uvloop's, say) may
            # have closed the descriptor already, and its number may be another's now.
            fd = self.sock.detach()
            if fd >= 0:
                os.close(fd)

    def _fail(self, why: str) -> None:
        if self.broken is None:
            self.broken = why
        waiting, self.waiting = self.waiting, deque()
        self._outbox = []
        for waiter in waiting:
            if not waiter.done():
                waiter.set_exception(Broken(why, len(waiting)))
        self.resume_writing()


class Channel:
    """One connection, its session and the numbering of its writes."""

    __slots__ = ("connected_before", "connecting", "deadline", "instance", "last_number",
                 "protocol", "session", "session_known", "users")  # fmt: skip

    def __init__(self) -> None:
        self.protocol: FrameProtocol | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.instance = b""
        self.session = os.urandom(SESSION_ID_BYTES)
        self.connected_before = False
        self.session_known = True
        self.last_number = 0
        self.users = 0  # calls on it now, sent or about to be
        self.deadline: float | None = None  # of the latest call sent (loop time)

    @property
    def usable(self) -> bool:
        return self.protocol is not None and self.protocol.broken is None

    @property
    def opening(self) -> bool:
        return self.connecting is not None and not self.connecting.done()

    def close(self, why: str) -> None:
        if self.protocol is not None:
            self.protocol.close(why)

    def discard(self) -> None:
        """Close it, now or (if it is being opened for a caller that gave up) once open."""
        if self.connecting is not None and not self.connecting.done():
            self.connecting.add_done_callback(lambda _: self.close("was not needed any more"))
        self.close("was not needed any more")


@dataclass
class Opened:
    """A connection ready for store calls, and what the server said of it."""

    protocol: FrameProtocol
    instance: bytes  # the server's run: a restarted server has another
    session_known: bool  # False: the server does not know the session we resumed


async def open_connection(settings: Settings, timeout: float, hello: Hello) -> Opened | None:
    """A connection ready for store calls, or None if nothing listens at the address.

    Raises :class:`InsecurePermissions` before sending a byte to a server run by a user
    we don't trust, :class:`AuthenticationFailed` if it doesn't prove it has our key,
    :class:`Timeout` if it doesn't answer within ``timeout``.
    """
    key = key_to_connect(settings)
    if key is None:
        return None
    address = settings.address
    loop = asyncio.get_running_loop()
    family = socket.AF_UNIX if address.is_unix else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    protocol = FrameProtocol(MAX_MESSAGE_BYTES)
    try:
        try:
            await asyncio.wait_for(loop.sock_connect(sock, address.target), timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        except BlockingIOError:  # a Unix socket's backlog is full: a busy server
            raise Timeout(
                f"the server at {address} is too busy to accept a connection",
                address=str(address),
            ) from None
        if address.is_unix:
            check_listener(sock, address, settings.trusted_uids)
        else:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # /proc/net/tcp may be long on a busy machine: read it off the loop.
            await asyncio.to_thread(check_listener, sock, address, settings.trusted_uids)
        greeting: asyncio.Future[bytes] = loop.create_future()
        protocol.waiting.append(greeting)  # the server speaks first, maybe at once
        await loop.create_connection(lambda: protocol, sock=sock)
        protocol.sock = sock
        introduced = _introduce(protocol, greeting, key, hello)
        instance, session_known = await asyncio.wait_for(introduced, timeout)
    except HandshakeFailed as failure:
        protocol.close()
        sock.close()
        raise refused_handshake(failure, address) from None
    except BaseException as error:
        protocol.close()
        sock.close()
        if isinstance(error, Broken):
            error = EOFError(str(error))
        if isinstance(error, asyncio.TimeoutError):
            error = TimeoutError()
        raise connecting_error(error, address, timeout) from None
    return Opened(protocol, instance, session_known)


async def _introduce(
    protocol: FrameProtocol, greeting: asyncio.Future[bytes], key: bytes, hello: Hello
) -> tuple[bytes, bool]:
    """The handshake, then ``accept_connection``: the server's instance and what it knows."""
    proving = ClientProof(key)
    auth = proving.answer(await greeting)
    instance = proving.check(await protocol.exchange(auth))
    protocol.limit = MAX_REQUEST_BYTES  # the server proved itself: its replies may be large
    request = dump_request(None, ACCEPT_CONNECTION, (hello.name, hello.session, hello.resume))
    kind, result = load_reply(await protocol.exchange(request))
    if kind == ERROR:
        raise result
    if kind != RETURN:
        raise ServerError(f"the server refused {ACCEPT_CONNECTION}: {result}")
    welcome: dict[str, Any] = result
    return instance, bool(welcome.get("session_known", False))


async def connect_or_start(
    settings: Settings, *, start: bool, timeout: float, hello: Hello
) -> Opened:
    """A connection to the server at ``settings.address``, starting it if allowed.

    Exactly one server starts however many workers race, as for the sync client
    (:mod:`sharedstate.client.launcher`, whose start runs here in a thread, off the loop).
    """
    # A listening server that doesn't answer is as stuck as one that doesn't answer a call.
    wait = min(timeout, settings.call_timeout or timeout)
    opened = await open_connection(settings, wait, hello)
    if opened is not None:
        return opened
    if not start:
        raise not_running(settings)
    await asyncio.to_thread(ensure_server, settings, timeout)
    opened = await open_connection(settings, wait, hello)
    if opened is None:
        raise not_accepting(settings)
    return opened
