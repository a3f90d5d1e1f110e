"""Fixtures: a private directory and environment per test, real servers, real workers.

Nothing here mocks the server. Every test runs in its own short temp directory (Unix
socket paths are limited to 107 bytes), with ``SHAREDSTATE_*`` cleared and the address
pointed inside it, so no test can touch a developer's real server. At teardown every
process whose command line or environment mentions that directory is killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

import sharedstate.client.state
from sharedstate.client.launcher import call_server_function
from sharedstate.config import load_settings
from sharedstate.errors import SharedStateError

from .processes import REPO_ROOT, is_dead, processes_mentioning
from .users import other_user, shared_tmp  # noqa: F401  (fixtures)


@pytest.fixture
def workdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="ss-", dir="/tmp")
    try:
        yield path
    finally:
        _kill_all(processes_mentioning(path))
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, workdir: str) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("SHAREDSTATE_"):
            monkeypatch.delenv(name)
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


@pytest.fixture
def address(workdir: str) -> str:
    return os.path.join(workdir, "run", "state.sock")


def write_client_only_module(directory: str) -> None:
    """Write ``client_models.py`` (a class ``Grid``) where only the test process imports it."""
    os.makedirs(directory)
    with open(os.path.join(directory, "client_models.py"), "w") as file:
        file.write("class Grid:\n    def __init__(self, cells):\n        self.cells = cells\n")


def fresh_state(*, start: bool = False) -> sharedstate.client.state.SharedState:
    """A new state object with new connections, as a restarted worker would have."""
    for state in sharedstate.client.state._states.values():
        state.close()
    sharedstate.client.state._states.clear()
    sharedstate.client.state.forget_settings()
    return sharedstate.client.state.get_shared_state(start=start)


class ServerProcess:
    """A real ``sharedstate serve`` in the foreground, as an operator would run it."""

    def __init__(self, address: str, workdir: str, *args: str, faults: str | None = None) -> None:
        self.address = address
        self.log_path = os.path.join(workdir, f"serve-{time.monotonic_ns()}.log")
        self.args = args
        self.faults = faults  # see tests/faults.py
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> ServerProcess:
        module = "sharedstate" if self.faults is None else "tests.fault_server"
        argv = [sys.executable, "-m", module, "serve", "--address", self.address, *self.args]
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        if self.faults is not None:
            env["SHAREDSTATE_TEST_FAULTS"] = self.faults
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        settings = load_settings({"address": self.address})
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}: {self.log()}")
            try:
                call_server_function(settings, "server_info", 2.0)
                return
            except SharedStateError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"server not ready: {self.log()}") from None
                time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as file:
            return file.read()

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """Wait until the server has logged ``text`` (it may log just after replying)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert time.monotonic() < deadline, f"{text!r} never logged:\n{self.log()}"
            time.sleep(0.01)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def server_factory(address: str, workdir: str) -> Iterator[type[ServerProcess]]:
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
def server(server_factory: type[ServerProcess]) -> ServerProcess:
    return server_factory().start()


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    for pid in pids:
        while time.monotonic() < deadline and not is_dead(pid):
            time.sleep(0.01)
