"""Every kind of asyncio call, for tests that cancel them at random points."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from sharedstate.aio import AsyncSharedState

Operation = Callable[[AsyncSharedState], Awaitable[Any]]


async def _edit_and_wait(state: AsyncSharedState) -> None:
    async with state.edit("doc", default={"n": 0}) as doc:
        doc["n"] += 1
        await asyncio.sleep(0.001)


async def _hold_lock(state: AsyncSharedState) -> None:
    async with state.lock.hold(timeout=5):
        await state.incr("under lock")
        await asyncio.sleep(0.001)


# Every kind of call: reads, writes, batches, paths, the namespace, the lock and edits
# (taking, holding and freeing them).
OPERATIONS: dict[str, Operation] = {
    "get": lambda state: state.get("counter"),
    "set": lambda state: state.set("value", list(range(100))),
    "incr": lambda state: state.incr("counter"),
    "add": lambda state: state.add("claim", 1, ttl=0.01),
    "get_many": lambda state: state.get_many(["counter", "value"]),
    "set_many": lambda state: state.set_many({"a": 1, "b": 2}),
    "set_in": lambda state: state.set_in(("doc", "x"), 1),
    "keys": lambda state: state.keys(),
    "namespace": lambda state: state.namespace.set("n", 1),
    "lock": _hold_lock,
    "edit": _edit_and_wait,
}


async def cancel_at_random(
    state: AsyncSharedState,
    rng: random.Random,
    rounds: int,
    tolerated: Callable[[str, BaseException], bool] = lambda name, error: False,
) -> dict[str, int]:
    """``rounds`` times: 3 tasks of each kind of call, 70 % of them cancelled at a random
    point. Returns how many of each kind were cancelled; raises any other error, unless
    ``tolerated(kind, error)``."""
    cancelled = dict.fromkeys(OPERATIONS, 0)
    for _ in range(rounds):
        tasks = {}
        for name, operation in OPERATIONS.items():
            for _ in range(3):
                tasks[asyncio.ensure_future(operation(state))] = name
        # Let the calls get anywhere: not sent yet, sent, answered, waiting behind the
        # lock or an edit, or inside a block.
        for _ in range(rng.randrange(8)):
            await asyncio.sleep(0)
        if rng.random() < 0.5:
            await asyncio.sleep(rng.random() * 0.003)
        for task in tasks:
            if rng.random() < 0.7:
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                cancelled[tasks[task]] += 1
            elif isinstance(result, BaseException) and not tolerated(tasks[task], result):
                raise result
    return cancelled
