"""Conformance across backends: one test, run on the local server and on Redis.

A module opts in with ``pytestmark = pytest.mark.backends``; ``conftest.py`` then runs
each of its tests twice, with ``backend`` = ``local`` (a ``sharedstate serve`` started
for the test, as every other test has) and ``redis`` (the session's redis-server, under
a key prefix of the test's own). Two markers say where a test is not plain conformance:

- ``local_only("why")``: the test is about the local server process itself (its pid,
  files, persistence, statistics); it runs on ``local`` only.
- ``differs_on_redis("why")``: Redis does this differently by design ("What differs" in
  docs/redis.md); the ``redis`` run is a strict xfail, so the day it starts passing the
  marker must go.

A single test of an otherwise local module opts in with ``@pytest.mark.backends``.
``pytest --backend redis`` (or ``local``) runs the opted-in tests on one backend only.
"""

from __future__ import annotations

import uuid

import pytest

from .servers import ServerProcess

LOCAL = "local"
REDIS = "redis"

# Local-only reasons several modules share.
NO_SERVER_THERE = "no server at the test's address; on redis the session's redis-server answers"

# Redis's by-design differences ("What differs" in docs/redis.md), for differs_on_redis.
FREED_AFTER_LEASE = "a killed holder's lock is freed SHAREDSTATE_REDIS_LEASE s after, not at once"
WRITES_DONT_WAIT_FOR_EDITS = "writes don't wait for an edit: its commit raises Conflict instead"
NO_SERVER_SIDE_UNPICKLING = (
    "on Redis the worker makes nested writes, so a value of a class only it imports takes "
    "them, where the local server (which can't import it) raises ValueNotLoadable"
)


def backend_params(item: pytest.Item, only: str | None = None) -> list[object]:
    """The ``backend`` values for an opted-in test, with its redis expectations attached.

    ``only`` (``pytest --backend``) keeps one of them; a local_only test then has none on
    ``redis``, and is collected with an empty parameter set (reported as skipped).
    """
    local_only = item.get_closest_marker("local_only")
    differs = item.get_closest_marker("differs_on_redis")
    for marker in (local_only, differs):
        if marker is not None and not _reason(marker):
            raise pytest.UsageError(f"{item.nodeid}: @{marker.name} needs a reason")
    redis_marks = []
    if differs is not None:
        redis_marks.append(pytest.mark.xfail(strict=True, reason=_reason(differs)))
    params = [pytest.param(LOCAL, id=LOCAL)]
    if local_only is None:
        params.append(pytest.param(REDIS, id=REDIS, marks=redis_marks))
    return [param for param in params if only in (None, param.values[0])]


def _reason(marker: pytest.Mark) -> str:
    reason = marker.kwargs.get("reason", marker.args[0] if marker.args else "")
    return str(reason)


def unique_prefix() -> str:
    """A key prefix no other test uses, so tests can share one redis-server."""
    return f"t{uuid.uuid4().hex}:"


class NoServerProcess(ServerProcess):
    """What ``server`` gives on Redis: nothing to start, stop or signal.

    Tests that only need "a server to talk to" get one (Redis); a test that reaches for
    the sharedstate server process itself is about the local server: mark it
    ``local_only``.
    """

    def start(self, timeout: float = 15.0) -> ServerProcess:
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        pass

    @property
    def pid(self) -> int:
        raise AssertionError(_NO_PROCESS)

    def signal(self, signum: int) -> None:
        raise AssertionError(_NO_PROCESS)

    def wait(self, timeout: float = 10.0) -> int:
        raise AssertionError(_NO_PROCESS)

    def log(self) -> str:
        raise AssertionError(_NO_PROCESS)

    def stop(self) -> None:
        pass


_NO_PROCESS = (
    "on the redis backend there is no sharedstate server process: a test about the "
    "server itself is @pytest.mark.local_only"
)
