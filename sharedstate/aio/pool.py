"""The asyncio client's connections: a few, shared by every task of the event loop.

A call goes on a connection with nothing in flight if there is one, else on a new one,
up to ``max_connections``; past that, it is sent behind the calls in flight on the least
busy connection (the server answers each connection's calls in order, and the requests
sent in one turn of the loop go out in one system call), up to :data:`PIPELINE_DEPTH`
calls each; past *that*, the task waits (back-pressure).

A connection is a *channel* with its own session: like a sync client's thread, it
numbers its writes, so a write cut off by a dropped connection is sent again once, and
applied at most once (:mod:`sharedstate.server.sessions`), when it was the only call in
flight. Other cut-off writes raise :class:`ConnectionLost` (they may or may not have
taken effect); cut-off reads are simply sent again.

**The lock and edits belong to a task.** The server gives them to a connection, so a
task that takes one gets a channel of its own (its *hold*) until it has freed
everything, and its calls meanwhile go on that channel, as a sync thread's do. The hold
lives in a context variable: tasks the holder starts inside the block share it. At most
``max_connections`` tasks hold (or wait for) the lock or an edit at once; others wait.

**Cancellation leaves nothing behind.** A cancelled call's reply is dropped when it
arrives (:mod:`sharedstate.aio.connection`), so its connection stays in step. A
cancelled call that takes or frees the lock or an edit closes its channel instead: the
server then frees whatever that connection held, as for a worker that died.

Calls wait behind whatever the server holds back on their connection: a write of a key
another client is editing waits for that edit (as in the sync client), and so do the
calls sent behind it. A task that holds an edit should not wait for another task's
call to the same state.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from ..address import Address
from ..client.commands import Call
from ..client.transport import LOCK, Hello, lock_lost, not_answered, outcome, store_request
from ..errors import (
    ConnectionLost,
    LockLost,
    WrongEventLoop,
)
from ..protocol import (
    OPERATIONS,
    Kind,
    Operation,
    load_reply,
)
from .connection import Broken, Channel, FrameProtocol, Opened

DEFAULT_MAX_CONNECTIONS = 4
PIPELINE_DEPTH = 32  # calls in flight on one connection, at most

Connect = Callable[[Hello], Awaitable[Opened]]


class _TimedOut(Exception):
    """No reply within the call timeout."""


class Hold:
    """A task's own channel while it holds the lock or edits, and what it holds."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.held: set[Any] = set()  # LOCK and ("edit", key)
        self.lost: str | None = None  # what happened to the channel while it held them
        self.turn = asyncio.Lock()  # tasks sharing the hold call one at a time
        self.done = False


_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


