"""When keys expire: each key's deadline, filed in buckets of 1/64 s.

Deadlines are wall-clock times (``time.time()``), as they are written to snapshots and
journals, so that they mean the same after a restart.

Redis finds expired keys by sampling its table of keys with a TTL, because a hash table
has no order. Here each key is also filed in the bucket of the 1/64 s its deadline falls
in, and a heap orders the buckets, so:

- setting a deadline is a dict and a set update (well under a microsecond);
- the expired keys are those of the buckets before now, plus the ones of the current
  bucket whose deadline has come: the background reaper and ``volatile-ttl`` eviction
  take them bucket by bucket, soonest first (to within 1/64 s);
- *how many* have expired (for ``len(state)``) is a sum over the passed buckets, which
  costs nothing while the reaper keeps up and stays cheap while it removes a million.

Two designs were measured before this one (bench/expiry.py): a heap of keys counted
expired keys by visiting each (1.5 s under the store's lock with a million waiting, on
every ``len`` or ``status``); a sorted list counted them in one search but made a TTL
``set`` about 10 us slower, 0.85 of a plain one.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

BUCKETS_PER_SECOND = 64


def _bucket(deadline: float) -> float:
    """The bucket of ``deadline``: a whole number (as a float, so infinities work)."""
    return math.floor(deadline * BUCKETS_PER_SECOND) if math.isfinite(deadline) else deadline


class Deadlines:
    """Each expiring key's deadline, and the keys filed by when they expire."""

    __slots__ = ("_at", "_buckets", "_order")

    def __init__(self) -> None:
        self._at: dict[Any, float] = {}  # key -> its deadline
        self._buckets: dict[float, set[Any]] = {}  # bucket -> its keys (never empty)
        self._order: list[float] = []  # heap of the buckets (may repeat, or be gone)

    def __len__(self) -> int:
        return len(self._at)

    def __bool__(self) -> bool:
        return bool(self._at)

    def __contains__(self, key: Any) -> bool:
        return key in self._at

    def get(self, key: Any) -> float | None:
        return self._at.get(key)

    def items(self) -> list[tuple[Any, float]]:
        return list(self._at.items())

    def set(self, key: Any, deadline: float) -> None:
        old = self._at.get(key)
        if old is not None:
            self._unfile(key, old)
        self._at[key] = deadline
        bucket = _bucket(deadline)
        keys = self._buckets.get(bucket)
        if keys is None:
            keys = self._buckets[bucket] = set()
            heapq.heappush(self._order, bucket)
            if len(self._order) > 2 * len(self._buckets) + 1024:
                self._order = list(self._buckets)  # drop the buckets that are gone
                heapq.heapify(self._order)
        keys.add(key)

    def discard(self, key: Any) -> None:
        old = self._at.pop(key, None)
        if old is not None:
            self._unfile(key, old)

    def clear(self) -> None:
        self._at.clear()
        self._buckets.clear()
        self._order.clear()

    def passed(self, key: Any, now: float) -> bool:
        """Whether ``key`` has a deadline and it is ``now`` or earlier."""
        deadline = self._at.get(key)
        return deadline is not None and deadline <= now

    def count_passed(self, now: float) -> int:
        """How many keys have a deadline of ``now`` or earlier."""
        current = _bucket(now)
        count = 0
        for bucket in self._passed_buckets(current):
            keys = self._buckets[bucket]
            if bucket < current:
                count += len(keys)
            else:  # the bucket now is in: only some of its deadlines have come
                at = self._at
                count += sum(1 for key in keys if at[key] <= now)
        return count

    def pop_passed(self, now: float, limit: int) -> list[tuple[Any, float]]:
        """Remove and return up to ``limit`` keys whose deadline is ``now`` or earlier,
        with their deadlines, soonest first to within a bucket (``now=math.inf``: the
        soonest ones)."""
        current = _bucket(now)
        at, buckets, order = self._at, self._buckets, self._order
        found: list[tuple[Any, float]] = []
        while order and len(found) < limit and order[0] <= current:
            bucket = order[0]
            keys = buckets.get(bucket)
            if keys is None:
                heapq.heappop(order)  # emptied since it was filed
                continue
            if bucket < current:
                while keys and len(found) < limit:
                    key = keys.pop()
                    found.append((key, at.pop(key)))
            else:
                for key in [key for key in keys if at[key] <= now][: limit - len(found)]:
                    keys.discard(key)
                    found.append((key, at.pop(key)))
            if not keys:
                del buckets[bucket]
                heapq.heappop(order)
            elif bucket == current:
                break  # what is left in it has not passed yet
        return found

    def compact(self) -> None:
        """Give back the memory of dicts that once held many more deadlines."""
        self._at = dict(self._at)
        self._buckets = dict(self._buckets)
        self._order = list(self._buckets)
        heapq.heapify(self._order)

    def _unfile(self, key: Any, deadline: float) -> None:
        bucket = _bucket(deadline)
        keys = self._buckets[bucket]
        keys.discard(key)
        if not keys:
            del self._buckets[bucket]  # its place in the heap is skipped later

    def _passed_buckets(self, current: float) -> list[float]:
        """The buckets up to ``current`` that hold keys (the heap's top part, walked)."""
        order, buckets = self._order, self._buckets
        found: set[float] = set()
        pending = [0] if order else []
        while pending:
            index = pending.pop()
            bucket = order[index]
            if bucket > current:
                continue  # the heap property: nothing below it is earlier
            if bucket in buckets:
                found.add(bucket)  # a set: a bucket emptied and filed again is there twice
            child = 2 * index + 1
            pending.extend(range(child, min(child + 2, len(order))))
        return list(found)
