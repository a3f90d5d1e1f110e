"""Which keys go when the memory bound is reached: the eviction policies.

The policies keep Redis's names and meanings (``maxmemory-policy``), so users can guess
them. Redis approximates LRU by sampling a few keys' access clocks; here an ordered dict
keeps the exact order of use (a move to its end per read, about 0.1 us), so
``allkeys-lru`` evicts exactly the least recently used key. It is kept only when an LRU
policy is configured, for all keys or only for those with a TTL.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

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
