"""The systems compared, each behind the same small interface.

A :class:`System` starts its server (if it has one) in a private directory; in each
client process, :meth:`System.client` returns an object with the operations below.
Where a system has no native operation, the usual recipe stands in (noted per system).

Operations: ``get``, ``set``, ``incr`` (atomic increment), ``locked_rmw`` (read and
write back a value under the system's lock), ``nested`` (change one field inside a
stored dict), ``get_batch`` / ``set_batch`` (100 keys).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from multiprocessing import Lock as process_lock  # the seed recipe's lock
from multiprocessing.connection import Client, Listener
from multiprocessing.managers import AcquirerProxy, BaseManager, DictProxy
from typing import Any

AUTHKEY = b"bench-" + os.urandom(16).hex().encode()


class System:
    name = ""
    available = True
    why_unavailable = ""

    def start(self, workdir: str) -> None: ...

    def stop(self) -> None: ...

    def client(self) -> Any:
        raise NotImplementedError

    def server_pid(self) -> int | None:
        return None


# -- the floor: one bare multiprocessing.connection round trip -------------------------


def _echo_server(address: str, ready: Any) -> None:
    listener = Listener(address, authkey=AUTHKEY, backlog=64)
    ready.set()
    last: list[Any] = [None]  # the value last set: what every get returns

    def serve(conn: Any) -> None:
        try:
            while True:
                op, key, value = conn.recv()
                if op == "set":
                    last[0] = value
                    conn.send(("#RETURN", None))
                elif isinstance(key, list):
                    conn.send(("#RETURN", [last[0]] * len(key)))
                else:
                    conn.send(("#RETURN", last[0]))
        except EOFError:
            pass

    while True:
        threading.Thread(target=serve, args=(listener.accept(),), daemon=True).start()


class Floor(System):
    """One ``multiprocessing.connection`` round trip per operation, authkey handshake and
    pickling included, against a server that does nothing: the transport's limit."""

    name = "floor"

    def start(self, workdir: str) -> None:
        import multiprocessing

        self.address = os.path.join(workdir, "floor.sock")
        context = multiprocessing.get_context("fork")
        ready = context.Event()
        self.process = context.Process(target=_echo_server, args=(self.address, ready), daemon=True)
        self.process.start()
        ready.wait(10)

    def stop(self) -> None:
        self.process.kill()
        self.process.join()

    def client(self) -> Any:
        return _FloorClient(Client(self.address, authkey=AUTHKEY))

    def server_pid(self) -> int | None:
        return self.process.pid


class _FloorClient:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def _round_trip(self, op: str, key: Any, value: Any = None) -> Any:
        self.conn.send((op, key, value))
        return self.conn.recv()[1]

    def get(self, key: str) -> Any:
        return self._round_trip("get", key)

    def set(self, key: str, value: bytes) -> None:
        self._round_trip("set", key, value)

    incr = get
    locked_rmw = get
    nested = get

    def get_batch(self, keys: list[str]) -> Any:
        return self._round_trip("get", keys)

    def set_batch(self, mapping: dict[str, bytes]) -> None:
        self._round_trip("set", None, next(iter(mapping.values())))

    def prefill_nested(self, mapping: dict[str, dict[str, bytes]]) -> None:
        pass


# -- the common recipe: a BaseManager serving a dict and a lock (what sharedstate replaces) --

_seed_dict: dict[str, Any] = {}
_seed_lock = process_lock()


def _seed_get_dict() -> dict[str, Any]:
    return _seed_dict


def _seed_get_lock() -> Any:
    return _seed_lock


class _SeedManager(BaseManager):
    pass


_SeedManager.register("get_dict", _seed_get_dict, DictProxy)
_SeedManager.register("get_lock", _seed_get_lock, AcquirerProxy)


class SeedRecipe(System):
    """The BaseManager recipe of ../shared/seeds/004: DictProxy and AcquirerProxy.
    incr is lock + get + set; nested is get, change, set (not atomic)."""

    name = "BaseManager recipe"

    def start(self, workdir: str) -> None:
        self.address = os.path.join(workdir, "seed.sock")
        self.manager = _SeedManager(self.address, AUTHKEY)
        self.manager.start()

    def stop(self) -> None:
        self.manager.shutdown()

    def client(self) -> Any:
        manager = _SeedManager(self.address, AUTHKEY)
        manager.connect()
        return _SeedClient(manager.get_dict(), manager.get_lock())  # type: ignore[attr-defined]

    def server_pid(self) -> int | None:
        return self.manager._process.pid  # type: ignore[attr-defined,no-any-return]


class _SeedClient:
    def __init__(self, shared: Any, lock: Any) -> None:
        self.shared = shared
        self.lock = lock

    def get(self, key: str) -> Any:
        return self.shared[key]

    def set(self, key: str, value: bytes) -> None:
        self.shared[key] = value

    def incr(self, key: str) -> Any:
        with self.lock:
            self.shared[key] = self.shared.get(key, 0) + 1
        return None

    def locked_rmw(self, key: str) -> None:
        with self.lock:
            self.shared[key] = self.shared[key]

    def nested(self, key: str) -> None:
        value = self.shared[key]
        value["field"] = value["field"]
        self.shared[key] = value

    def get_batch(self, keys: list[str]) -> Any:
        return [self.shared[key] for key in keys]

    def set_batch(self, mapping: dict[str, bytes]) -> None:
        self.shared.update(mapping)

    prefill_nested = set_batch


