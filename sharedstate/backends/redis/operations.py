"""Every store operation of :data:`sharedstate.protocol.OPERATIONS`, done with Redis.

Each method here takes the same arguments as the local server's store method of the
same name (:class:`sharedstate.server.store.Store`) and gives the same result, so the
clients' commands (:mod:`sharedstate.client.commands`) work unchanged on either
backend. A method does no I/O itself: it is a generator that yields what to send to
Redis (a :class:`Command`, a :class:`Pipeline` or a :class:`Run` of a script) and is
sent back the reply. The sync and asyncio drivers (:mod:`.sync`, :mod:`.aio`) run the
same generators, the one with ``redis.Redis``, the other with ``redis.asyncio``.

What the caller holds (the lock, edits) is in its :class:`Holder`: a thread's with the
sync client, a task's with the asyncio one, as with the local server's connections.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import pickle
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError, ResponseError

from ...codec import DATA, NAMESPACE, PROTOCOL, decode, place
from ...errors import (
    Conflict,
    KeyNotFound,
    LeaseExpired,
    LockError,
    LockLost,
    Timeout,
)
from ...nested import apply_method, check_method, check_nesting, check_number, unpack_call, walk
from .names import Names
from .scripts import COMMIT, INCR, RELEASE, RENEW, SET_DEFAULT, SWAP, Script, digest
from .values import PICKLE_START, amount_text, from_redis, number_text, to_redis

SCAN_COUNT = 1000  # keys asked for per SCAN step, and values per MGET
LONGEST_WAKE_WAIT = 0.5  # s between looks at a held lock, for a holder that died
SWAP_TRIES = 1000  # writes inside one value, raced by others, before giving up


@dataclass(frozen=True, slots=True)
class Command:
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Commands sent together in one round trip; in MULTI/EXEC if ``transaction``."""

    commands: tuple[tuple[Any, ...], ...]
    transaction: bool = False


