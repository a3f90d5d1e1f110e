"""One thread serves every connected client: an event loop over their sockets.

A thread per connection (the stock manager Server) makes every request wake a thread
that must win the GIL from the others; with 16 clients the server spent 73 µs of CPU
per ``incr`` and served fewer operations than with one. Here a single thread reads
whatever requests are ready, answers them, and goes back to ``epoll``: no thread
switches, no GIL hand-offs.

The wire format is still ``multiprocessing.connection``'s (a 4-byte big-endian length,
or -1 and an 8-byte length, then a pickle), so clients are unchanged.

Nothing may block this thread. Two things can wait:

- an operation that would wait for the lock or another client's edit
  (:class:`~sharedstate.reservations.WouldWait`) is *parked*: the loop runs it again,
  in arrival order, each time the lock or an edit is freed, and once its timeout has
  passed. (A helper thread per waiting call, tried first, made a contended lock 38
  times slower with 64 clients than with one: every release woke every waiter.)
- a write under ``fsync=always``: its reply waits for the fsync, in a helper thread
  that posts the reply back when done.

While a client waits, it sends nothing (clients send one request at a time), so
anything readable on its socket means it hung up or gave up.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from queue import SimpleQueue
from traceback import format_exc
from typing import Any

from .codec import PROTOCOL
from .config import MAX_REQUEST_BYTES
from .errors import SharedStateError
from .reservations import ANY_EDIT, WouldWait

logger = logging.getLogger("sharedstate")

_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")
_READ_SIZE = 256 * 1024
# While calls are parked, they run again at least this often (seconds): for their
# timeouts, and for a lock lease that runs out while nobody releases anything.
PARKED_TICK = 0.05

Reply = tuple[str, Any]


class Client:
    """One authenticated connection: what it owns, and its unread and unsent bytes."""

    may_wait = False  # the loop parks its calls instead: see WouldWait

    def __init__(self, id: int, sock: socket.socket, pid: int | None) -> None:
        self.id = id
        self.sock = sock
        self.pid = pid
        self.connected_at = time.time()
        self.requests = 0
        self.inbox = bytearray()
        self.outbox: deque[memoryview] = deque()  # unsent reply bytes, never copied again
        self.busy = False  # a helper thread is answering its request
        self.parked: _Parked | None = None  # its call waiting for the lock or an edit
        self.out_of_time = False  # the parked call's timeout has passed
        self.watched = 0  # the selector events it is registered for (0: not registered)
        self.gone = False

    def __str__(self) -> str:
        return f"client #{self.id}" + (f" (pid {self.pid})" if self.pid else "")


@dataclass
class _Parked:
    """A call that would have waited, to be run again."""

    function: Callable[..., Any]
    args: tuple[Any, ...]
    kwds: dict[str, Any]
    deadline: float | None = None  # time.monotonic() when its timeout ends
    waits_for: Hashable = None  # what it waits for (see WouldWait)


class ClientLoop:
    """Serves store calls for every adopted client, from the thread running :meth:`run`."""

    def __init__(
        self,
        objects: dict[str, Any],
        release: Callable[[Client], list[str]],
        take_pending_sync: Callable[[], Callable[[], None] | None] | None,
        on_departure: Callable[[Client], None],
    ) -> None:
        self._objects = objects  # ident -> (object, exposed method names, _)
        self._release = release
        self._take_pending_sync = take_pending_sync
        self._on_departure = on_departure
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._arrivals: SimpleQueue[Client] = SimpleQueue()
        self._answers: SimpleQueue[tuple[Client, Reply]] = SimpleQueue()
        self._stopping = False
        self._parked: dict[int, Client] = {}  # by client id, in the order they parked
        self._freed: set[Hashable] = set()  # what was freed since parked calls last ran
        self._next_tick = 0.0  # when parked calls are next run anyway (deadlines, leases)
        self._thread_id: int | None = None
        # recv() would allocate (and mmap, and free) a fresh buffer of this size per call.
        self._buffer = bytearray(_READ_SIZE)
        self._view = memoryview(self._buffer)

    # -- called from other threads ------------------------------------------------------

    def adopt(self, client: Client) -> None:
        """Start serving ``client`` (its handshake is done)."""
        client.sock.setblocking(False)
        self._arrivals.put(client)
        self._wake()

    def stop(self) -> None:
        self._stopping = True
        self._wake()

    @property
    def waiting(self) -> int:
        """How many clients' calls are parked, waiting for the lock or an edit."""
        return len(self._parked)

    def something_freed(self, resources: tuple[Hashable, ...]) -> None:
        """The lock or edits were freed (the store calls this, from any thread)."""
        self._freed.update(resources)
        if threading.get_ident() != self._thread_id:
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending; closed: loop gone
            self._wake_write.send(b"!")

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        self._thread_id = threading.get_ident()
        while not self._stopping:
            timeout = PARKED_TICK if self._parked else 1.0
            for key, events in self._selector.select(timeout):
                if key.fileobj is self._wake_read:
                    self._take_news()
                    continue
                client: Client = key.data
                if events & selectors.EVENT_WRITE:
                    self._flush(client)
                if events & selectors.EVENT_READ and not client.busy:
                    if client.parked is not None:
                        self._depart(client)  # it hung up, or gave up waiting
                    else:
                        self._read(client)
            if self._parked and (self._freed or time.monotonic() >= self._next_tick):
                self._run_parked()
        self._selector.close()

    def _take_news(self) -> None:
        try:
            while self._wake_read.recv(4096):
                pass
        except BlockingIOError:
            pass
        while not self._arrivals.empty():
            self._watch(self._arrivals.get())
        while not self._answers.empty():
            client, reply = self._answers.get()
            client.busy = False
            self._watch(client)
            self._send(client, reply)

    def _read(self, client: Client) -> None:
        try:
            size = client.sock.recv_into(self._buffer)
        except BlockingIOError:
            return
        except OSError:
            size = 0
        if not size:
            self._depart(client)
            return
        if not client.inbox and size >= 4:
            # The usual case: the request arrived whole, in one read.
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length >= 0 and length + 4 == size:
                self._serve(client, bytes(self._view[4:size]))
                return
        client.inbox += self._view[:size]
        while not client.busy and not client.gone and client.parked is None:
            try:
                message = _take_message(client.inbox)
            except ValueError as error:
                logger.warning("%s sent a malformed message (%s); disconnecting it", client, error)
                self._depart(client)
                return
            if message is None:
                return
            self._serve(client, message)

    def _serve(self, client: Client, message: bytes) -> None:
        client.requests += 1
        try:
            ident, method, args, kwds = load_request(message)
        except Exception as error:
            logger.warning("%s sent a malformed request (%r); disconnecting it", client, error)
            self._depart(client)
            return
        try:
            obj, exposed, _ = self._objects[ident]
            if method not in exposed:
                raise AttributeError(f"{method!r} is not a method clients may call")
            function = getattr(obj, method)
        except Exception:
            self._send(client, ("#TRACEBACK", format_exc()))
            return
        self._call(client, _Parked(function, args, kwds))
        if self._freed and self._parked:
            self._run_parked()  # before anyone else can take what was just freed

    def _call(self, client: Client, call: _Parked) -> bool:
        """Run ``call`` for ``client`` and answer it; False if it had to be parked."""
        try:
            result = call.function(client, *call.args, **call.kwds)
        except WouldWait as wait:
            call.waits_for = wait.waits_for
            if client.parked is None:
                if wait.timeout is not None:
                    call.deadline = time.monotonic() + wait.timeout
                client.parked = call
                self._parked[client.id] = client
            return False
        except SharedStateError as error:
            self._send(client, ("#ERROR", error))
            return True
        except Exception:
            logger.exception("error serving %s", client)
            self._send(client, ("#TRACEBACK", format_exc()))
            return True
        if self._take_pending_sync is not None:
            sync = self._take_pending_sync()
            if sync is not None:
                self._hand_off(client, lambda: (sync(), result)[1])
                return True
        self._send(client, ("#RETURN", result))
        return True

    def _run_parked(self) -> None:
        """Run parked calls again, oldest first; answer those that can go on.

        Only calls waiting for what was freed are run, and for each thing only until
        one finds it taken again: the calls behind it would wait too (and keep their
        place in the queue). Every PARKED_TICK all of them run, for timeouts and leases.
        """
        freed, self._freed = self._freed, set()
        now = time.monotonic()
        everything = now >= self._next_tick
        if everything:
            self._next_tick = now + PARKED_TICK
        taken_again: set[Hashable] = set()
        for client in list(self._parked.values()):
            call = client.parked
            if call is None:  # departed, or answered, during this round
                continue
            client.out_of_time = call.deadline is not None and now >= call.deadline
            waits_for = call.waits_for
            if not client.out_of_time and (
                waits_for in taken_again or not (everything or _was_freed(waits_for, freed))
            ):
                continue
            if self._call(client, call):
                self._unpark(client)
            else:
                taken_again.add(waits_for)

    def _unpark(self, client: Client) -> None:
        client.parked = None
        client.out_of_time = False
        self._parked.pop(client.id, None)

    def _hand_off(self, client: Client, work: Callable[[], Any]) -> None:
        client.busy = True
        self._unwatch(client)
        helper = threading.Thread(target=self._help, args=(client, work), daemon=True)
        helper.name = f"helper-{client.id}"
        helper.start()

    def _help(self, client: Client, work: Callable[[], Any]) -> None:
        reply: Reply
        try:
            reply = ("#RETURN", work())
        except SharedStateError as error:
            reply = ("#ERROR", error)
        except Exception:
            logger.exception("error serving %s", client)
            reply = ("#TRACEBACK", format_exc())
        self._answers.put((client, reply))
        self._wake()

    def _send(self, client: Client, reply: tuple[str, Any]) -> None:
        try:
            data = pickle.dumps(reply, protocol=PROTOCOL)
        except Exception:
            data = pickle.dumps(("#UNSERIALIZABLE", format_exc()), protocol=PROTOCOL)
        if len(data) > 0x7FFFFFFF:
            header = _LENGTH.pack(-1) + _LONG_LENGTH.pack(len(data))
        else:
            header = _LENGTH.pack(len(data))
        if not client.outbox and len(data) < 65536 and not client.gone:
            # The usual case: a small reply, nothing queued before it: one send.
            frame = header + data
            try:
                sent = client.sock.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._depart(client)
                return
            if sent == len(frame):
                return
            client.outbox.append(memoryview(frame)[sent:])
        else:
            client.outbox.append(memoryview(header))
            client.outbox.append(memoryview(data))
        self._flush(client)

    def _flush(self, client: Client) -> None:
        if client.gone:
            return
        outbox = client.outbox
        while outbox:
            try:
                sent = client.sock.send(outbox[0])
            except BlockingIOError:
                break
            except OSError:
                self._depart(client)
                return
            if sent < len(outbox[0]):
                outbox[0] = outbox[0][sent:]
                break
            outbox.popleft()
        if client.watched:
            self._watch(client)  # and for writing, while bytes are left to send

    def _watch(self, client: Client) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbox else 0)
        if client.watched == events:
            return  # the usual case: no system call
        if client.watched:
            self._selector.modify(client.sock, events, client)
        else:
            self._selector.register(client.sock, events, client)
        client.watched = events

    def _unwatch(self, client: Client) -> None:
        if client.watched:
            self._selector.unregister(client.sock)
            client.watched = 0

    def _depart(self, client: Client) -> None:
        if client.gone:
            return
        client.gone = True
        self._unpark(client)
        self._unwatch(client)
        client.sock.close()
        released = self._release(client)
        if released:
            logger.info("%s disconnected; released %s", client, ", ".join(released))
        else:
            logger.debug("%s disconnected", client)
        self._on_departure(client)


