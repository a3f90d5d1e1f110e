"""One thread serves every connection: an event loop over the listener and the sockets.

A thread per connection (the stock manager Server) makes every request wake a thread
that must win the GIL from the others; with 16 clients the server spent 73 µs of CPU
per ``incr`` and served fewer operations than with one. Here a single thread accepts
connections, reads whatever requests are ready, answers them, and goes back to
``epoll``: no thread switches, no GIL hand-offs.

New connections are served here too, from the first byte: the handshake and the first
request (:mod:`sharedstate.server.reception`) are steps of the same loop, never a thread each.
So no number of silent, slow or half-open connections can hold up anyone else: each
costs a descriptor and a few hundred bytes until its handshake deadline, and past
:data:`MAX_GREETING` waiting at once the oldest is dropped.

What is read and sent is defined in :mod:`sharedstate.protocol`: frames holding
pickled requests and replies.

Nothing may block this thread. Two things can wait:

- an operation that would wait for the lock or another client's edit
  (:class:`~sharedstate.server.reservations.WouldWait`) is *parked*: the loop runs it again,
  in arrival order, each time the lock or an edit is freed, and once its timeout has
  passed. (A helper thread per waiting call, tried first, made a contended lock 38
  times slower with 64 clients than with one: every release woke every waiter.)
- a reply that must wait for a disk sync (``fsync=always``) or a snapshot: a helper
  thread runs it and posts the reply back when done.

A client may send requests before the replies to earlier ones (the asyncio client
does): they are answered in order. Those sent behind a call that waits wait with it,
buffered here up to :data:`MAX_HELD_BACK_BYTES`, then in the kernel; a client that
hangs up while it waits is noticed at once.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from queue import SimpleQueue
from traceback import format_exc
from typing import TYPE_CHECKING, Any

from ..errors import LeaseExpired, SharedStateError
from ..protocol import (
    ERROR,
    LENGTH,
    MAX_REQUEST_BYTES,
    RETURN,
    TRACEBACK,
    Reply,
    dump_reply,
    frame_header,
    load_request,
    take_message,
)
from .reservations import ANY_EDIT, WouldWait

if TYPE_CHECKING:
    from .reception import Reception
    from .sessions import Session

logger = logging.getLogger("sharedstate")

_READ_SIZE = 256 * 1024
# While calls are parked, they run again at least this often (seconds): for their
# timeouts, and for a lock lease that runs out while nobody releases anything.
PARKED_TICK = 0.05
# Connections still in their handshake or first request, at most; past it the oldest
# is dropped. A real client is through in a millisecond or two.
MAX_GREETING = 1024
# Requests a client may send behind a call that waits, at most (bytes buffered here).
MAX_HELD_BACK_BYTES = 1 << 20
# Connections accepted per pass of the loop, so a flood can't starve the clients.
_ACCEPT_BATCH = 64

# A connection's stages (Client.stage).
GREETING = "greeting"  # hello sent; waiting for the client's proof
AUTHENTICATED = "authenticated"  # waiting for its first request
SERVING = "serving"  # a store client


class Client:
    """One connection: its stage, what it owns, and its unread and unsent bytes."""

    may_wait = False  # the loop parks its calls instead: see WouldWait

    def __init__(self, id: int, sock: socket.socket, uid: int | None, pid: int | None) -> None:
        self.id = id
        self.sock = sock
        self.uid = uid  # from the kernel (Unix sockets), never from the client
        self.pid = pid
        self.stage = GREETING
        self.announced = ""  # what the client called itself (for logs only)
        self.nonce = b""  # the handshake's server nonce
        self.deadline = 0.0  # time.monotonic() by which it must be SERVING
        self.session: Session | None = None
        self.lapsed = False  # its lock lease ran out before it released the lock
        self.closing = False  # hang up once the outbox is sent
        self.connected_at = time.time()
        self.requests = 0
        self.inbox = bytearray()
        self.outbox: deque[memoryview] = deque()  # unsent reply bytes, never copied again
        self.busy = False  # a helper thread is answering its request
        self.parked: StoreCall | None = None  # its call waiting for the lock or an edit
        self.inbox_full = False  # not read while requests behind its parked call pile up
        self.out_of_time = False  # the parked call's timeout has passed
        self.watched = 0  # the selector events it is registered for (0: not registered)
        self.gone = False

    def __str__(self) -> str:
        return f"client #{self.id}" + (f" (pid {self.pid})" if self.pid else "")


@dataclass
class StoreCall:
    """A client's store call; if it would wait, it is parked and run again later."""

    function: Callable[..., Any]
    args: tuple[Any, ...]
    rid: int = 0  # its write number within the client's session (0: not a numbered write)
    deadline: float | None = None  # time.monotonic() when its timeout ends
    waits_for: Hashable = None  # what it waits for (see WouldWait)


