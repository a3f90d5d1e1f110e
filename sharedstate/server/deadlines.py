"""When keys expire: each key's deadline, and the soonest ones found without a scan.

Deadlines are wall-clock times (``time.time()``), as they are written to snapshots and
journals, so that they mean the same after a restart.

Redis finds expired keys by sampling its table of keys with a TTL, because a hash table
has no order. Here a heap orders the deadlines, so the expired keys are exactly the ones
at its top: the background reaper and ``volatile-ttl`` eviction take them in order, and
counting the expired keys costs only as much as there are. A key whose deadline changes
or goes leaves its old heap entry behind; entries are checked against the dict when
they surface, and the heap is rebuilt when the stale ones outnumber the live ones.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Any

# Rebuild the heap when it holds this many more entries than there are deadlines.
_STALE_SLACK = 1024


class Deadlines:
    """Each expiring key's deadline, in a dict, and a heap of them to find the soonest."""

    __slots__ = ("_at", "_heap", "_order")

    def __init__(self) -> None:
        self._at: dict[Any, float] = {}
        # (deadline, tie-breaker, key): keys of different types don't compare
        self._heap: list[tuple[float, int, Any]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._at)

    def __bool__(self) -> bool:
        return bool(self._at)

    def __contains__(self, key: Any) -> bool:
        return key in self._at

    def get(self, key: Any) -> float | None:
        return self._at.get(key)

    def items(self) -> Iterator[tuple[Any, float]]:
        return iter(self._at.items())

    def set(self, key: Any, deadline: float) -> None:
        self._at[key] = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), key))
        if len(self._heap) > 2 * len(self._at) + _STALE_SLACK:
            self._rebuild()

    def discard(self, key: Any) -> None:
        self._at.pop(key, None)  # its heap entry goes stale

    def clear(self) -> None:
        self._at.clear()
        self._heap.clear()

    def passed(self, key: Any, now: float) -> bool:
        """Whether ``key`` has a deadline and it is ``now`` or earlier."""
        deadline = self._at.get(key)
        return deadline is not None and deadline <= now

    def pop_passed(self, now: float, limit: int) -> list[tuple[Any, float]]:
        """Remove and return up to ``limit`` keys whose deadline is ``now`` or earlier,
        with their deadlines, soonest first (``now=math.inf``: the soonest ones)."""
        heap, at = self._heap, self._at
        found: list[tuple[Any, float]] = []
        while heap and len(found) < limit and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if at.get(key) == deadline:
                del at[key]
                found.append((key, deadline))
        return found

    def compact(self) -> None:
        """Give back the memory of a dict and heap that once held many more deadlines."""
        self._at = dict(self._at)
        self._rebuild()

    def count_passed(self, now: float) -> int:
        """How many keys have a deadline of ``now`` or earlier (visits only those)."""
        heap, at = self._heap, self._at
        seen: set[Any] = set()
        pending = [0] if heap else []
        while pending:
            index = pending.pop()
            deadline, _, key = heap[index]
            if deadline > now:
                continue  # the heap property: nothing below passes either
            if at.get(key) == deadline:
                seen.add(key)  # a set: a key set twice to one deadline has two entries
            pending.extend(child for child in (2 * index + 1, 2 * index + 2) if child < len(heap))
        return len(seen)

    def _rebuild(self) -> None:
        self._heap = [(deadline, next(self._order), key) for key, deadline in self._at.items()]
        heapq.heapify(self._heap)
