"""A test ``redis-server`` that keeps every acknowledged write across restarts and crashes.

Like :class:`~tests.support.redis_servers.RedisServer`, but with the append-only file
on and ``appendfsync always``: Redis writes and fsyncs each command before it replies,
so whatever a client saw acknowledged is still there after a restart, even after
SIGKILL. Fault tests need that to tell a lost acknowledged write (a bug) from data a
non-persistent Redis simply forgot.
"""

from __future__ import annotations

import os
import subprocess
import time

from .redis_servers import REDIS_SERVER, RedisServer, why_no_redis_server


class DurableRedisServer(RedisServer):
    def start(self, timeout: float = 15.0) -> DurableRedisServer:
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
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--protected-mode", "yes",
            "--logfile", self.log_path,
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.answers():  # answers only once the append-only file is loaded
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited: {self.log()}")
            assert time.monotonic() < deadline, f"redis-server not ready: {self.log()}"
            time.sleep(0.02)
        return self
