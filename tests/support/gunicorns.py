"""A real gunicorn master for tests: started with the example config, spoken to over HTTP."""

from __future__ import annotations

import functools
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .processes import REPO_ROOT
from .procfs import children_of
from .servers import free_tcp_port

CONFIG = os.path.join(REPO_ROOT, "examples", "gunicorn", "gunicorn.conf.py")


@functools.cache
def _control_socket_args() -> list[str]:
    """gunicorn 23's control socket, turned off where this gunicorn has one (asked once)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True, check=False
    ).stdout
    return ["--no-control-socket"] if "--no-control-socket" in help_text else []


class Gunicorn:
    """A real gunicorn master serving ``app`` (default: tests/support/gunicorn_app.py)
    with ``config`` (default: the example's)."""

    def __init__(
        self,
        workdir: str,
        *args: str,
        app: str = "tests.support.gunicorn_app:app",
        config: str = CONFIG,
    ) -> None:
        self.port = free_tcp_port()
        self.log_path = os.path.join(workdir, f"gunicorn-{self.port}.log")
        self.argv = [
            sys.executable, "-m", "gunicorn", "-c", config, "--chdir", REPO_ROOT,
            "-b", f"127.0.0.1:{self.port}", "--graceful-timeout", "5",
            *_control_socket_args(), *args, app,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Gunicorn:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.log()
            try:
                if self.get("/pid")[0] == 200:
                    return self
            except OSError:
                pass
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def get(self, path: str, method: str = "GET", timeout: float = 30) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> set[int]:
        return children_of(self.pid)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(60)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as file:
            return file.read()


# gunicorn(*args): a started gunicorn master with these extra arguments, killed after the test.
StartGunicorn = Callable[..., Gunicorn]


def concurrent_gets(server: Gunicorn, path: str, count: int) -> list[tuple[int, str]]:
    with ThreadPoolExecutor(max_workers=20) as pool:
        return list(pool.map(lambda _: server.get(path), range(count)))