def _was_freed(waits_for: Hashable, freed: set[Hashable]) -> bool:
    if waits_for == ANY_EDIT:
        return any(type(resource) is tuple for resource in freed)  # an (EDIT, key)
    return waits_for in freed


_PROTO_OPCODE = pickle.PROTO[0]


def load_request(message: bytes) -> tuple[Any, str, tuple[Any, ...], dict[str, Any]]:
    """Unpickle a request: ``(object id, method, args, kwargs)``; ValueError if it isn't one.

    Requests are pickles of protocol 2 or later, which start by saying so. Checking
    that first keeps stray bytes away from the unpickler, which takes some short inputs
    as orders to allocate gigabytes (a memo index of 2**31). Crafted pickles are another
    matter: whoever has the key may run code here anyway.
    """
    if len(message) < 2 or message[0] != _PROTO_OPCODE or not 2 <= message[1] <= PROTOCOL:
        raise ValueError("not a pickle")
    request = pickle.loads(message)
    if type(request) is not tuple or len(request) != 4:
        raise ValueError("not a 4-tuple")
    return request


def _take_message(inbox: bytearray) -> bytes | None:
    """Remove and return the first whole message in ``inbox``, if there is one."""
    if len(inbox) < 4:
        return None
    (size,) = _LENGTH.unpack_from(inbox)
    start = 4
    if size == -1:
        if len(inbox) < 12:
            return None
        (size,) = _LONG_LENGTH.unpack_from(inbox, 4)
        start = 12
    if not 0 <= size <= MAX_REQUEST_BYTES:
        # Clients never send more (they check first): this is garbage, not a request.
        raise ValueError(f"bad message length {size}")
    end = start + size
    if len(inbox) < end:
        return None
    message = bytes(inbox[start:end])
    del inbox[:end]
    return message
