"""The asyncio end-to-end benchmark's app: a FastAPI counter, backed by BENCH_AIO_BACKEND.

- ``sharedstate``: ``sharedstate.aio``, as its users are told to write it:
  ``await get_shared_state()`` in every request (the server's address comes from
  SHAREDSTATE_ADDRESS), then ``await state.incr("hits")``;
- ``redis``: ``redis.asyncio`` ``INCR`` on the redis-server at BENCH_REDIS_SOCKET.

``POST /hits`` counts one hit and answers the new count; ``GET /value`` answers the
count without changing it. Served by ``uvicorn --workers 4`` (``bench/aio.py``).
"""

from __future__ import annotations

import asyncio.base_events
import os
import socket

from fastapi import FastAPI

BACKEND = os.environ["BENCH_AIO_BACKEND"]
app = FastAPI()


def _set_nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


if os.environ.get("BENCH_AIO_NODELAY", "1") == "1":
    # With --workers, uvicorn 0.54 binds its socket as socket.socket(family=...), so its
    # proto is 0 and asyncio, which sets TCP_NODELAY only when proto is IPPROTO_TCP,
    # leaves Nagle on for every accepted connection: each keep-alive response (headers
    # and body written apart) then waits ~40 ms for the client's delayed ACK, and
    # requests/s is 64 connections / 44 ms whatever the backend. One worker (whose
    # socket asyncio makes itself) answers in 0.5 ms. Set it as asyncio would.
    asyncio.base_events._set_nodelay = _set_nodelay  # type: ignore[attr-defined]

if BACKEND == "sharedstate":
    from sharedstate.aio import get_shared_state

    @app.post("/hits")
    async def hit() -> int:
        state = await get_shared_state()
        return await state.incr("hits")  # type: ignore[no-any-return]

    @app.get("/value")
    async def value() -> int:
        state = await get_shared_state()
        return int(await state.get("hits", 0))

elif BACKEND == "redis":
    import redis.asyncio

    # One client (and its connection pool) per worker process; connections are made
    # on first use, in the worker's event loop.
    _redis = redis.asyncio.Redis(unix_socket_path=os.environ["BENCH_REDIS_SOCKET"])

    @app.post("/hits")
    async def hit() -> int:
        return await _redis.incr("hits")  # type: ignore[no-any-return]

    @app.get("/value")
    async def value() -> int:
        return int(await _redis.get("hits") or 0)

else:
    raise ValueError(f"BENCH_AIO_BACKEND={BACKEND!r}: expected sharedstate or redis")