# -- Redis, through redis-py ------------------------------------------------------------


class Redis(System):
    """A real redis-server on a private Unix socket, no persistence. locked_rmw uses
    redis-py's Lock; nested is HSET on a hash; batches are MGET and MSET."""

    name = "redis-py"

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        try:
            import redis  # noqa: F401
        except ImportError:
            self.available, self.why_unavailable = False, "the redis package is not installed"
        if self.binary is None:
            self.available = False
            self.why_unavailable = "redis-server not found (bench/setup.sh installs it)"

    def start(self, workdir: str) -> None:
        assert self.binary is not None
        self.socket = os.path.join(workdir, "redis.sock")
        self.process = subprocess.Popen(
            [self.binary, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def client(self) -> Any:
        import redis

        return _RedisClient(redis.Redis(unix_socket_path=self.socket))

    def server_pid(self) -> int | None:
        return self.process.pid


class _RedisClient:
    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.lock = redis.lock("bench-lock")

    def get(self, key: str) -> Any:
        return self.redis.get(key)

    def set(self, key: str, value: bytes) -> None:
        self.redis.set(key, value)

    def incr(self, key: str) -> Any:
        return self.redis.incr(key)

    def locked_rmw(self, key: str) -> None:
        with self.lock:
            self.redis.set(key, self.redis.get(key))

    def nested(self, key: str) -> None:
        self.redis.hset(f"hash:{key}", "field", b"x")

    def get_batch(self, keys: list[str]) -> Any:
        return self.redis.mget(keys)

    def set_batch(self, mapping: dict[str, bytes]) -> None:
        self.redis.mset(mapping)

    def prefill_nested(self, mapping: dict[str, dict[str, bytes]]) -> None:
        pass  # HSET creates the hash


# -- diskcache: files in a temp directory ------------------------------------------------


class DiskCache(System):
    """diskcache.Cache (SQLite in a temp directory): no server process. locked_rmw uses
    diskcache.Lock; nested is get, change, set in a transaction; batches are loops."""

    name = "diskcache"

    def __init__(self) -> None:
        try:
            import diskcache  # noqa: F401
        except ImportError:
            self.available, self.why_unavailable = False, "the diskcache package is not installed"

    def start(self, workdir: str) -> None:
        self.directory = os.path.join(workdir, "diskcache")

    def client(self) -> Any:
        import diskcache

        return _DiskCacheClient(diskcache.Cache(self.directory), diskcache)


class _DiskCacheClient:
    def __init__(self, cache: Any, module: Any) -> None:
        self.cache = cache
        self.lock = module.Lock(cache, "bench-lock")

    def get(self, key: str) -> Any:
        return self.cache.get(key)

    def set(self, key: str, value: bytes) -> None:
        self.cache.set(key, value)

    def incr(self, key: str) -> Any:
        return self.cache.incr(key)

    def locked_rmw(self, key: str) -> None:
        with self.lock:
            self.cache.set(key, self.cache.get(key))

    def nested(self, key: str) -> None:
        with self.cache.transact():
            value = self.cache.get(key)
            value["field"] = value["field"]
            self.cache.set(key, value)

    def get_batch(self, keys: list[str]) -> Any:
        return [self.cache.get(key) for key in keys]

    def set_batch(self, mapping: dict[str, Any]) -> None:
        with self.cache.transact():
            for key, value in mapping.items():
                self.cache.set(key, value)

    prefill_nested = set_batch


# -- sharedstate -------------------------------------------------------------------------


class SharedStateSystem(System):
    """sharedstate, memory only, started with `sharedstate serve`."""

    name = "sharedstate"

    def start(self, workdir: str) -> None:
        import sys

        self.address = os.path.join(workdir, "ss", "state.sock")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sharedstate", "serve", "--address", self.address,
             "--log-level", "WARNING"],
        )  # fmt: skip
        from sharedstate.client.launcher import try_connect
        from sharedstate.client.transport import Hello
        from sharedstate.config import load_settings

        deadline = time.monotonic() + 20
        hello = Hello("bench", os.urandom(16), resume=False)
        while (link := try_connect(load_settings({"address": self.address}), 5, hello)) is None:
            assert time.monotonic() < deadline, "sharedstate did not start"
            time.sleep(0.02)
        link.conn.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)

    def client(self) -> Any:
        from sharedstate import get_shared_state

        return _SharedStateClient(get_shared_state(self.address, start=False))

    def server_pid(self) -> int | None:
        return self.process.pid


class _SharedStateClient:
    def __init__(self, state: Any) -> None:
        self.state = state

    def get(self, key: str) -> Any:
        return self.state[key]

    def set(self, key: str, value: bytes) -> None:
        self.state[key] = value

    def incr(self, key: str) -> Any:
        return self.state.incr(key)

    def locked_rmw(self, key: str) -> None:
        with self.state.lock:
            self.state[key] = self.state[key]

    def nested(self, key: str) -> None:
        self.state[key]["field"] = b"x"

    def get_batch(self, keys: list[str]) -> Any:
        return self.state.get_many(keys)

    def set_batch(self, mapping: dict[str, Any]) -> None:
        self.state.set_many(mapping)

    prefill_nested = set_batch


ALL = (Floor, SeedRecipe, Redis, DiskCache, SharedStateSystem)