class Pool:
    """Runs store calls for one event loop over a few connections to one server."""

    def __init__(
        self,
        connect: Connect,
        address: Address,
        *,
        call_timeout: float | None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._connect = connect
        self.address = address
        self.call_timeout = call_timeout
        self.max_connections = max_connections
        self._shared: list[Channel] = []  # for calls of tasks that hold nothing
        self._spare: list[Channel] = []  # for the next hold
        self._holds: weakref.WeakSet[Hold] = weakref.WeakSet()
        self._hold_slots: asyncio.Semaphore | None = None  # made in the loop, on first use
        self._room: list[asyncio.Future[None]] = []  # tasks waiting for a call to end
        self._hold: contextvars.ContextVar[Hold | None] = contextvars.ContextVar(
            f"sharedstate hold {id(self)}", default=None
        )
        self._pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None  # the one it belongs to
        # One timer checks the calls in flight, rather than one timer per call.
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_every = min(max((call_timeout or 1.0) / 8, 0.01), 1.0)
        _pools.add(self)

    # -- calls -------------------------------------------------------------------------

    async def run(self, call: Call) -> Any:
        """Send ``call``, wait for its reply, and return ``call.finish(result)``."""
        if self._pid != os.getpid():
            self.forget()
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._adopt(loop)
        operation = OPERATIONS[call.method]
        hold = self._hold.get()
        if hold is not None and not hold.done:
            return call.finish(await self._run_held(hold, call, operation))
        if operation.kind is Kind.RESERVATION:
            hold = await self._new_hold()
            return call.finish(await self._run_held(hold, call, operation))
        channel = self._pick()
        while channel is None:
            await self._wait_for_room()
            channel = self._pick()
        channel.users += 1
        try:
            result = await self._round_trip(channel, call, operation, held=False)
        finally:
            channel.users -= 1
            if self._room:
                self._make_room()
        return call.finish(result)

    async def _run_held(self, hold: Hold, call: Call, operation: Operation) -> Any:
        async with hold.turn:
            if hold.lost is not None:
                self._refuse_while_lost(hold, call)
            try:
                result = await self._round_trip(hold.channel, call, operation, held=bool(hold.held))
            except BaseException as error:
                if hold.held and not hold.channel.usable and hold.lost is None:
                    hold.lost = f"broke during {call.method}() ({type(error).__name__})"
                self._note_reservations(hold, call, None)
                raise
            self._note_reservations(hold, call, result)
            return result

    async def _round_trip(
        self, channel: Channel, call: Call, operation: Operation, *, held: bool
    ) -> Any:
        """Run ``call`` on ``channel``, within the call timeout: once more on a new
        connection if it was cut off and sending it again is safe."""
        number = 0  # a write's number in the channel's session, once sent
        request = b""
        for attempt in (1, 2):
            try:
                protocol = channel.protocol
                if protocol is None or protocol.broken is not None or protocol.paused:
                    protocol = await self._ready(channel, held=held)
                # From numbering to sending, nothing is awaited: the server must get a
                # session's writes in the order of their numbers.
                if not request:
                    if operation.writes:
                        channel.last_number += 1
                        number = channel.last_number
                    request = store_request(call.method, call.args, number)
                elif number and channel.last_number != number:
                    raise self._cut_off(
                        call.method, Broken("reconnected"), "later writes went on it first"
                    )
                waiter = protocol.send(request)
                if self.call_timeout is not None and call.waits is not None:
                    channel.deadline = protocol.loop.time() + self.call_timeout + call.waits
                    if self._watchdog is None:
                        self._watchdog = protocol.loop.call_later(self._watch_every, self._watch)
                else:
                    channel.deadline = None
                reply = await waiter
            except Broken as broken:
                instance = channel.instance
                self._check_resend(call, operation, number, broken, attempt, held=held)
                await self._connected(channel, held=False)
                if number and (channel.instance != instance or not channel.session_known):
                    raise self._cut_off(
                        call.method, broken, "the server restarted or forgot this client since"
                    ) from None
                continue
            except _TimedOut:
                channel.close(f"timed out during {call.method}()")
                raise not_answered(self.address, call.method, self.call_timeout) from None
            except asyncio.CancelledError:
                if operation.kind is Kind.RESERVATION:
                    # What it was taking or freeing may be the connection's when the reply
                    # comes, with nobody to free it: closing makes the server free it.
                    channel.close(f"was closed: {call.method}() was cancelled")
                raise
            return outcome(*load_reply(reply), self.address, call.method)
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_resend(
        self,
        call: Call,
        operation: Operation,
        number: int,
        broken: Broken,
        attempt: int,
        *,
        held: bool,
    ) -> None:
        """Raise unless ``call``, cut off by ``broken``, may be sent again."""
        if held:
            raise self._lock_lost_now(call.method)
        if operation.kind is Kind.RESERVATION:
            raise ConnectionLost(
                f"the connection to the server at {self.address} broke during "
                f"{call.method}() ({broken})",
                address=str(self.address),
            )
        if attempt > 1:
            raise self._cut_off(call.method, broken, "it broke again")
        if number and broken.in_flight > 1:
            raise self._cut_off(call.method, broken, "other calls were in flight on it")

    async def _ready(self, channel: Channel, *, held: bool) -> FrameProtocol:
        """``channel``'s connection, made if need be, once it can take a request."""
        await self._connected(channel, held=held)
        protocol = channel.protocol
        assert protocol is not None
        if protocol.paused:
            await protocol.writable()
        return protocol

    def _cut_off(self, method: str, broken: Broken, why: str) -> ConnectionLost:
        return ConnectionLost(
            f"the connection to the server at {self.address} broke during {method}() "
            f"({broken}), and {why}: the call may or may not have taken effect",
            address=str(self.address),
        )

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Belong to ``loop``, the first one that uses this pool; refuse any other."""
        if self._loop is not None and self._loop.is_closed():
            self.forget(close=False)  # that loop is gone, and its connections with it
            self._loop = None
        if self._loop is None:
            self._loop = loop
            return
        raise WrongEventLoop(
            f"this AsyncSharedState (of the server at {self.address}) was made in another "
            "event loop, and its connections belong to that loop. Call `await "
            "get_shared_state()` in this one: each loop gets its own state"
        )

    def _watch(self) -> None:
        """Time out the calls whose reply is overdue; again later while calls are in flight.

        A call times out between ``call_timeout`` and ``call_timeout`` plus an eighth of
        it (at most a second) after it was sent.
        """
        self._watchdog = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        in_flight = False
        for channel in self._channels():
            protocol = channel.protocol
            if protocol is None or not protocol.waiting:
                continue
            in_flight = True
            if channel.deadline is None or now < channel.deadline:
                continue
            # Every call on it waits behind the overdue one: they all time out.
            for waiter in protocol.waiting:
                if not waiter.done():
                    waiter.set_exception(_TimedOut())
            channel.close("timed out")
        if in_flight:
            self._watchdog = loop.call_later(self._watch_every, self._watch)

    # -- choosing a channel --------------------------------------------------------------

    def _pick(self) -> Channel | None:
        """The channel for the next call, or None if every one is full."""
        best: Channel | None = None
        for channel in self._shared:
            users = channel.users
            if users == 0:
                return channel
            if best is None or users < best.users:
                best = channel
        if len(self._shared) < self.max_connections:
            channel = Channel()
            self._shared.append(channel)
            return channel
        if best is not None and best.users < PIPELINE_DEPTH:
            return best
        return None

    async def _wait_for_room(self) -> None:
        room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._room.append(room)
        try:
            await room
        except asyncio.CancelledError:
            if room.done() and not room.cancelled():
                self._make_room()  # pass the turn on
            raise

    def _make_room(self) -> None:
        while self._room:
            room = self._room.pop(0)
            if not room.done():
                room.set_result(None)
                return

    async def _connected(self, channel: Channel, *, held: bool) -> None:
        """Give ``channel`` a live connection (one attempt, however many callers wait)."""
        if channel.usable:
            return
        if held:
            raise self._lock_lost_now("a call")  # reconnecting would run it unprotected
        if channel.connecting is None or channel.connecting.done():
            channel.connecting = asyncio.get_running_loop().create_task(self._open(channel))
            channel.connecting.add_done_callback(_retrieve)
        await asyncio.shield(channel.connecting)

    async def _open(self, channel: Channel) -> None:
        hello = Hello(f"aio-client-{os.getpid()}", channel.session, resume=channel.connected_before)
        opened = await self._connect(hello)
        channel.protocol = opened.protocol
        channel.instance = opened.instance
        channel.session_known = opened.session_known
        channel.connected_before = True

    # -- what a task holds -------------------------------------------------------------

    async def _new_hold(self) -> Hold:
        if self._hold_slots is None:
            self._hold_slots = asyncio.Semaphore(self.max_connections)
        await self._hold_slots.acquire()
        channel = self._spare.pop() if self._spare else Channel()
        hold = Hold(channel)
        self._holds.add(hold)
        self._hold.set(hold)
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(lambda _: self._holder_ended(hold))
        return hold

    def _holder_ended(self, hold: Hold) -> None:
        """The task that took the hold ended holding something (an ``acquire()`` never
        released): close its connection, so the server frees it, as a thread's
        connection closes when the thread ends."""
        if hold.done:
            return
        hold.lost = "was closed: the task that took it ended without freeing it"
        hold.channel.close(hold.lost)
        hold.held.clear()
        self._end_hold(hold)

    def _note_reservations(self, hold: Hold, call: Call, result: Any) -> None:
        method = call.method
        if method == "lock_acquire":
            if result:
                hold.held.add(LOCK)
        elif method == "lock_release":
            hold.held.discard(LOCK)
        elif method == "edit_begin":
            if result is not None:
                hold.held.add(("edit", call.args[0]))
        elif method in ("edit_commit", "edit_abort"):
            hold.held.discard(("edit", call.args[0]))
        if not hold.held:
            self._end_hold(hold)

    def _end_hold(self, hold: Hold) -> None:
        """The task holds nothing any more: its channel is kept for the next hold."""
        if hold.done:
            return
        hold.done = True
        self._holds.discard(hold)
        if self._hold.get() is hold:
            self._hold.set(None)
        channel = hold.channel
        if (channel.usable or channel.opening) and len(self._spare) < self.max_connections:
            self._spare.append(channel)
        else:
            channel.discard()
        if self._hold_slots is not None:
            self._hold_slots.release()

    def _refuse_while_lost(self, hold: Hold, call: Call) -> None:
        """A call from a task whose lock or edit was lost: always LockLost, until it
        leaves the block."""
        error = lock_lost(self.address, hold.lost, hold.held, "task")
        if call.method == "lock_release":
            hold.held.discard(LOCK)
        elif call.method in ("edit_commit", "edit_abort"):
            hold.held.discard(("edit", call.args[0]))
        if not hold.held:
            self._end_hold(hold)
        raise error

    def _lock_lost_now(self, method: str) -> LockLost:
        hold = self._hold.get()
        assert hold is not None
        if hold.lost is None:
            hold.lost = f"broke during {method}()"
        return lock_lost(self.address, hold.lost, hold.held, "task")

    # -- connections -------------------------------------------------------------------

    def _channels(self) -> list[Channel]:
        return [*self._shared, *self._spare, *(hold.channel for hold in self._holds)]

    async def connect(self) -> None:
        """Open one connection now (starting the server if allowed): errors show at once."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._adopt(loop)
        channel = self._pick() or self._shared[0]
        await self._connected(channel, held=False)

    def close(self) -> None:
        """Close every connection; calls made later reconnect. Holds are lost."""
        for hold in list(self._holds):
            if hold.held and hold.lost is None:
                hold.lost = "was closed by aclose()"
        for channel in self._channels():
            channel.close("was closed by aclose()")
        self._spare.clear()

    async def aclose(self) -> None:
        self.close()

    def forget(self, *, close: bool = True) -> None:
        """Let go of every connection, and never use them again: in a forked child
        (``close``: close its copies of the parent's), or when this pool's loop is gone
        (its transports are that loop's business)."""
        for hold in list(self._holds):
            if hold.lost is None:
                hold.lost = "belongs to another process or event loop"
        for channel in self._channels():
            if channel.protocol is not None:
                if close:
                    channel.protocol.forget()
                else:
                    channel.protocol.broken = "belongs to an event loop that was closed"
        self._shared = []
        self._spare = []
        self._room = []
        self._hold_slots = None
        self._watchdog = None
        self._pid = os.getpid()

    @property
    def connections(self) -> int:
        """Connections open now: shared, kept for holds, or held by a task."""
        return sum(channel.usable for channel in self._channels())

    @property
    def holding(self) -> int:
        """Tasks holding (or taking) the lock or an edit now."""
        return sum(not hold.done for hold in self._holds)


def _retrieve(task: asyncio.Task[None]) -> None:
    # Every caller waiting for a connection gets its error; if all were cancelled, none
    # would have, and asyncio would log the error as never retrieved.
    if not task.cancelled():
        task.exception()


def _forget_inherited_pools() -> None:
    for pool in list(_pools):
        pool.forget()


os.register_at_fork(after_in_child=_forget_inherited_pools)
