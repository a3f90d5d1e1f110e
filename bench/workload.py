"""A mixed workload for one client process, and the check that nothing was lost.

The load tests (``tests/test_load.py``) and the soak command (``python -m bench.soak``)
run this same code: each client process calls :func:`run_client`, which mixes every
kind of operation at random and keeps a :class:`Tally` of what it did; afterwards
:func:`verify` compares the server's contents with the tallies of all clients.

Every key starts with ``load:``, so the workload can run against a server that holds
other data. Each client writes its own keys (``load:own:<index>:*``) and shares the
rest: counters, a locked total, a nested dict and an edited value.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sharedstate import SharedState

PREFIX = "load:"
COUNTERS = [f"{PREFIX}counter:{i}" for i in range(4)]
LOCKED = f"{PREFIX}locked"  # an int read and written back under state.lock
TREE = f"{PREFIX}tree"  # {"hits": int, "clients": {index: last seq}}, written through views
EDITED = f"{PREFIX}edited"  # {"n": int}, changed with state.edit()
OWN_KEYS = 6
BATCH_KEYS = 4
MAX_PAYLOAD = 4096  # values of varied sizes, so the server's allocator sees churn
FIRST_ERRORS_KEPT = 10
PROGRESS_EVERY = 50


@dataclass
class Tally:
    """What one client did, to be checked against the server afterwards."""

    ops: int = 0
    increments: dict[str, int] = field(default_factory=dict)  # counter -> sum added
    locked: int = 0
    edits: int = 0
    nested_hits: int = 0
    nested_last: dict[int, int] = field(default_factory=dict)  # client index -> seq
    last_written: dict[str, Any] = field(default_factory=dict)  # key -> value, None: deleted
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.first_errors) < FIRST_ERRORS_KEPT:
            self.first_errors.append(message)

    def merge(self, later: Tally) -> None:
        """Add ``later``'s counts; its writes replace this tally's (same keys: it came after)."""
        self.ops += later.ops
        for key, amount in later.increments.items():
            self.increments[key] = self.increments.get(key, 0) + amount
        self.locked += later.locked
        self.edits += later.edits
        self.nested_hits += later.nested_hits
        self.nested_last.update(later.nested_last)
        self.last_written.update(later.last_written)
        self.errors += later.errors
        room = FIRST_ERRORS_KEPT - len(self.first_errors)
        self.first_errors += later.first_errors[:room]


def combine(tallies: Iterable[Tally]) -> Tally:
    """One tally for all clients (tallies of one client's keys in the order they ran)."""
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    return total


def prepare(state: SharedState) -> None:
    """Remove what an earlier run left, and set the starting values."""
    state.delete_many([key for key in state if _is_ours(key)])
    state.set_many({LOCKED: 0, TREE: {"hits": 0, "clients": {}}, EDITED: {"n": 0}})


def run_client(
    state: SharedState,
    index: int,
    seconds: float,
    progress: Callable[[Tally], None] | None = None,
) -> Tally:
    """Mix every kind of operation for ``seconds``; return what was done.

    ``index`` names this client's own keys; a client that reuses an index (the soak
    replaces clients) starts by deleting them. Errors and wrong reads are counted in
    the tally, not raised, so one bad call doesn't end the run. ``progress`` is called
    with the tally every :data:`PROGRESS_EVERY` operations.
    """
    client = _Client(state, index)
    client.start_afresh()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        operation = client.rng.choices(client.operations, client.weights)[0]
        try:
            operation()
        except Exception as error:
            client.tally.error(f"{operation.__name__}: {error!r}")
        client.tally.ops += 1
        if progress is not None and client.tally.ops % PROGRESS_EVERY == 0:
            progress(client.tally)
    return client.tally


class _Client:
    """One client's operations; each records in the tally what it did, once it is done."""

    def __init__(self, state: SharedState, index: int) -> None:
        self.state = state
        self.index = index
        self.rng = random.Random()
        self.tally = Tally()
        self.own = [f"{PREFIX}own:{index}:{j}" for j in range(OWN_KEYS)]
        self.batch = [f"{PREFIX}batch:{index}:{j}" for j in range(BATCH_KEYS)]
        self.seq = 0
        # How often each operation runs, relative to the others. The lock is rare: with
        # 64 clients all of them contend for it, and it would otherwise be all they do.
        mix = [
            (30, self.incr), (20, self.set_and_get), (10, self.get_own),
            (10, self.set_many_and_get_many), (5, self.nested_incr), (5, self.nested_set),
            (6, self.edit), (6, self.delete), (5, self.read_counters),
            (3, self.locked_read_modify_write),
        ]  # fmt: skip
        self.weights = [weight for weight, _ in mix]
        self.operations = [operation for _, operation in mix]

    def start_afresh(self) -> None:
        self.state.delete_many(self.own + self.batch)
        for key in self.own + self.batch:
            self.tally.last_written[key] = None

    def _value(self) -> tuple[int, int, bytes]:
        self.seq += 1
        return (self.index, self.seq, b"v" * self.rng.randrange(MAX_PAYLOAD))

    def _expect(self, key: str, got: Any) -> None:
        expected = self.tally.last_written.get(key)
        if got != expected:
            self.tally.error(f"{key} read {_short(got)}, last written {_short(expected)}")

    def incr(self) -> None:
        key = self.rng.choice(COUNTERS)
        amount = self.rng.randint(1, 3)
        self.state.incr(key, amount)
        self.tally.increments[key] = self.tally.increments.get(key, 0) + amount

    def set_and_get(self) -> None:
        key = self.rng.choice(self.own)
        value = self._value()
        self.state[key] = value
        self.tally.last_written[key] = value
        self._expect(key, self.state.get(key))

    def get_own(self) -> None:
        key = self.rng.choice(self.own)
        self._expect(key, self.state.get(key))

    def set_many_and_get_many(self) -> None:
        values = {key: self._value() for key in self.batch}
        self.state.set_many(values)
        self.tally.last_written.update(values)
        found = self.state.get_many(self.batch)
        for key in self.batch:
            self._expect(key, found.get(key))

    def nested_incr(self) -> None:
        self.state[TREE].incr("hits")
        self.tally.nested_hits += 1

    def nested_set(self) -> None:
        self.seq += 1
        self.state[TREE]["clients"][self.index] = self.seq
        self.tally.nested_last[self.index] = self.seq

    def edit(self) -> None:
        with self.state.edit(EDITED) as edited:
            edited["n"] += 1
        self.tally.edits += 1

    def delete(self) -> None:
        key = self.rng.choice(self.own)
        if self.tally.last_written.get(key) is None:
            if key in self.state:
                self.tally.error(f"{key} exists after this client deleted it")
            return
        del self.state[key]
        self.tally.last_written[key] = None

    def read_counters(self) -> None:
        # Others only add, so each counter holds at least what this client added.
        found = self.state.get_many(COUNTERS)
        for key in COUNTERS:
            if found.get(key, 0) < self.tally.increments.get(key, 0):
                self.tally.error(f"{key} read {found.get(key)}, below this client's own adds")

    def locked_read_modify_write(self) -> None:
        with self.state.lock:
            self.state[LOCKED] = self.state[LOCKED] + 1
        self.tally.locked += 1


def verify(state: SharedState, total: Tally) -> list[str]:
    """What on the server differs from what the clients did (an empty list: nothing)."""
    problems = []
    counters = state.get_many(COUNTERS)
    for key in COUNTERS:
        expected = total.increments.get(key, 0)
        if counters.get(key, 0) != expected:
            problems.append(f"{key} is {counters.get(key)}, the clients added {expected}")
    if state[LOCKED] != total.locked:
        problems.append(f"{LOCKED} is {state[LOCKED]} after {total.locked} locked increments")
    if state[EDITED] != {"n": total.edits}:
        problems.append(f"{EDITED} is {state[EDITED]} after {total.edits} edits")
    tree = state[TREE].copy()
    if tree["hits"] != total.nested_hits:
        problems.append(f"{TREE} hits is {tree['hits']} after {total.nested_hits} nested incr")
    if tree["clients"] != total.nested_last:
        wrong = {
            index: (tree["clients"].get(index), seq)
            for index, seq in total.nested_last.items()
            if tree["clients"].get(index) != seq
        }
        problems.append(f"{TREE} clients (found, last written) differ: {_short(wrong)}")
    found = state.get_many(total.last_written)
    for key, expected in total.last_written.items():
        if found.get(key) != expected:
            problems.append(f"{key} is {_short(found.get(key))}, last written {_short(expected)}")
    return problems


def _is_ours(key: Any) -> bool:
    return isinstance(key, str) and key.startswith(PREFIX)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