class ClientLoop:
    """Serves every connection to ``listener``, from the thread running :meth:`run`."""

    def __init__(
        self,
        listener: socket.socket,
        objects: dict[str, Any],
        reception: Reception,
        release: Callable[[Client], list[str]],
        take_pending_sync: Callable[[], Callable[[], None] | None] | None,
        on_departure: Callable[[Client], None],
    ) -> None:
        self._listener = listener
        self._objects = objects  # ident -> (object, exposed method names, _)
        self._reception = reception
        self._release = release
        self._take_pending_sync = take_pending_sync
        self._on_departure = on_departure
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ)
        self._ids = 0
        self._greeting: OrderedDict[int, Client] = OrderedDict()  # oldest first
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
            for key, events in self._selector.select(self._select_timeout()):
                if key.fileobj is self._wake_read:
                    self._take_news()
                    continue
                if key.fileobj is self._listener:
                    self._accept()
                    continue
                client: Client = key.data
                if events & selectors.EVENT_WRITE:
                    self._flush(client)
                if events & selectors.EVENT_READ and not client.busy:
                    self._read(client)
            if self._parked and (self._freed or time.monotonic() >= self._next_tick):
                self._run_parked()
            if self._greeting:
                self._drop_late_greetings()
        self._selector.close()

    def _select_timeout(self) -> float:
        timeout = PARKED_TICK if self._parked else 1.0
        if self._greeting:
            oldest = next(iter(self._greeting.values()))
            timeout = min(timeout, max(oldest.deadline - time.monotonic(), 0.0))
        return timeout

    def _take_news(self) -> None:
        try:
            while self._wake_read.recv(4096):
                pass
        except BlockingIOError:
            pass
        while not self._answers.empty():
            client, reply = self._answers.get()
            client.busy = False
            if client.gone:
                continue
            self._watch(client)
            self._send(client, reply)
            self._resume(client)

    # -- new connections -------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of descriptors, say: try again next pass
                logger.warning("could not accept a connection: %s", error)
                return
            sock.setblocking(False)
            self._ids += 1
            client = self._reception.new_client(self._ids, sock)
            client.deadline = time.monotonic() + self._reception.timeout
            self._greeting[client.id] = client
            if len(self._greeting) > MAX_GREETING:
                _, oldest = self._greeting.popitem(last=False)
                logger.warning(
                    "%s had not finished its handshake when %d newer connections were "
                    "waiting; dropped it",
                    oldest,
                    MAX_GREETING,
                )
                self._depart(oldest)
            self._watch(client)
            self._reception.greet(self, client)

    def set_aside(self, client: Client) -> None:
        """Stop serving ``client`` without closing it: someone else will answer it."""
        self._greeting.pop(client.id, None)
        self._unwatch(client)
        client.sock.setblocking(True)

    def promote(self, client: Client) -> None:
        """``client`` passed the handshake and was admitted: serve its store calls."""
        self._greeting.pop(client.id, None)
        client.stage = SERVING

    def _drop_late_greetings(self) -> None:
        now = time.monotonic()
        while self._greeting:
            oldest = next(iter(self._greeting.values()))
            if oldest.deadline > now:
                return
            del self._greeting[oldest.id]
            if not oldest.busy:
                logger.warning(
                    "refused a connection from %s: no handshake within %g s",
                    self._reception.describe(oldest),
                    self._reception.timeout,
                )
                self._depart(oldest)

    # -- requests --------------------------------------------------------------------------

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
        serving = client.stage == SERVING
        if serving and not client.inbox and size >= LENGTH.size and client.parked is None:
            # The usual case: the request arrived whole, in one read.
            (length,) = LENGTH.unpack_from(self._buffer)
            if length >= 0 and length + LENGTH.size == size:
                self._serve(client, bytes(self._view[LENGTH.size : size]))
                return
        client.inbox += self._view[:size]
        if client.parked is not None:
            # Requests sent behind a call that waits (an asyncio client's) wait with
            # it, in order; past a bound, the client's bytes wait in the kernel.
            if len(client.inbox) >= MAX_HELD_BACK_BYTES:
                client.inbox_full = True
                self._watch(client)
            return
        self._serve_inbox(client)

    def _serve_inbox(self, client: Client) -> None:
        """Serve the whole requests in ``client``'s inbox, in order, until one waits."""
        while not client.busy and not client.gone and client.parked is None:
            # Before it is a client, a connection may only send small messages: a
            # stranger must not make the server buffer a gigabyte.
            limit = MAX_REQUEST_BYTES if client.stage == SERVING else self._reception.max_message
            try:
                message = take_message(client.inbox, limit)
            except ValueError as error:
                if client.stage == SERVING:
                    logger.warning(
                        "%s sent a malformed message (%s); disconnecting it", client, error
                    )
                else:
                    logger.warning(
                        "refused a connection from %s: %s",
                        self._reception.describe(client),
                        error,
                    )
                self._depart(client)
                return
            if message is None:
                return
            if client.closing:
                continue  # answered for good; whatever else it says is ignored
            if client.stage == SERVING:
                self._serve(client, message)
            else:
                self._reception.receive(self, client, message)

    def _serve(self, client: Client, message: bytes) -> None:
        client.requests += 1
        try:
            ident, method, args, rid = load_request(message)
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
            self._send(client, (TRACEBACK, format_exc()))
            return
        if client.lapsed and method != "lock_release":
            self._send(client, (ERROR, _lapsed_error()))
            return
        self._call(client, StoreCall(function, args, rid if type(rid) is int else 0))
        if self._freed and self._parked:
            self._run_parked()  # before anyone else can take what was just freed

    def _call(self, client: Client, call: StoreCall) -> bool:
        """Run ``call`` for ``client`` and answer it; False if it had to be parked."""
        session = client.session
        if call.rid and session is not None and call.rid <= session.last_rid:
            self._answer_again(client, session, call.rid)
            return True
        reply: Reply
        try:
            result = call.function(client, *call.args)
        except WouldWait as wait:
            call.waits_for = wait.waits_for
            if client.parked is None:
                if wait.timeout is not None:
                    call.deadline = time.monotonic() + wait.timeout
                client.parked = call
                self._parked[client.id] = client
            return False
        except SharedStateError as error:
            reply = (ERROR, error)
        except Exception:
            logger.exception("error serving %s", client)
            reply = (TRACEBACK, format_exc())
        else:
            reply = (RETURN, result)
        sync = self._take_pending_sync() if self._take_pending_sync is not None else None
        if call.rid and session is not None:
            session.remember(call.rid, reply, sync)
        if sync is not None and reply[0] == RETURN:
            self.hand_off(client, _after(sync, reply))
        else:
            self._send(client, reply)
        return True

    def _answer_again(self, client: Client, session: Session, rid: int) -> None:
        """A write the client sent again (its connection dropped before the reply)."""
        if rid != session.last_rid or session.reply is None:
            error = SharedStateError(
                f"write number {rid} of this client came after write {session.last_rid}; "
                "the client is out of step with the server. Reconnect (state.close())"
            )
            self._send(client, (ERROR, error))
            return
        logger.info("%s retried a write the server had applied; answered it again", client)
        if session.durable is not None and session.reply[0] == RETURN:
            self.hand_off(client, _after(session.durable, session.reply))
        else:
            self._send(client, session.reply)

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
        resumed: list[Client] = []
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
                resumed.append(client)
            else:
                taken_again.add(waits_for)
        for client in resumed:  # now that the round is over: they may park again
            self._resume(client)

    def _resume(self, client: Client) -> None:
        """Serve what ``client`` sent behind a call that waited, or took a helper."""
        if client.gone:
            return
        if client.inbox_full:
            client.inbox_full = False
            self._watch(client)
        if client.inbox:
            self._serve_inbox(client)

    def _unpark(self, client: Client) -> None:
        client.parked = None
        client.out_of_time = False
        self._parked.pop(client.id, None)

    def hand_off(self, client: Client, work: Callable[[], Reply]) -> None:
        """Have a helper thread make ``client``'s reply (it may block); send it when done."""
        client.busy = True
        self._unwatch(client)
        helper = threading.Thread(target=self._help, args=(client, work), daemon=True)
        helper.name = f"helper-{client.id}"
        helper.start()

    def _help(self, client: Client, work: Callable[[], Reply]) -> None:
        reply: Reply
        try:
            reply = work()
        except SharedStateError as error:
            reply = (ERROR, error)
        except Exception:
            logger.exception("error serving %s", client)
            reply = (TRACEBACK, format_exc())
        self._answers.put((client, reply))
        self._wake()

    # -- replies ---------------------------------------------------------------------------

    def _send(self, client: Client, reply: Reply) -> None:
        self.send_frame(client, dump_reply(reply))

    def send_reply(self, client: Client, reply: Reply, *, then_close: bool = False) -> None:
        """Send a pickled reply; with ``then_close``, hang up once it is sent."""
        client.closing = client.closing or then_close
        self._send(client, reply)

    def send_frame(self, client: Client, data: bytes, *, then_close: bool = False) -> None:
        """Send ``data`` as one message (a length, then the bytes)."""
        client.closing = client.closing or then_close
        header = frame_header(len(data))
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
                if client.closing:
                    self._depart(client)
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
        if not outbox and client.closing:
            self._depart(client)
            return
        if client.watched:
            self._watch(client)  # and for writing, while bytes are left to send

    def _watch(self, client: Client) -> None:
        events = (0 if client.inbox_full else selectors.EVENT_READ) | (
            selectors.EVENT_WRITE if client.outbox else 0
        )
        if client.watched == events:
            return  # the usual case: no system call
        if not events:
            self._unwatch(client)
            return
        if client.watched:
            self._selector.modify(client.sock, events, client)
        else:
            self._selector.register(client.sock, events, client)
        client.watched = events

    def _unwatch(self, client: Client) -> None:
        if client.watched:
            self._selector.unregister(client.sock)
            client.watched = 0

    # -- departures ------------------------------------------------------------------------

    def hang_up(self, client: Client) -> None:
        """Disconnect ``client`` now, releasing what it holds (from the loop thread)."""
        self._depart(client)

    def _depart(self, client: Client) -> None:
        if client.gone:
            return
        client.gone = True
        self._greeting.pop(client.id, None)
        self._unpark(client)
        self._unwatch(client)
        client.sock.close()
        if client.stage == SERVING:
            released = self._release(client)
            if released:
                logger.info("%s disconnected; released %s", client, ", ".join(released))
            else:
                logger.debug("%s disconnected", client)
        self._on_departure(client)


def _after(sync: Callable[[], None], reply: Reply) -> Callable[[], Reply]:
    def work() -> Reply:
        sync()
        return reply

    return work


def _lapsed_error() -> LeaseExpired:
    return LeaseExpired(
        "state.lock's lease ran out while this thread held it, and the server gave the "
        "lock to others; this thread must not go on as if it held it. Leave the "
        "`with state.lock` block (or call state.lock.release(), which raises this too), "
        "then acquire the lock again, with a longer lease"
    )


def _was_freed(waits_for: Hashable, freed: set[Hashable]) -> bool:
    if waits_for == ANY_EDIT:
        return any(type(resource) is tuple for resource in freed)  # an (EDIT, key)
    return waits_for in freed
