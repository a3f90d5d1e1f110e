"""Fixtures: a private directory and environment per test, real servers, real workers.

Nothing here mocks the server. Every test runs in its own short temp directory (Unix
socket paths are limited to 107 bytes), with ``SHAREDSTATE_*`` cleared and the address
pointed inside it, so no test can touch a developer's real server. At teardown every
process whose command line or environment mentions that directory is killed.

Modules (or tests) marked ``backends`` run on each backend: ``local`` as above, and
``redis``, on the session's redis-server under a key prefix of the test's own
(tests/support/backends.py).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing.resource_tracker
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

import sharedstate.aio.state
import sharedstate.client.state
from sharedstate import SharedState, get_shared_state

from .support.backends import (
    LOCAL,
    REDIS,
    NoServerProcess,
    backend_params,
    unique_prefix,
)
from .support.procfs import is_dead, processes_mentioning
from .support.redis_servers import RedisServer, why_no_redis_server
from .support.servers import ServerFactory, ServerProcess
from .support.users import OtherUser, why_no_other_user


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=[LOCAL, REDIS],
        help="run the tests marked backends on this backend only (default: both)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test of a module marked ``backends`` on every backend (backends.py)."""
    if metafunc.definition.get_closest_marker("backends") is not None:
        only = metafunc.config.getoption("backend")
        params = backend_params(metafunc.definition, only)
        metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Where the test's state lives: ``local`` unless its module opted in to backends."""
    return str(getattr(request, "param", LOCAL))


@pytest.fixture(scope="session", autouse=True)
def resource_tracker() -> None:
    """Start multiprocessing's resource tracker before any test's environment is set.

    Started inside a test (by its first spawn-context lock), it would inherit that
    test's environment, which names its workdir, and be killed at its teardown; the
    next test to need it then gets "resource_tracker: process died unexpectedly" as an
    error. Running one test on two backends made that common.
    """
    multiprocessing.resource_tracker.ensure_running()


@pytest.fixture
def workdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="ss-", dir="/tmp")
    try:
        yield path
    finally:
        _kill_all(processes_mentioning(path))
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_env(
    monkeypatch: pytest.MonkeyPatch, workdir: str, backend: str, request: pytest.FixtureRequest
) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("SHAREDSTATE_"):
            monkeypatch.delenv(name)
    if backend == REDIS:
        redis: RedisServer = request.getfixturevalue("redis_server")
        monkeypatch.setenv("SHAREDSTATE_ADDRESS", redis.url())
        monkeypatch.setenv("SHAREDSTATE_PREFIX", unique_prefix())
    else:
        monkeypatch.setenv("SHAREDSTATE_ADDRESS", os.path.join(workdir, "run", "state.sock"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", workdir)
    monkeypatch.chdir(workdir)
    sharedstate.client.state._states.clear()
    sharedstate.client.state.forget_settings()
    yield
    for state in list(sharedstate.client.state._states.values()):
        state.close()
    sharedstate.client.state._states.clear()
    sharedstate.client.state.forget_settings()
    if backend == REDIS:
        # A connection the test left open warns when it is collected: drop the async
        # states of its (closed) loops and collect now, so that warning fails this test,
        # not whichever test happens to run when the collector does.
        sharedstate.aio.state._states.clear()
        gc.collect()


@pytest.fixture
def address(workdir: str, backend: str, request: pytest.FixtureRequest) -> str:
    if backend == REDIS:
        redis: RedisServer = request.getfixturevalue("redis_server")
        return redis.url()
    return os.path.join(workdir, "run", "state.sock")


@pytest.fixture
def server_factory(address: str, workdir: str) -> Iterator[ServerFactory]:
    started: list[ServerProcess] = []

    class Factory(ServerProcess):
        def __init__(self, *args: str, address: str = address, faults: str | None = None) -> None:
            super().__init__(address, workdir, *args, faults=faults)
            started.append(self)

    try:
        yield Factory
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def server(
    server_factory: ServerFactory, backend: str, address: str, workdir: str
) -> ServerProcess:
    if backend == REDIS:
        return NoServerProcess(address, workdir)  # the session's redis-server holds the state
    return server_factory().start()


@pytest.fixture
def state(server: ServerProcess) -> SharedState:
    """The test's state, on a server started for it (or on Redis, for backend redis)."""
    return get_shared_state(start=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the session: loopback port and Unix socket, with a password.

    Tests share it; each uses its own key prefix (``SHAREDSTATE_PREFIX``), so none sees
    another's keys. A test that restarts or kills Redis starts one of its own.
    """
    reason = why_no_redis_server()
    if reason is not None:
        pytest.fail(reason)  # .ci/run installs it: a missing one is a broken set-up
    directory = tempfile.mkdtemp(prefix="ss-redis-", dir="/tmp")
    server = RedisServer(directory).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def other_user() -> Iterator[OtherUser]:
    """A second Unix user, created for the session and removed after it."""
    reason = why_no_other_user()
    if reason is not None:
        pytest.skip(reason)
    name = f"sstest{os.getpid()}"
    useradd, userdel = shutil.which("useradd"), shutil.which("userdel")
    assert useradd is not None
    assert userdel is not None
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        entry = pwd.getpwnam(name)
        yield OtherUser(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run([userdel, name], check=False, capture_output=True, timeout=30)


@pytest.fixture
def shared_tmp() -> Iterator[str]:
    """A world-writable sticky directory, like ``/tmp``, private to one test."""
    path = tempfile.mkdtemp(prefix="ss-shared-", dir="/tmp")
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    for pid in pids:
        while time.monotonic() < deadline and not is_dead(pid):
            time.sleep(0.01)
