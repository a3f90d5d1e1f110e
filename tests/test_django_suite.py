"""Django's own cache and cache-session tests, run against SharedStateCache.

They come from Django's source release at the version pinned in
tests/support/peer_suites.py, unpacked outside this repository; nothing of theirs is
copied here. Their ``tests/`` folder goes on ``sys.path``, as Django's ``runtests.py``
puts it, so their modules are ``cache.tests`` (``BaseCacheTests``; the ``cache`` app's
``Poll`` model is used by a few) and ``sessions_tests.tests`` (``CacheSessionTests``,
for ``django.contrib.sessions.backends.cache``). Each test gets its own real server
(the ``server`` fixture), which the backend finds through ``SHAREDSTATE_ADDRESS`` (an
empty LOCATION).
"""

from __future__ import annotations

import os
import sys

import django
import pytest
from django.conf import settings

from .support.peer_suites import source_of

sys.path.insert(0, os.path.join(source_of("Django"), "tests"))
if not settings.configured:
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "cache",
            "sessions_tests",
        ],
        ALLOWED_HOSTS=["testserver"],  # the host of RequestFactory's requests
        USE_TZ=True,
        SECRET_KEY="tests-only-" + "x" * 50,  # signs the sessions of the session tests
    )
    django.setup()

from cache.models import Poll
from cache.tests import BaseCacheTests, caches_setting_for_tests
from django.db import connection
from django.test import TestCase, override_settings
from sessions_tests import tests as session_tests  # not its names: pytest would run them

with connection.schema_editor() as editor:  # the in-memory database lives with the process
    editor.create_model(Poll)

# Skipped, by Django itself ("Culling isn't implemented."): test_cull, test_zero_cull and
# test_cull_delete_when_store_empty, because the "cull" and "zero_cull" caches are left
# out, as Django's suite leaves them out for Redis. sharedstate has no MAX_ENTRIES or
# CULL_FREQUENCY; its memory bound is SHAREDSTATE_MAX_MEMORY with an eviction policy.
CACHES = caches_setting_for_tests(
    BACKEND="sharedstate.django.SharedStateCache",
    LOCATION="",
    exclude={"cull", "zero_cull"},
)


@pytest.mark.usefixtures("server")
@override_settings(CACHES=CACHES)
class SharedStateCacheTests(BaseCacheTests, TestCase):  # type: ignore[misc]
    """Every test of BaseCacheTests, on a real sharedstate server."""


@pytest.mark.usefixtures("server")
@override_settings(CACHES={"default": CACHES["default"]})
class SharedStateCacheSessionTests(session_tests.CacheSessionTests):  # type: ignore[misc]
    """Django's tests of cache-backed sessions, with SharedStateCache as the cache."""
