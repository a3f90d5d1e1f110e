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

from .errors import LeaseExpired, LockError, Timeout

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


class LocalCaller:
    """A caller that is always there: for tests, in-process use and journal replay."""

    may_wait = True
    out_of_time = False

    def __init__(self, id: int) -> None:
        self.id = id


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


class Reservations:
    """The lock's owner and the keys being edited, with waits that notice hang-ups."""

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self.lock_owner: int | None = None
        self._lease_ends: float | None = None  # time.monotonic() when the lock is taken back
        self._lease: float | None = None
        self._lapsed: set[int] = set()  # callers whose lease ran out before they released
        self.editors: dict[Any, int] = {}
        # Called (holding the condition) with what was freed: LOCK, or (EDIT, key).
        self.on_free: Callable[[tuple[Hashable, ...]], None] = _nothing

    # -- the shared lock ---------------------------------------------------------------

    def acquire_lock(self, caller: Caller, timeout: float | None, lease: float | None) -> bool:
        if not self.lock_is_free() and self.lock_owner == caller.id:
            raise LockError(
                "this thread already holds state.lock, which is not reentrant; "
                "release it before acquiring it again"
            )
        if not self.wait(self.lock_is_free, caller, timeout, waits_for=LOCK):
            return False
        self.lock_owner = caller.id
        self._lapsed.discard(caller.id)
        self._lease = lease
        self._lease_ends = None if lease is None else time.monotonic() + lease
        return True

    def release_lock(self, caller: Caller) -> None:
        self.lock_is_free()  # a lease that just ran out is taken back first
        if caller.id in self._lapsed:
            self._lapsed.discard(caller.id)
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
        self.lock_owner = self._lease_ends = None
        self._freed(LOCK)

    def lock_is_free(self) -> bool:
        """Whether nobody holds the lock; takes it back first if its lease ran out."""
        if self.lock_owner is None:
            return True
        if self._lease_ends is None or time.monotonic() < self._lease_ends:
            return False
        logger.warning(
            "client #%d held state.lock past its %g s lease; the lock is freed",
            self.lock_owner,
            self._lease,
        )
        self._lapsed.add(self.lock_owner)
        self.lock_owner = self._lease_ends = None
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
        if not self.wait(lambda: key not in self.editors, caller, timeout, waits_for=(EDIT, key)):
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
        if self.editors:
            self.wait(
                lambda: self.editors.get(key, caller.id) == caller.id,
                caller,
                waits_for=(EDIT, key),
            )

    def wait_until_no_edits_but(self, caller: Caller) -> None:
        """Whole-state writes (clear, restore) wait until no other caller edits anything."""
        if self.editors:
            self.wait(
                lambda: all(owner == caller.id for owner in self.editors.values()),
                caller,
                waits_for=ANY_EDIT,
            )

    # -- housekeeping ----------------------------------------------------------------------

    def release_all(self, caller: Caller) -> list[str]:
        """Free the lock and the edits ``caller`` holds; say what was freed."""
        released = []
        freed: list[Hashable] = []
        self._lapsed.discard(caller.id)
        if self.lock_owner == caller.id:
            self.lock_owner = self._lease_ends = None
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
    ) -> bool:
        """Wait (holding the condition) until ``ready()``; False if ``timeout`` passes first.

        Only callers that may block (in-process ones) wait here; the event loop's get
        :class:`WouldWait` and are parked, and a client that hangs up is unparked.
        """
        if ready():
            return True
        if timeout is not None and (timeout <= 0 or caller.out_of_time):
            return False
        if not caller.may_wait:
            raise WouldWait(timeout, waits_for)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            slice_ = WAIT_POLL_SECONDS
            if deadline is not None:
                slice_ = min(slice_, deadline - time.monotonic())
                if slice_ <= 0:
                    return False
            self._cond.wait(slice_)
            if ready():
                return True


def _nothing(resources: tuple[Hashable, ...]) -> None:
    pass
