"""Who holds the shared lock and which keys are being edited, and waiting for them.

The lock and edits belong to a *caller*: one client connection. The server releases
everything a caller holds when its connection drops (:meth:`Reservations.release_all`),
so a worker killed while holding the lock does not block the others forever.

All state here is guarded by the store's condition, which the store passes in; every
method must be called with it held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from ..errors import LeaseExpired, LockError, Timeout

logger = logging.getLogger("sharedstate")

# What a waiting call waits for, so the event loop retries only the calls that can go on.
LOCK = "lock"
EDIT = "edit"  # (EDIT, key): the edit of one key
ANY_EDIT = "any edit"  # whole-state writes wait until nobody else edits anything

# How often a blocking wait checks ``ready()`` without being notified: a lock lease
# runs out without anyone releasing anything.
WAIT_POLL_SECONDS = 0.2


class Caller(Protocol):
    """The client connection on whose behalf an operation runs."""

    @property
    def id(self) -> int: ...

    @property
    def may_wait(self) -> bool:
        """False on the server's event loop, which must never block: see :class:`WouldWait`."""
        ...

    @property
    def out_of_time(self) -> bool:
        """Set by the event loop when a call it parked has used up its timeout."""
        ...

    #: Set here when its lock lease ran out; the event loop then refuses its calls.
    lapsed: bool


class LocalCaller:
    """A caller that is always there: for tests, in-process use and journal replay."""

    may_wait = True
    out_of_time = False

    def __init__(self, id: int) -> None:
        self.id = id
        self.lapsed = False


class WouldWait(Exception):
    """The operation would have to wait (for the lock, or another client's edit).

    Raised only for callers that may not wait, before the operation changed anything,
    so the event loop can park the call and run it again when something is freed
    (:attr:`Reservations.on_free`), or once ``timeout`` seconds have passed.
    """

    def __init__(self, timeout: float | None, waits_for: Hashable) -> None:
        super().__init__(timeout, waits_for)
        self.timeout = timeout
        self.waits_for = waits_for  # LOCK, (EDIT, key) or ANY_EDIT


# How a waiting caller means to use what it waits for, for the queue (see _conflicts).
TAKE = "take"  # the lock, or an edit: it will hold it
WRITE = "write"  # a write of a key being edited: it waits for the edit to end
WHOLE = "whole"  # clear() or restore: it waits until no other caller edits anything


