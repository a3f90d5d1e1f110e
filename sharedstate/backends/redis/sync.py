"""The sync client's way to Redis: :class:`RedisTransport`, the Redis twin of
:class:`sharedstate.client.transport.Transport`.

It runs the store operations of :mod:`.operations` with redis-py, whose connection
pool is safe across threads and re-made after ``fork()``. What a thread holds (the lock,
its edits) is that thread's, as with the local server. A watchdog thread renews the
lease of everything held without a caller-chosen lease, so a living holder keeps it
and a dead one loses it within ``SHAREDSTATE_REDIS_LEASE`` seconds.

redis-py resends a command after a dropped connection by default, which can apply an
``INCR`` twice. Here nothing is resent but reads; a write cut off raises
:class:`~sharedstate.errors.ConnectionLost` ("may or may not have taken effect").
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from ...address import Address
from ...codec import Where, encode_within
from ...config import Settings
from ...errors import ServerError
from ...protocol import OPERATIONS, READS
from .failures import translated, worth_resending
from .names import Names
from .operations import Command, Holder, Op, Operations, Plan, Run, Wait
from .support import ENDS_HOLD, check_version, current_pid, pool_options, redis_py_url


class RedisTransport:
    """Store calls, made to Redis; one per :class:`~sharedstate.SharedState`."""

    def __init__(self, settings: Settings) -> None:
        self.address: Address = settings.address
        self.max_value_bytes = settings.max_value_bytes
        self.call_timeout = settings.call_timeout
        self._operations = operations = Operations(Names(settings.prefix), settings.redis_lease)
        self._plans = {name: getattr(operations, name) for name in OPERATIONS}
        self._renew_every = settings.redis_lease / 3
        assert settings.address.url is not None
        pool = redis.ConnectionPool.from_url(
            redis_py_url(settings.address.url),
            retry=Retry(NoBackoff(), 0),  # nothing resent behind our back: see above
            **pool_options(settings),
        )
        self._client = redis.Redis.from_pool(pool)  # closing the client closes the pool
        self._local = threading.local()
        self._holders: weakref.WeakSet[Holder] = weakref.WeakSet()
        self._closed = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._watchdog_pid = 0

    def encode(self, value: Any, where: Where) -> bytes:
        return encode_within(value, where, self.max_value_bytes)

    def call(self, method: str, *args: Any, waits: float | None = 0.0) -> Any:
        operation = self._plans.get(method)
        if operation is None:
            raise ServerError(f"{method!r} is not a store operation")
        holder = self._holder()
        operations = self._operations
        resend = method in READS
        while True:
            try:
                if (holder.lock is not None or holder.edits) and method not in ENDS_HOLD:
                    self._drive(operations.check_held(holder))
                result = self._drive(operation(holder, *args))
            except RedisError as error:
                if resend and worth_resending(error):
                    resend = False  # a read is sent again once, on a new connection
                    continue
                raise translated(error, self.address, method, self.call_timeout) from None
            except BaseException:  # Ctrl-C mid-call: free what we may have taken
                if holder.unsure:
                    with contextlib.suppress(Exception):
                        self._drive(self._operations.free_unsure(holder))
                raise
            if holder.holds:
                self._watch()
            return result

    def connect(self) -> None:
        """Check now that Redis answers, takes the password and is recent enough."""
        try:
            check_version(self._client.info("server"), self.address)
        except RedisError as error:
            raise translated(error, self.address, "INFO", self.call_timeout) from None

    def close(self) -> None:
        self._closed.set()
        self._client.close()

    def forget_inherited(self) -> None:
        """After ``fork()``: what the parent's threads held is not this process's.

        redis-py's pool notices the fork by itself and opens new connections.
        """
        self._local = threading.local()

    def _holder(self) -> Holder:
        holder: Holder | None = getattr(self._local, "holder", None)
        if holder is None or holder.pid != current_pid():  # none yet, or the parent's
            holder = self._local.holder = Holder()
            self._holders.add(holder)
        return holder

    def _drive(self, plan: Plan) -> Any:
        """Run ``plan``: send what it yields, give it the replies (or Redis's errors)."""
        reply: Any = None
        failed: RedisError | None = None
        while True:
            try:
                op = plan.send(reply) if failed is None else plan.throw(failed)
            except StopIteration as done:
                return done.value
            try:
                reply, failed = self._execute(op), None
            except RedisError as error:
                reply, failed = None, error

    def _execute(self, op: Op) -> Any:
        client = self._client
        if isinstance(op, Command):
            return client.execute_command(*op.args)  # type: ignore[no-untyped-call]
        if isinstance(op, Wait):  # for a release: this thread's connection may block
            return client.execute_command("BLPOP", op.woken, op.seconds)  # type: ignore[no-untyped-call]
        if isinstance(op, Run):
            keys, script = op.keys, op.script
            try:
                return client.evalsha(script.sha, len(keys), *keys, *op.args)
            except NoScriptError:  # a Redis that has not seen it (or restarted)
                client.script_load(script.source)
                return client.evalsha(script.sha, len(keys), *keys, *op.args)
        pipeline = client.pipeline(transaction=op.transaction)
        for command in op.commands:
            pipeline.execute_command(*command)  # type: ignore[no-untyped-call]
        return pipeline.execute()

    # -- the watchdog: leases renewed while their holders live -----------------------

    def _watch(self) -> None:
        if self._watchdog_pid == os.getpid() or self._closed.is_set():
            return
        self._watchdog_pid = os.getpid()  # a forked child starts its own
        self._watchdog = threading.Thread(
            target=self._renew_forever, name="sharedstate-redis-leases", daemon=True
        )
        self._watchdog.start()

    def _renew_forever(self) -> None:
        pid = os.getpid()
        while not self._closed.wait(self._renew_every) and pid == os.getpid():
            for holder in list(self._holders):
                if holder.pid != pid:
                    continue  # a parent's, inherited by this forked child: not ours
                for held in holder.held():
                    if held.lost:
                        continue
                    # Redis away: the next round tries again, within the lease.
                    with contextlib.suppress(RedisError):
                        self._drive(self._operations.renew(held))
