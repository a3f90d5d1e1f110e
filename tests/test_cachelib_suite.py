"""cachelib's own backend tests, run against SharedStateCache on a real server.

The tests come from cachelib's published source release at the version pinned in
tests/support/peer_suites.py (never copied here): its mixins (``CommonTests``,
``ClearTests``, ``HasTests``, ``DeleteManyWithPrefixTests``, ``SerializerTests``) are
combined below with a fixture that gives them our cache, as cachelib's
test_redis_cache.py does for RedisCache. Not run from that release:

- its backend-specific test files (redis, memcached, uwsgi...): they test those backends;
- test_base_cache.py: BaseCache's own defaults, not a backend;
- ``TestRedisCache.test_callable_key``: a test of RedisCache's class, not of a mixin;
- test_interface_uniformity.py: its fixture builds cachelib's Redis and Memcached caches
  (those servers needed), and importing it needs its ``network`` marker registered;
  tests/test_cachelib.py checks the same thing (every public BaseCache method) itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from sharedstate import get_shared_state
from sharedstate.cachelib import DEFAULT_KEY_PREFIX, SharedStateCache

from .support.peer_suites import source_of
from .support.servers import ServerProcess

sys.path.insert(0, os.path.join(source_of("cachelib"), "tests"))

from clear import ClearTests  # type: ignore[import-not-found]
from common import CommonTests  # type: ignore[import-not-found]
from delete_many_with_prefix import (  # type: ignore[import-not-found]
    DeleteManyWithPrefixTests,
)
from has import HasTests  # type: ignore[import-not-found]
from serializer import SerializerTests  # type: ignore[import-not-found]

APP_KEY = "the app's own key"


@pytest.fixture(
    autouse=True,
    params=[DEFAULT_KEY_PREFIX, "test-key-prefix:", None],
    ids=["default_prefix", "with_key_prefix", "no_key_prefix"],
)
def cache_factory(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[None]:
    key_prefix = request.param
    if key_prefix is None and request.node.name.startswith("test_clear["):
        # Without a prefix the cache can't tell its keys from the app's, so clear()
        # deletes nothing and says False (docs/cachelib.md); the test expects a wipe.
        pytest.skip("clear() without a key prefix deletes nothing, by design")
    state = get_shared_state(start=False)
    state[APP_KEY] = "not the cache's"

    def factory(self: object, *args: Any, **kwargs: Any) -> SharedStateCache:
        kwargs.setdefault("key_prefix", key_prefix)
        return SharedStateCache(*args, **kwargs)

    request.cls.cache_factory = factory
    yield
    assert state[APP_KEY] == "not the cache's", "the cache touched a key that isn't its own"


class TestSharedStateCache(
    CommonTests,  # type: ignore[misc]
    ClearTests,  # type: ignore[misc]
    HasTests,  # type: ignore[misc]
    DeleteManyWithPrefixTests,  # type: ignore[misc]
    SerializerTests,  # type: ignore[misc]
):
    """Everything cachelib asks of its Redis backend, which our cache mirrors."""
