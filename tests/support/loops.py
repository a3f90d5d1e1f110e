"""Running a test's coroutine on each event loop an async app may use: asyncio's, uvloop's.

uvicorn runs on uvloop when it is installed, so the asyncio client is tested on both.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sharedstate.aio.state

T = TypeVar("T")

LOOPS = ["asyncio", "uvloop"]


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_on(kind: str, main: Callable[[], Awaitable[T]], timeout: float = 50.0) -> T:
    """Run ``main()`` on a new loop of ``kind``; close the states it made, then the loop.

    A test that hangs fails after ``timeout`` seconds with the tasks still pending named.
    """
    loop = new_loop(kind)
    try:
        result = loop.run_until_complete(asyncio.wait_for(_closing(main), timeout))
    except BaseException:
        _close(loop)
        raise
    leaks = _close(loop)
    assert leaks == [], f"the loop closed with these still open: {leaks}"
    return result


def _close(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Close ``loop``; return the ResourceWarnings it gave (what was left open).

    They are caught here because uvloop warns inside ``close()``: with warnings as
    errors (the test config) that exception left uvloop blocked forever, where a
    timeout can't reach it, hanging the whole session instead of failing one test.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    leaks = []
    for warning in caught:
        if issubclass(warning.category, ResourceWarning):
            leaks.append(str(warning.message))
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return leaks


async def _closing(main: Callable[[], Awaitable[T]]) -> T:
    try:
        return await main()
    finally:
        made = sharedstate.aio.state._states.get(asyncio.get_running_loop(), {})
        for state in made.values():
            if isinstance(state, sharedstate.aio.state.AsyncSharedState):
                await state.aclose()


def run_async(main: Callable[[], Awaitable[Any]]) -> Any:
    """In a worker process: run ``main()`` on a fresh asyncio loop (for run_in_processes)."""
    return run_on("asyncio", main)
