"""A real ``uvicorn --workers N`` for tests, and what tests ask of ASGI workers over HTTP.

uvicorn's supervisor spawns its workers (they are not forked) and restarts one that
dies; each imports the app afresh and connects to sharedstate in its lifespan, with the
settings it inherits from the test's environment (``SHAREDSTATE_ADDRESS`` in the test's
private directory). The same helpers serve gunicorn with uvicorn's worker class.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from sharedstate.errors import SharedStateError

from .processes import REPO_ROOT
from .procfs import children_of, is_dead
from .servers import free_tcp_port, server_info

APP = "tests.support.fastapi_app:app"


class Uvicorn:
    """A real uvicorn master with ``workers`` spawned workers serving ``app``."""

    def __init__(self, workdir: str, *args: str, app: str = APP, workers: int = 4) -> None:
        self.port = free_tcp_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.log_path = os.path.join(workdir, f"uvicorn-{self.port}.log")
        self.argv = [
            sys.executable, "-m", "uvicorn", "--workers", str(workers),
            "--host", "127.0.0.1", "--port", str(self.port), "--app-dir", REPO_ROOT,
            "--timeout-graceful-shutdown", "5", *args, app,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self.seen_workers: set[int] = set()  # every worker seen, to be sure all are gone

    def start(self, timeout: float = 30) -> Uvicorn:
        """Start the master; return once all its workers have run their lifespan's startup
        (and so serve), whichever server they connected to."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while self.log().count("Application startup complete.") < self.workers:
            assert time.monotonic() < deadline, f"uvicorn's workers did not start:\n{self.log()}"
            self.seen_workers |= self.worker_pids()  # also fails if uvicorn exited
            time.sleep(0.05)
        self.seen_workers |= self.worker_pids()
        return self

    def wait_for_workers(self, timeout: float = 30) -> set[int]:
        """The pids of ``workers`` workers, once each is connected to sharedstate."""
        try:
            pids = wait_for_connected_workers(self.worker_pids, self.workers, timeout)
        finally:
            self.seen_workers |= self.worker_pids()
        return pids

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> set[int]:
        """The master's live workers (its other child is multiprocessing's tracker)."""
        assert self.process is not None
        assert self.process.poll() is None, f"uvicorn exited:\n{self.log()}"
        return {pid for pid in children_of(self.pid) if b"spawn_main" in _cmdline(pid)}

    def stop(self) -> None:
        """SIGTERM the master (SIGKILL if it hangs), then SIGKILL any worker left."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        for pid in self.seen_workers:
            if not is_dead(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as file:
            return file.read()


# uvicorn(*args): a started uvicorn master with these extra arguments, stopped after the test.
StartUvicorn = Callable[..., Uvicorn]


def wait_for_connected_workers(
    worker_pids: Callable[[], set[int]], count: int, timeout: float = 30
) -> set[int]:
    """Wait until ``count`` workers run and each is a client of the sharedstate server.

    An ASGI worker connects in its lifespan, before it accepts a request, so a connected
    worker is one that serves. Returns their pids.
    """
    deadline = time.monotonic() + timeout
    while True:
        pids = worker_pids()
        if len(pids) == count and pids <= _sharedstate_clients():
            return pids
        assert time.monotonic() < deadline, f"not {count} of workers {pids} use the server"
        time.sleep(0.05)


def concurrent_posts(url: str, path: str, count: int) -> list[httpx.Response]:
    """``count`` POSTs to ``url + path``, 32 at a time, each on a new connection.

    Each POST has a client of its own: httpcore's pool, shared by threads, can close a
    connection under a request that waits for its reply (encode/httpcore#1110), which
    showed here as a ReadError "Bad file descriptor".
    """
    with ThreadPoolExecutor(max_workers=32) as pool:
        return list(pool.map(lambda _: httpx.post(url + path, timeout=30), range(count)))


def _sharedstate_clients() -> set[int]:
    try:
        return {client["pid"] for client in server_info(2.0)["clients"]}
    except SharedStateError:  # no server yet
        return set()


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:
        return b""
