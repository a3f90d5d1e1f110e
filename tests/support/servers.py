"""Real ``sharedstate serve`` processes for tests, and what a test asks a running one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Protocol

from sharedstate.client.launcher import call_server_function
from sharedstate.config import load_settings
from sharedstate.errors import SharedStateError

from .processes import REPO_ROOT


class ServerProcess:
    """A real ``sharedstate serve`` in the foreground, as an operator would run it."""

    def __init__(self, address: str, workdir: str, *args: str, faults: str | None = None) -> None:
        self.address = address
        self.log_path = os.path.join(workdir, f"serve-{time.monotonic_ns()}.log")
        self.args = args
        self.faults = faults  # see faults.py beside this file
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> ServerProcess:
        module = "sharedstate" if self.faults is None else "tests.support.fault_server"
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


class ServerFactory(Protocol):
    """What the ``server_factory`` fixture gives: a ServerProcess, not started yet.

    ``server_factory(*serve_args)`` serves the test's address (or ``address``) and is
    stopped after the test; ``faults`` runs it with injected faults (see faults.py).
    """

    def __call__(
        self, *args: str, address: str = ..., faults: str | None = None
    ) -> ServerProcess: ...


def server_info(timeout: float = 10.0) -> dict[str, Any]:
    """What the test's server says of itself: its clients, calls waiting, lock holder..."""
    return dict(call_server_function(load_settings(), "server_info", timeout))


def requests_served() -> int:
    """Requests the test's server has answered so far, all its clients together."""
    return sum(client["requests"] for client in server_info()["clients"])


def free_tcp_port() -> int:
    """A loopback TCP port that nothing listens on at the moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
