"""A pytest plugin that runs ``limits``' own storage tests against sharedstate's storages.

Loaded by tests/test_limits_suite.py into a pytest run inside limits' unpacked source
release (``-p limits_peer_plugin``, with this folder on ``PYTHONPATH``; it can't be
imported as ``tests.support...`` there, where ``tests`` is limits' package). limits'
tests are parametrized by storage URI; the in-memory case (``memory://``, and
``async+memory://`` for its asyncio tests) is the one that needs no Redis or memcached,
so here ``memory://`` makes a :class:`sharedstate.limits.SharedStateStorage` and
``async+memory://`` a :class:`sharedstate.limits.AsyncSharedStateStorage`, both on the
server that ``SHAREDSTATE_ADDRESS`` names, emptied before each test as a new memory
storage would be. Every other storage's cases are deselected, and the tests that can't
apply are skipped by name.

limits runs its ``async def`` tests with pytest-asyncio; this plugin runs each in an
event loop of its own instead (``asyncio.run``), which is all they need: they take no
async fixtures.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Coroutine
from typing import Any

import pytest
from limits._storage_scheme import SCHEMES  # the registry storage_from_string reads

from sharedstate import get_shared_state
from sharedstate.limits import AsyncSharedStateStorage, SharedStateStorage

SCHEMES["memory"] = SharedStateStorage
SCHEMES["async+memory"] = AsyncSharedStateStorage

# Test name -> why it can't run against our storage.
SKIPPED = {
    "test_storage_string": "asserts the storage is limits' MemoryStorage class itself",
}
# Marks limits' tests use, registered so that the run needs none of limits' plugins.
MARKS = ["flaky", "integration", "asyncio", "memory", "redis", "redis_cluster"]
MARKS += ["redis_sentinel", "memcached", "mongodb", "valkey", "valkey_cluster"]


def pytest_configure(config: pytest.Config) -> None:
    for mark in MARKS:
        config.addinivalue_line("markers", f"{mark}: a mark of limits' own tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        in_memory = callspec is not None and callspec.id.startswith("in-memory")
        (kept if in_memory else dropped).append(item)
        reason = SKIPPED.get(getattr(item, "originalname", item.name))
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``async def`` test to its end in a new event loop (pytest can't, alone)."""
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in inspect.signature(test).parameters}
    asyncio.run(_then_disconnect(test(**arguments)))
    return True


async def _then_disconnect(test: Coroutine[Any, Any, None]) -> None:
    """``test``, then close this loop's client (the storage's: default address and
    options), as an app closes its clients before its loop ends."""
    from sharedstate.aio import get_shared_state as get_async_shared_state

    try:
        await test
    finally:
        await (await get_async_shared_state()).aclose()


@pytest.fixture(autouse=True)
def _empty_state() -> None:
    get_shared_state(start=False).clear()
