"""The asyncio client's way to Redis: :class:`AsyncRedisTransport`, the Redis twin of
:class:`sharedstate.aio.pool.Pool`.

It runs the same store operations as the sync driver (:mod:`.operations`) with
``redis.asyncio``. Concurrent tasks share at most ``max_connections`` connections and
wait for one beyond that (back-pressure). What a task holds (the lock, its edits) is
that task's, in a context variable, so tasks it starts share it, as with the local
server. A watchdog task renews the leases of what is held while the holder lives.
As in the sync driver, nothing is resent behind the caller's back but reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import weakref
from typing import Any

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from ...address import Address
from ...client.commands import Call
from ...config import Settings
from ...errors import ServerError, WrongEventLoop
from ...protocol import OPERATIONS, READS
from .failures import translated, worth_resending
from .names import Names
from .operations import Command, Holder, Op, Operations, Plan, Run, Wait
from .support import ENDS_HOLD, TAKES, check_version, current_pid, pool_options, redis_py_url


class AsyncRedisTransport:
    """Store calls, made to Redis from one event loop; one per ``AsyncSharedState``."""

    def __init__(self, settings: Settings, *, max_connections: int) -> None:
        self.address: Address = settings.address
        self._settings = settings
        self._max_connections = max_connections
        self._operations = operations = Operations(Names(settings.prefix), settings.redis_lease)
        self._plans = {name: getattr(operations, name) for name in OPERATIONS}
        self._renew_every = settings.redis_lease / 3
        self._holder: contextvars.ContextVar[Holder] = contextvars.ContextVar("sharedstate_holder")
        self._holders: weakref.WeakSet[Holder] = weakref.WeakSet()
        self._watchdog: asyncio.Task[None] | None = None
        self._cleanups: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = self._new_client()
        self._pid = os.getpid()

    def _new_client(self) -> redis.asyncio.Redis:
        url = self.address.url
        assert url is not None
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            redis_py_url(url),
            max_connections=self._max_connections,
            timeout=None,  # a task waits for a connection as long as it takes
            retry=Retry(NoBackoff(), 0),  # nothing resent behind our back
            **pool_options(self._settings),
        )
        return redis.asyncio.Redis.from_pool(pool)  # closing the client closes the pool

    async def run(self, call: Call) -> Any:
        method = call.method
        operation = self._plans.get(method)
        if operation is None:
            raise ServerError(f"{method!r} is not a store operation")
        if self._pid != current_pid():
            self.forget()
        self._check_loop()
        holder = self._holder_of_task(method)
        operations = self._operations
        resend = method in READS
        while True:
            try:
                if holder.holds and method not in ENDS_HOLD:
                    await self._drive(operations.check_held(holder))
                result = await self._drive(operation(holder, *call.args))
            except RedisError as error:
                if resend and worth_resending(error):
                    resend = False  # a read is sent again once, on a new connection
                    continue
                timeout = self._settings.call_timeout
                raise translated(error, self.address, method, timeout) from None
            except asyncio.CancelledError:
                if holder.unsure:  # free what the task may have taken: in a task of its own
                    self._free_later(Holder(unsure=dict(holder.unsure)))
                    holder.unsure.clear()
                raise
            if holder.holds:
                self._watch()
            return call.finish(result)

    async def connect(self) -> None:
        """Check now that Redis answers, takes the password and is recent enough."""
        try:
            check_version(await self._client.info("server"), self.address)
        except RedisError as error:
            raise translated(error, self.address, "INFO", self._settings.call_timeout) from None

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        await self._client.aclose()

    def forget(self, *, close: bool = True) -> None:
        """In a forked child: new connections, and nothing held (the parent's tasks held it)."""
        self._pid = os.getpid()
        self._loop = None
        self._client = self._new_client()
        self._holder = contextvars.ContextVar("sharedstate_holder")
        self._holders = weakref.WeakSet()
        self._watchdog = None

    @property
    def connections(self) -> int:
        """Connections open now (for monitoring, and tests)."""
        pool = self._client.connection_pool
        made = [*pool._available_connections, *pool._in_use_connections]
        return sum(1 for conn in made if conn.is_connected)

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop.is_closed():
            # Its loop is gone, and its connections with it: start again in this one.
            self.forget()
            self._loop = loop
        elif loop is not self._loop:
            raise WrongEventLoop(
                f"this AsyncSharedState (of Redis at {self.address}) was made in another "
                "event loop, and its connections belong to that loop. Call `await "
                "get_shared_state()` in this one: each loop gets its own state"
            )

    def _holder_of_task(self, method: str) -> Holder:
        """What the current task holds: its own, or, in a task started while another
        held something, that one's (as with the local server's connections)."""
        holder = self._holder.get(None)
        if method not in TAKES:
            return holder if holder is not None else Holder()
        task = asyncio.current_task()
        if holder is None or (holder.owner is not task and holder.empty):
            # A holder only in the context this task was started with is its parent's
            # (or a sibling's): one that holds nothing is not shared.
            holder = Holder(owner=task)
            self._holder.set(holder)
            self._holders.add(holder)
        return holder

    async def _drive(self, plan: Plan) -> Any:
        """Run ``plan``: send what it yields, give it the replies (or Redis's errors)."""
        reply: Any = None
        failed: RedisError | None = None
        while True:
            try:
                op = plan.send(reply) if failed is None else plan.throw(failed)
            except StopIteration as done:
                return done.value
            try:
                reply, failed = await self._execute(op), None
            except RedisError as error:
                reply, failed = None, error

    async def _execute(self, op: Op) -> Any:
        client = self._client
        if isinstance(op, Command):
            return await client.execute_command(*op.args)  # type: ignore[no-untyped-call]
        if isinstance(op, Wait):
            # Not BLPOP: it would tie up one of the connections the tasks share, the
            # holder's release queued behind the waiters'. A sleep, longer each time.
            await asyncio.sleep(min(op.seconds, 0.002 * 2 ** min(op.attempt, 5)))
            return None
        if isinstance(op, Run):
            keys, script = op.keys, op.script
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *op.args)
            except NoScriptError:
                await client.script_load(script.source)
                return await client.evalsha(script.sha, len(keys), *keys, *op.args)
        async with client.pipeline(transaction=op.transaction) as pipeline:
            for command in op.commands:
                pipeline.execute_command(*command)
            return await pipeline.execute()

    def _free_later(self, orphan: Holder) -> None:
        async def free() -> None:
            with contextlib.suppress(Exception):
                await self._drive(self._operations.free_unsure(orphan))

        task = asyncio.get_running_loop().create_task(free())
        self._cleanups.add(task)  # kept until done: the loop holds tasks only weakly
        task.add_done_callback(self._cleanups.discard)

    # -- the watchdog: leases renewed while their holders live -----------------------

    def _watch(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._renew_every)
            pid = os.getpid()
            held = [h for holder in list(self._holders) if holder.pid == pid for h in holder.held()]
            if not held:
                return  # started again by the next hold
            for each in held:
                if not each.lost:
                    # Redis away: the next round tries again, within the lease.
                    with contextlib.suppress(RedisError):
                        await self._drive(self._operations.renew(each))