class Reservations:
    """The lock's owner and the keys being edited, with waits served in arrival order.

    Waiting callers queue: a caller may not take what it waits for while an earlier
    caller waits for something that conflicts (the same lock or key; for ``clear()``,
    any new edit). Without the queue, a newcomer could take the lock or start an edit
    the moment it was freed, ahead of those waiting; and ``clear()``, which needs a
    moment with no edit open, starved for good while edits kept overlapping.
    """

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self.lock_holder: Caller | None = None
        self._lease_ends: float | None = None  # time.monotonic() when the lock is taken back
        self._lease: float | None = None
        self.editors: dict[Any, int] = {}
        # Who waits, in arrival order: caller id -> (how, what it waits for).
        self._queue: dict[int, tuple[str, Hashable]] = {}
        # Called (holding the condition) with what was freed: LOCK, or (EDIT, key).
        self.on_free: Callable[[tuple[Hashable, ...]], None] = _nothing

    @property
    def lock_owner(self) -> int | None:
        return None if self.lock_holder is None else self.lock_holder.id

    # -- the shared lock ---------------------------------------------------------------

    def acquire_lock(self, caller: Caller, timeout: float | None, lease: float | None) -> bool:
        if not self.lock_is_free() and self.lock_owner == caller.id:
            raise LockError(
                "this thread already holds state.lock, which is not reentrant; "
                "release it before acquiring it again"
            )
        if not self.wait(self.lock_is_free, caller, timeout, waits_for=LOCK, how=TAKE):
            return False
        self.lock_holder = caller
        caller.lapsed = False
        self._lease = lease
        self._lease_ends = None if lease is None else time.monotonic() + lease
        return True

    def release_lock(self, caller: Caller) -> None:
        self.lock_is_free()  # a lease that just ran out is taken back first
        if caller.lapsed:
            caller.lapsed = False
            raise LeaseExpired(
                "state.lock.release() came after the lock's lease ran out, so the server "
                "had already freed the lock and another thread or process may have held it "
                "in the meantime; give acquire() a longer lease, or keep the work under the "
                "lock shorter"
            )
        if self.lock_owner != caller.id:
            holder = "nobody" if self.lock_owner is None else "another thread or process"
            raise LockError(
                f"state.lock.release() by a thread that does not hold it (held by {holder}); "
                "release the lock from the thread that acquired it"
            )
        self.lock_holder = self._lease_ends = None
        self._freed(LOCK)

    def lock_is_free(self) -> bool:
        """Whether nobody holds the lock; takes it back first if its lease ran out."""
        holder = self.lock_holder
        if holder is None:
            return True
        if self._lease_ends is None or time.monotonic() < self._lease_ends:
            return False
        logger.warning(
            "client #%d held state.lock past its %g s lease; the lock is freed",
            holder.id,
            self._lease,
        )
        holder.lapsed = True  # its calls now fail until it releases
        self.lock_holder = self._lease_ends = None
        self._freed(LOCK)
        return True

    # -- edits -----------------------------------------------------------------------------

    def wait_to_edit(self, caller: Caller, key: Any, timeout: float | None) -> None:
        """Wait until nobody edits ``key``; the caller then reserves it with :meth:`start_edit`."""
        if self.editors.get(key) == caller.id:
            raise LockError(
                f"this thread is already editing state[{key!r}]; nested edit() of the "
                "same key would wait for itself forever"
            )
        ready = lambda: key not in self.editors  # noqa: E731
        if not self.wait(ready, caller, timeout, waits_for=(EDIT, key), how=TAKE):
            raise Timeout(
                f"state[{key!r}] was being edited by another client for more than "
                f"{timeout} s; try again, or raise the timeout",
                key=key,
            )

    def start_edit(self, caller: Caller, key: Any) -> None:
        self.editors[key] = caller.id

    def check_editing(self, caller: Caller, key: Any) -> None:
        if self.editors.get(key) != caller.id:
            raise LockError(
                f"no edit of state[{key!r}] is open in this thread (its connection may "
                "have dropped, which ends the edit); the new value was not written",
                key=key,
            )

    def end_edit(self, caller: Caller, key: Any) -> None:
        if self.editors.get(key) == caller.id:
            del self.editors[key]
            self._freed((EDIT, key))

    def wait_until_not_edited(self, caller: Caller, key: Any) -> None:
        """Writes of a key wait while another caller edits it."""
        if self.editors.get(key, None) == caller.id:
            # The editor's own write of the key it edits: never behind the callers that
            # wait for that edit to end (they would wait for it, and it for them).
            self._queue.pop(caller.id, None)
            return
        if self.editors:
            self.wait(
                lambda: self.editors.get(key, caller.id) == caller.id,
                caller,
                waits_for=(EDIT, key),
                how=WRITE,
            )
        elif self._queue:
            self._queue.pop(caller.id, None)  # it may have waited, and goes on now

    def wait_until_no_edits_but(self, caller: Caller) -> None:
        """Whole-state writes (clear, restore) wait until no other caller edits anything."""
        if self.editors:
            self.wait(
                lambda: all(owner == caller.id for owner in self.editors.values()),
                caller,
                waits_for=ANY_EDIT,
                how=WHOLE,
            )
        elif self._queue:
            self._queue.pop(caller.id, None)  # it may have waited, and goes on now

    # -- housekeeping ----------------------------------------------------------------------

    def release_all(self, caller: Caller) -> list[str]:
        """Free the lock and the edits ``caller`` holds; say what was freed."""
        released = []
        freed: list[Hashable] = []
        caller.lapsed = False
        self._queue.pop(caller.id, None)
        if self.lock_owner == caller.id:
            self.lock_holder = self._lease_ends = None
            released.append("state.lock")
            freed.append(LOCK)
        for key, owner in list(self.editors.items()):
            if owner == caller.id:
                del self.editors[key]
                released.append(f"the edit of state[{key!r}]")
                freed.append((EDIT, key))
        if freed:
            self._freed(*freed)
        return released

    def _freed(self, *resources: Hashable) -> None:
        self._cond.notify_all()
        self.on_free(resources)

    def wait(
        self,
        ready: Callable[[], bool],
        caller: Caller,
        timeout: float | None = None,
        *,
        waits_for: Hashable,
        how: str,
    ) -> bool:
        """Wait (holding the condition) until ``ready()`` and no earlier waiter conflicts;
        False if ``timeout`` passes first.

        Only callers that may block (in-process ones) wait here; the event loop's get
        :class:`WouldWait` and are parked, and a client that hangs up is unparked.
        """

        if not self._queue and ready():  # the usual case: nobody waits, it is free
            return True

        def go() -> bool:
            return ready() and not self._behind_earlier(caller, how, waits_for)

        if go():
            self._queue.pop(caller.id, None)
            return True
        if timeout is not None and (timeout <= 0 or caller.out_of_time):
            self._queue.pop(caller.id, None)
            return False
        self._queue.setdefault(caller.id, (how, waits_for))
        if not caller.may_wait:
            raise WouldWait(timeout, waits_for)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                slice_ = WAIT_POLL_SECONDS
                if deadline is not None:
                    slice_ = min(slice_, deadline - time.monotonic())
                    if slice_ <= 0:
                        return False
                self._cond.wait(slice_)
                if go():
                    return True
        finally:
            self._queue.pop(caller.id, None)

    def _behind_earlier(self, caller: Caller, how: str, waits_for: Hashable) -> bool:
        """Whether a caller that queued earlier waits for something this one would take."""
        if not self._queue:
            return False
        holds_an_edit = caller.id in self.editors.values()
        for other, (their_how, their_wait) in self._queue.items():
            if other == caller.id:
                return False
            if _conflicts(how, waits_for, their_how, their_wait, holds_an_edit):
                return True
        return False


def _conflicts(
    how: str, waits_for: Hashable, their_how: str, their_wait: Hashable, holds_an_edit: bool
) -> bool:
    """Must a caller wanting ``waits_for`` (``how``) let an earlier waiter go first?"""
    if their_how == WHOLE:
        # clear() waits for the edits open now; new edits must not keep it waiting. A
        # caller that already edits is let through: clear() waits for it anyway.
        return how == TAKE and waits_for != LOCK and not holds_an_edit
    if how == WHOLE:
        return False
    return waits_for == their_wait  # the same lock, or the same key's edit


def _nothing(resources: tuple[Hashable, ...]) -> None:
    pass