@dataclass(frozen=True, slots=True)
class Run:
    script: Script
    keys: tuple[bytes, ...]
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait up to ``seconds`` for a release of what ``woken`` wakes waiters for.

    ``attempt`` counts the waits so far: a driver that can't block on Redis without
    tying up a shared connection (asyncio's) sleeps instead, longer each time.
    """

    woken: bytes
    seconds: float
    attempt: int


Op = Command | Pipeline | Run | Wait
Plan = Generator[Op, Any, Any]


@dataclass(eq=False)
class Held:
    """The lock or an edit, held by one caller: its name in Redis and the caller's token.

    Redis frees it when its lease (SHAREDSTATE_REDIS_LEASE) runs out, unless the
    watchdog renews it first, as it does while the holder lives: so a dead holder's is
    freed within one lease. A lease the caller chose (``until``) ends it then, at the
    latest.
    """

    name: bytes
    token: bytes
    confirmed: float  # monotonic time at which it was last known held for a whole lease
    until: float | None = None  # monotonic end of the lease the caller chose
    lost: bool = False  # Redis no longer had it (restarted, or this process paused)
    began_with: bytes = b""  # an edit: the digest of the value it began with


@dataclass(eq=False)
class Holder:
    """What one thread (sync) or task (asyncio) holds. Reset in a forked child."""

    lock: Held | None = None
    edits: dict[Any, Held] = field(default_factory=dict)
    # Tokens Redis may hold for us without our knowing: a take or a release whose reply
    # never came (cut off, or the task cancelled). The drivers free them (free_unsure).
    unsure: dict[bytes, bytes] = field(default_factory=dict)
    pid: int = field(default_factory=os.getpid)
    owner: object = None  # the asyncio task it was made for

    @property
    def empty(self) -> bool:
        return self.lock is None and not self.edits and not self.unsure

    def held(self) -> list[Held]:
        return ([self.lock] if self.lock is not None else []) + list(self.edits.values())

    @property
    def holds(self) -> bool:
        return self.lock is not None or bool(self.edits)


class Operations:
    """The store operations on Redis, for one app's prefix."""

    def __init__(self, names: Names, lease: float) -> None:
        self.names = names
        self.lease_ms = _ms(lease)

    # -- reads ---------------------------------------------------------------------

    def lookup(self, holder: Holder, key: Any) -> Plan:
        raw = yield Command(("GET", self.names.key(key)))
        return None if raw is None else from_redis(raw)

    def get_many(self, holder: Holder, keys: list[Any]) -> Plan:
        if not keys:
            return []
        raws = yield Command(("MGET", *map(self.names.key, keys)))
        return [None if raw is None else from_redis(raw) for raw in raws]

    def contains(self, holder: Holder, key: Any) -> Plan:
        return bool((yield Command(("EXISTS", self.names.key(key)))))

    def length(self, holder: Holder) -> Plan:
        return len((yield from self._scan(self.names.data_pattern)))

    def keys(self, holder: Holder) -> Plan:
        names = yield from self._scan(self.names.data_pattern)
        return [self.names.key_of(name) for name in names]

    def items(self, holder: Holder) -> Plan:
        names = yield from self._scan(self.names.data_pattern)
        found = yield from self._values(names)
        return [(self.names.key_of(name), data) for name, data in found]

    def values(self, holder: Holder) -> Plan:
        return [data for _, data in (yield from self.items(holder))]

    def copy(self, holder: Holder) -> Plan:
        return dict((yield from self.items(holder)))

    def ttl(self, holder: Holder, key: Any) -> Plan:
        left = yield Command(("PTTL", self.names.key(key)))
        if left == -2:
            raise KeyNotFound(key)
        return None if left == -1 else max(0.0, left / 1000)

    # -- writes --------------------------------------------------------------------

    def set(self, holder: Holder, key: Any, data: bytes, ttl: float | None = None) -> Plan:
        if _at_once(ttl):  # expired as soon as written: as good as deleted
            yield Command(("DEL", self.names.key(key)))
            return
        yield Command(("SET", self.names.key(key), to_redis(data), *_px(ttl)))

    def add(self, holder: Holder, key: Any, data: bytes, ttl: float | None = None) -> Plan:
        if _at_once(ttl):
            return not (yield Command(("EXISTS", self.names.key(key))))
        done = yield Command(("SET", self.names.key(key), to_redis(data), "NX", *_px(ttl)))
        return bool(done)

    def delete(self, holder: Holder, key: Any) -> Plan:
        return bool((yield Command(("DEL", self.names.key(key)))))

    def setdefault(self, holder: Holder, key: Any, data: bytes) -> Plan:
        found = yield Run(SET_DEFAULT, (self.names.key(key),), (to_redis(data),))
        return data if found is None else from_redis(found)

    def pop(self, holder: Holder, key: Any) -> Plan:
        raw = yield Command(("GETDEL", self.names.key(key)))
        return None if raw is None else from_redis(raw)

    def update(
        self, holder: Holder, pairs: list[tuple[Any, bytes]], ttl: float | None = None
    ) -> Plan:
        if not pairs:
            return
        if ttl is None:
            flat = [part for key, data in pairs for part in (self.names.key(key), to_redis(data))]
            yield Command(("MSET", *flat))
            return
        if _at_once(ttl):
            yield Command(("DEL", *(self.names.key(key) for key, _ in pairs)))
            return
        px = _px(ttl)
        sets = tuple(("SET", self.names.key(key), to_redis(data), *px) for key, data in pairs)
        yield Pipeline(sets, transaction=True)

    def delete_many(self, holder: Holder, keys: list[Any]) -> Plan:
        if not keys:
            return 0
        return int((yield Command(("DEL", *map(self.names.key, keys)))))

    def clear(self, holder: Holder) -> Plan:
        yield from self._unlink(self.names.data_pattern)

    def incr(self, holder: Holder, key: Any, amount: int | float, ttl: float | None = None) -> Plan:
        check_number(amount, "the amount to add")
        name = self.names.key(key)
        if ttl is None and type(amount) is int:
            # The common case in one plain command. Redis refuses it, changing nothing,
            # for a pickled number, a float, or past 64 bits: then the script below.
            try:
                return (yield Command(("INCRBY", name, amount)))
            except ResponseError:
                pass
        ttl_ms = b"" if ttl is None else b"0" if _at_once(ttl) else str(_ms(ttl)).encode()
        for _ in range(SWAP_TRIES):
            text = yield Run(INCR, (name,), (amount_text(amount), ttl_ms))
            if text is not None:
                number = number_text(text)
                assert number is not None, text
                return number
            # A number Redis can't add to (a pickled one, or an int past 64 bits): here.
            raw = yield Command(("GET", name))
            if raw is None:
                continue  # deleted meanwhile: the script creates it
            value = _loaded(raw, DATA, (key,))
            check_number(value, (key,))
            total = value + amount
            new = to_redis(pickle.dumps(total, protocol=PROTOCOL))
            if (yield Run(SWAP, (name,), (digest(raw), new, b"keep"))):
                return total
        raise _too_busy(place(DATA, (key,)))

    def expire(self, holder: Holder, key: Any, ttl: float) -> Plan:
        if ttl <= 0 or _at_once(ttl):
            return (yield from self.delete(holder, key))
        return bool((yield Command(("PEXPIRE", self.names.key(key), _ms(ttl)))))

    def persist(self, holder: Holder, key: Any) -> Plan:
        return bool((yield Command(("PERSIST", self.names.key(key)))))

    def nested(
        self, holder: Holder, space: str, path: tuple[Any, ...], method: str, call_data: bytes
    ) -> Plan:
        """A container method on the dict or list at ``path``: read, apply, swap back.

        The value is read, changed here, and written back only if nobody wrote it in
        between (else read again), so no write is lost; its expiry is kept.
        """
        where = functools.partial(place, space, path)
        name = self._name(space, path[0])
        for _ in range(SWAP_TRIES):
            # Decoded for each try: a method may keep its arguments in the value.
            call = decode(call_data, where, what=f"the value passed to {method}() on")
            args, kwargs, expectations = unpack_call(call, lambda: f"{where()}.{method}()")
            check_nesting(path, args, kwargs, where)
            raw = yield Command(("GET", name))
            if raw is None:
                raise KeyNotFound(path[0], "state.namespace" if space == NAMESPACE else "state")
            root = _loaded(raw, space, path[:1])
            container = walk(root, space, path, expectations)
            check_method(container, method, where)
            result = apply_method(container, method, args, kwargs, where)
            new = to_redis(pickle.dumps(root, protocol=PROTOCOL))
            if (yield Run(SWAP, (name,), (digest(raw), new, b"keep"))):
                return pickle.dumps(result, protocol=PROTOCOL)
        raise _too_busy(where())

    # -- the namespace ---------------------------------------------------------------

    def ns_lookup(self, holder: Holder, name: str) -> Plan:
        raw = yield Command(("GET", self.names.attribute(name)))
        return None if raw is None else from_redis(raw)

    def ns_set(self, holder: Holder, name: str, data: bytes) -> Plan:
        yield Command(("SET", self.names.attribute(name), to_redis(data)))

    def ns_delete(self, holder: Holder, name: str) -> Plan:
        return bool((yield Command(("DEL", self.names.attribute(name)))))

    def ns_items(self, holder: Holder) -> Plan:
        names = yield from self._scan(self.names.namespace_pattern)
        found = yield from self._values(names)
        return [(self.names.attribute_of(name), data) for name, data in found]

    # -- the lock ------------------------------------------------------------------

    def lock_acquire(self, holder: Holder, wait: float | None, lease: float | None) -> Plan:
        if holder.lock is not None:
            raise LockError(
                "this thread already holds state.lock, which is not reentrant; "
                "release it before acquiring it again"
            )
        held = yield from self._take(holder, self.names.lock, wait, lease)
        holder.lock = held
        holder.unsure.pop(self.names.lock, None)
        return held is not None

    def lock_release(self, holder: Holder) -> Plan:
        held, holder.lock = holder.lock, None
        if held is None:
            holder_now = "another thread or process" if (yield from self._locked()) else "nobody"
            raise LockError(
                f"state.lock.release() by a thread that does not hold it (held by "
                f"{holder_now}); release the lock from the thread that acquired it"
            )
        holder.unsure[held.name] = held.token
        freed = yield Run(RELEASE, (held.name, self.names.woken(held.name)), (held.token,))
        holder.unsure.pop(held.name, None)
        if freed:
            return
        if _lapsed(held):
            raise LeaseExpired(
                "state.lock.release() came after the lock's lease ran out, so Redis had "
                "already freed the lock and another thread or process may have held it in "
                "the meantime; give acquire() a longer lease, or keep the work under the "
                "lock shorter"
            )
        raise lost_lock()

    def lock_locked(self, holder: Holder) -> Plan:
        return (yield from self._locked())

    def _locked(self) -> Plan:
        return bool((yield Command(("EXISTS", self.names.lock))))

    # -- edits: read-modify-write of one key -------------------------------------------

    def edit_begin(
        self, holder: Holder, key: Any, default: bytes | None, timeout: float | None
    ) -> Plan:
        """Reserve ``key`` for this caller and return its pickled value (or ``default``).

        Other edits of the key wait. Plain writes don't (unlike on the local server):
        if one changes the key meanwhile, the commit refuses with :class:`Conflict`.
        """
        if key in holder.edits:
            raise LockError(
                f"this thread is already editing state[{key!r}]; nested edit() of the "
                "same key would wait for itself forever"
            )
        held = yield from self._take(holder, self.names.edit(key), timeout, None)
        if held is None:
            raise Timeout(
                f"state[{key!r}] was being edited by another client for more than "
                f"{timeout} s; try again, or raise the timeout",
                key=key,
            )
        holder.edits[key] = held
        try:
            raw = yield Command(("GET", self.names.key(key)))
        except RedisError:
            del holder.edits[key]
            yield from self.free_unsure(holder)
            raise
        holder.unsure.pop(held.name, None)  # it is in edits now, which ends it
        if raw is None and default is None:
            yield from self._end_edit(holder, key)
            raise KeyNotFound(key)
        held.began_with = digest(raw)
        return default if raw is None else from_redis(raw)

    def edit_commit(self, holder: Holder, key: Any, data: bytes, ttl: float | None = None) -> Plan:
        held = holder.edits.pop(key, None)
        if held is None:
            raise LockError(
                f"no edit of state[{key!r}] is open in this thread; the new value was not "
                "written",
                key=key,
            )
        expiry = b"keep" if ttl is None else b"0" if _at_once(ttl) else str(_ms(ttl)).encode()
        keys = (self.names.key(key), held.name, self.names.woken(held.name))
        holder.unsure[held.name] = held.token
        done = yield Run(COMMIT, keys, (held.token, held.began_with, to_redis(data), expiry))
        holder.unsure.pop(held.name, None)
        if done == 1:
            return
        if done == 0:
            raise Conflict(
                f"state[{key!r}] was written while it was being edited (on Redis, a plain "
                "write, this thread's own included, doesn't wait for an edit), so the edit "
                "was not written; edit it again",
                key=key,
            )
        if done == 2:
            raise Conflict(
                f"state[{key!r}] expired while it was being edited (or a plain write "
                "deleted it), so the edit was not written; give the key a longer ttl, or "
                "edit it again",
                key=key,
            )
        raise LockLost(
            f"the edit of state[{key!r}] was lost before its commit (Redis no longer had it: "
            "restarted, or this process was paused for longer than SHAREDSTATE_REDIS_LEASE); "
            "the new value was not written",
            key=key,
        )

    def edit_abort(self, holder: Holder, key: Any) -> Plan:
        yield from self._end_edit(holder, key)

    def _end_edit(self, holder: Holder, key: Any) -> Plan:
        held = holder.edits.pop(key, None)
        if held is not None:
            holder.unsure[held.name] = held.token
            yield Run(RELEASE, (held.name, self.names.woken(held.name)), (held.token,))
            holder.unsure.pop(held.name, None)

    # -- holding: the lock's and the edits' tokens ------------------------------------

    def _take(self, holder: Holder, name: bytes, wait: float | None, lease: float | None) -> Plan:
        """Take ``name`` with a new token, waiting up to ``wait`` s (None: forever).

        Without a ``lease`` the default lease applies and the watchdog renews it while
        the holder lives. Returns the :class:`Held`, or None if the wait ran out; the
        token stays in ``holder.unsure`` until the caller has recorded what it holds.
        """
        token = os.urandom(16).hex().encode()
        lease_ms = self.lease_ms if lease is None else min(self.lease_ms, _ms(lease))
        deadline = None if wait is None else time.monotonic() + wait
        woken = self.names.woken(name)
        attempt = 0
        while True:
            holder.unsure[name] = token
            sent_at = time.monotonic()
            try:
                taken = yield Command(("SET", name, token, "NX", "PX", lease_ms))
            except RedisError:
                # It may have been taken, the reply lost: free it now rather than
                # leave it held by nobody until its lease runs out.
                yield from self.free_unsure(holder)
                raise
            if taken:
                until = None if lease is None else sent_at + lease
                return Held(name, token, confirmed=sent_at, until=until)
            holder.unsure.pop(name, None)
            left = LONGEST_WAKE_WAIT if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return None
            # A release pushes to ``woken``; a holder that died pushes nothing, so look
            # again at least every LONGEST_WAKE_WAIT s.
            yield Wait(woken, round(min(left, LONGEST_WAKE_WAIT), 3), attempt)
            attempt += 1

    def free_unsure(self, holder: Holder) -> Plan:
        """Free what ``holder`` may hold without knowing it, if its token still holds it
        (compare-and-delete: never another's); quietly if Redis can't be reached."""
        for name, token in list(holder.unsure.items()):
            holder.unsure.pop(name, None)
            with contextlib.suppress(RedisError):
                yield Run(RELEASE, (name, self.names.woken(name)), (token,))

    def renew(self, held: Held) -> Plan:
        """Extend a held lease by one more (never past the caller's own); mark it lost if
        Redis no longer has it."""
        now = time.monotonic()
        lease_ms = self.lease_ms
        if held.until is not None:
            lease_ms = min(lease_ms, round((held.until - now) * 1000))
            if lease_ms <= 0:
                return  # the caller's lease ends it
        if (yield Run(RENEW, (held.name,), (held.token, lease_ms))):
            held.confirmed = now
        else:
            held.lost = True

    def check_held(self, holder: Holder) -> Plan:
        """Before a call made while holding something: is it still held?

        The watchdog renews leases, but a process that was paused (SIGSTOP, a stuck VM)
        calls again before its watchdog runs: if a held lease was last confirmed more
        than half a lease ago, renew it here first. Raises :class:`LockLost` if the lock
        or an edit is gone, :class:`LeaseExpired` if the caller's lease of the lock ran out.
        """
        now = time.monotonic()
        for held in holder.held():
            if not held.lost and now - held.confirmed > self.lease_ms / 2000:
                yield from self.renew(held)
        lock = holder.lock
        if lock is not None and _lapsed(lock):
            raise lapsed_lock()
        if any(held.lost for held in holder.held()):
            raise lost_lock()

    # -- whole-state operations: dump and restore --------------------------------------

    def export_all(self, holder: Holder, with_expires: bool = False) -> Plan:
        """Every key and attribute with its pickle, and (``with_expires``) when keys expire.

        Walked with SCAN, so not one atomic moment: a write made meanwhile may or may
        not be in it.
        """
        names = yield from self._scan(self.names.data_pattern)
        pairs, expires = [], []
        for start in range(0, len(names), SCAN_COUNT):
            chunk = names[start : start + SCAN_COUNT]
            replies = yield Pipeline(tuple(c for n in chunk for c in (("GET", n), ("PTTL", n))))
            now = time.time()
            for name, raw, left in zip(chunk, replies[::2], replies[1::2], strict=True):
                if raw is None:
                    continue  # gone since the SCAN
                key = self.names.key_of(name)
                pairs.append((key, from_redis(raw)))
                if left >= 0:
                    expires.append((key, now + left / 1000))
        attributes = yield from self.ns_items(holder)
        if with_expires:
            return pairs, attributes, expires
        return pairs, attributes

    def restore(
        self,
        holder: Holder,
        pairs: list[tuple[Any, bytes]],
        attributes: list[tuple[str, bytes]],
        replace: bool,
        expires: list[tuple[Any, float]] | None = None,
    ) -> Plan:
        """Load a dump: replace this app's keys with it, or merge it into them.

        A key whose expiry time has passed is not loaded (it would have expired).
        """
        if replace:
            yield from self._unlink(self.names.data_pattern)
            yield from self._unlink(self.names.namespace_pattern)
        deadlines = dict(expires or ())
        now = time.time()
        writes: list[tuple[Any, ...]] = []
        for key, data in pairs:
            deadline = deadlines.get(key)
            if deadline is None:
                writes.append(("SET", self.names.key(key), to_redis(data)))
            elif deadline > now:
                at = ("PXAT", math.ceil(deadline * 1000))
                writes.append(("SET", self.names.key(key), to_redis(data), *at))
        writes += [("SET", self.names.attribute(n), to_redis(data)) for n, data in attributes]
        for start in range(0, len(writes), SCAN_COUNT):
            yield Pipeline(tuple(writes[start : start + SCAN_COUNT]))

    # -- walking the prefix --------------------------------------------------------------

    def _scan(self, pattern: bytes) -> Plan:
        """The names matching ``pattern``, each once (SCAN may repeat one)."""
        found: dict[bytes, None] = {}
        cursor = 0
        while True:
            cursor, names = yield Command(("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT))
            found.update(dict.fromkeys(names))
            if int(cursor) == 0:
                return list(found)

    def _values(self, names: list[bytes]) -> Plan:
        """``(name, pickle)`` of those of ``names`` still there."""
        found = []
        for start in range(0, len(names), SCAN_COUNT):
            chunk = names[start : start + SCAN_COUNT]
            raws = yield Command(("MGET", *chunk))
            found += [
                (n, from_redis(raw)) for n, raw in zip(chunk, raws, strict=True) if raw is not None
            ]
        return found

    def _unlink(self, pattern: bytes) -> Plan:
        names = yield from self._scan(pattern)
        for start in range(0, len(names), SCAN_COUNT):
            yield Command(("UNLINK", *names[start : start + SCAN_COUNT]))

    def _name(self, space: str, first: Any) -> bytes:
        return self.names.key(first) if space == DATA else self.names.attribute(first)


def _loaded(raw: bytes, space: str, path: tuple[Any, ...]) -> Any:
    """A stored value as a Python object, for the work done here."""
    if raw and raw[0] != PICKLE_START:
        number = number_text(raw)
        if number is not None:
            return number
    return decode(raw, functools.partial(place, space, path))


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _px(ttl: float | None) -> tuple[Any, ...]:
    return () if ttl is None else ("PX", _ms(ttl))


def _at_once(ttl: float | None) -> bool:
    """Whether ``ttl`` is under Redis's resolution (0.5 ms): the key expires at once."""
    return ttl is not None and round(ttl * 1000) <= 0


def _lapsed(held: Held) -> bool:
    return held.until is not None and time.monotonic() >= held.until


def lost_lock() -> LockLost:
    return LockLost(
        "state.lock (or an edit) was lost while this thread held it: Redis no longer had "
        "it (restarted without its data, or this process was paused for longer than "
        "SHAREDSTATE_REDIS_LEASE), so another process may hold it now; leave the `with` "
        "block (or release) and take it again"
    )


def lapsed_lock() -> LeaseExpired:
    return LeaseExpired(
        "state.lock's lease ran out while this thread held it, and Redis freed it for "
        "others; this thread must not go on as if it held it. Leave the `with "
        "state.lock` block (or call state.lock.release(), which raises this too), then "
        "acquire the lock again, with a longer lease"
    )


def _too_busy(where: str) -> Conflict:
    return Conflict(
        f"{where} was changed by other clients {SWAP_TRIES} times while this write tried "
        "to go in; try again",
        where=where,
    )
