"""The memory bound, and which keys go when it is reached: the eviction policies.

The policies keep Redis's names and meanings (``maxmemory-policy``), so users can guess
them. Redis approximates LRU by sampling a few keys' access clocks; here an ordered dict
keeps the exact order of use (a move to its end per read, about 0.1 us), so
``allkeys-lru`` evicts exactly the least recently used key. It is kept only when an LRU
policy is configured, for all keys or only for those with a TTL.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import MemoryLimitReached

if TYPE_CHECKING:
    from .entries import Keyspace

NOEVICTION = "noeviction"
ALLKEYS_LRU = "allkeys-lru"
VOLATILE_LRU = "volatile-lru"
VOLATILE_TTL = "volatile-ttl"
POLICIES = (NOEVICTION, ALLKEYS_LRU, VOLATILE_LRU, VOLATILE_TTL)


class Recency:
    """Keys in the order they were last used, least recent first."""

    __slots__ = ("_order",)

    def __init__(self) -> None:
        self._order: OrderedDict[Any, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def touch(self, key: Any) -> None:
        """``key`` was just used (read or written)."""
        try:
            self._order.move_to_end(key)
        except KeyError:
            self._order[key] = None

    def forget(self, key: Any) -> None:
        self._order.pop(key, None)

    def clear(self) -> None:
        self._order.clear()

    def pop_least_recent(self) -> tuple[bool, Any]:
        """``(True, key)`` for the least recently used key, now forgotten; ``(False, None)``
        if there is none (keys may be ``None``)."""
        if not self._order:
            return False, None
        key, _ = self._order.popitem(last=False)
        return True, key

    def put_back(self, key: Any) -> None:
        """Make ``key`` the least recently used again (an eviction that didn't happen)."""
        self._order[key] = None
        self._order.move_to_end(key, last=False)


# Expired keys removed at a time when making room.
_EXPIRED_BATCH = 100

# The store's journaled removals: of keys whose deadline passed (with those deadlines,
# given back if the journal refuses), and of evicted keys.
RemoveExpired = Callable[[list[tuple[Any, float]]], None]
Evict = Callable[[list[Any]], None]


class MemoryBound:
    """Keeps the stored data under ``max_memory`` bytes (None: no bound).

    Before a write that grows the data, :meth:`make_room` removes expired keys, then
    keys as ``policy`` says, or refuses the write. It chooses; the store journals and
    removes (through the functions it passes), so that what is evicted is recorded
    before it goes.
    """

    def __init__(
        self, data: Keyspace, namespace: Keyspace, max_memory: int | None, policy: str
    ) -> None:
        self._data = data
        self._namespace = namespace
        self.max_memory = max_memory
        self.policy = policy
        if policy in (ALLKEYS_LRU, VOLATILE_LRU):
            data.recency = Recency()
            data.recency_of_all = policy == ALLKEYS_LRU

    def make_room(
        self, growth_of_write: Callable[[], int], remove_expired: RemoveExpired, evict: Evict
    ) -> None:
        """Before a write that adds ``growth_of_write()`` bytes: make it fit, or raise
        :class:`MemoryLimitReached` having removed nothing live.

        Without a bound nothing is measured (the write's arguments are checked later,
        by the journal).
        """
        if self.max_memory is None:
            return
        growth = growth_of_write()
        if growth <= 0:
            return
        used = self._data.measure() + self._namespace.measure()
        if used + growth <= self.max_memory:
            return
        taken = self._data.take_passed(_EXPIRED_BATCH)  # expired keys go first
        while taken:
            remove_expired(taken)
            used = self._data.used + self._namespace.used
            if used + growth <= self.max_memory:
                return
            taken = self._data.take_passed(_EXPIRED_BATCH)
        victims: list[tuple[Any, float | None]] = []  # with the deadlines taken from them
        while used + growth > self.max_memory:
            found, key, deadline = self._victim()
            if not found:
                break
            victims.append((key, deadline))
            used -= self._data.size_of(key, deadline_taken=deadline is not None)
        try:
            if used + growth > self.max_memory:
                raise MemoryLimitReached(self._full_message(used, growth))
            if victims:
                evict([key for key, _ in victims])
        except BaseException:
            self._give_back(victims)
            raise

    def _victim(self) -> tuple[bool, Any, float | None]:
        """The next key the policy removes, taken from the policy's order:
        ``(True, key, the deadline taken from it)``, or ``(False, None, None)``."""
        if self.policy == VOLATILE_TTL:
            taken = self._data.take_passed(1, now=math.inf)  # the soonest deadline
            return (True, *taken[0]) if taken else (False, None, None)
        if self._data.recency is not None:
            found, key = self._data.recency.pop_least_recent()
            return found, key, None
        return False, None, None

    def _give_back(self, victims: list[tuple[Any, float | None]]) -> None:
        """Undo :meth:`_victim` for keys that stay after all."""
        for key, deadline in reversed(victims):
            if deadline is not None:
                self._data.set_deadline(key, deadline)
            elif self._data.recency is not None:
                self._data.recency.put_back(key)

    def _full_message(self, used: int, growth: int) -> str:
        limit = self.max_memory or 0
        if self.policy == NOEVICTION:
            advice = (
                "delete keys, give keys a ttl, raise SHAREDSTATE_MAX_MEMORY, or set "
                "SHAREDSTATE_EVICTION (allkeys-lru, volatile-lru, volatile-ttl) to make room"
            )
        else:
            advice = (
                f"the {self.policy} policy found nothing more to evict; raise "
                "SHAREDSTATE_MAX_MEMORY, or choose a policy that can evict these keys"
            )
        return (
            f"the write was refused: it needs {growth:,} more bytes and the server uses "
            f"{used:,} of its SHAREDSTATE_MAX_MEMORY={limit:,} bytes; {advice}"
        )
