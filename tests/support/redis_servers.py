"""A real ``redis-server`` for tests: private directory, password, loopback or a Unix socket.

Each test session starts its own (``redis_server`` in ``conftest.py``), never a system
one: on a free loopback port and a Unix socket in its own directory, with
``requirepass`` set, no persistence, and ``protected-mode`` on. Tests that restart or
kill it start one of their own.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from urllib.parse import quote

REDIS_SERVER = shutil.which("redis-server")


def why_no_redis_server() -> str | None:
    if REDIS_SERVER is None:
        return (
            "redis-server is not installed; the Redis backend's tests need it: "
            "sudo apt-get install -y redis-server (.ci/run does that)"
        )
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process in ``directory``, started by :meth:`start`."""

    # What it keeps on disk: nothing (a durable one overrides this).
    persistence: tuple[str, ...] = ("--save", "", "--appendonly", "no")

    def __init__(self, directory: str, *, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(24)
        self.socket_path = os.path.join(directory, "redis.sock")
        self.log_path = os.path.join(directory, "redis.log")
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        """``redis://`` over TCP on loopback, with the password."""
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{db}"

    def unix_url(self, db: int = 0) -> str:
        """``redis+unix://`` on the server's Unix socket, with the password."""
        password = quote(self.password, safe="")
        return f"redis+unix://:{password}@{self.socket_path}?db={db}"

    def start(self, timeout: float = 15.0) -> RedisServer:
        assert REDIS_SERVER is not None, why_no_redis_server()
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        argv = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--requirepass", self.password,
            "--dir", self.directory,
            *self.persistence,
            "--protected-mode", "yes",
            "--logfile", self.log_path,
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.answers():  # answers once any append-only file is loaded
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited: {self.log()}")
            assert time.monotonic() < deadline, f"redis-server not ready: {self.log()}"
            time.sleep(0.02)
        return self

    def answers(self) -> bool:
        """Whether it answers an authenticated PING on its TCP port."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
                conn.sendall(_command("AUTH", self.password) + _command("PING"))
                reply = b""
                while reply.count(b"\r\n") < 2:
                    chunk = conn.recv(256)
                    if not chunk:
                        return False
                    reply += chunk
                return reply == b"+OK\r\n+PONG\r\n"
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return log.read()[-4000:]
        except OSError:
            return "(no log)"


def _command(*words: str) -> bytes:
    """One command in Redis's wire format (RESP)."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)
