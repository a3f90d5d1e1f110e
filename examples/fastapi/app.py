"""The three things people come to sharedstate for, in one FastAPI app.

Run it with ``uvicorn --workers 4``, or gunicorn with uvicorn's worker and the config
beside it (see README.md in this folder). Every worker runs the same code; the state,
the lock and the nested config are the same for all of them.
"""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException

from sharedstate.aio import AsyncSharedState
from sharedstate.errors import Timeout
from sharedstate.starlette import lifespan, shared_state

# Connects at startup in each worker (starting the server if none is running, once),
# closes at shutdown. Settings from SHAREDSTATE_* variables, then .env.
app = FastAPI(lifespan=lifespan)

State = Annotated[AsyncSharedState, Depends(shared_state)]


@app.get("/pid")
async def pid() -> int:
    """Which worker answered."""
    return os.getpid()


@app.post("/hits")
async def hit(state: State) -> int:
    """A counter that is right under load: with 4 workers, 200 requests get 1..200."""
    return int(await state.incr("hits"))


@app.get("/hits")
async def hits(state: State) -> int:
    """The counter, unchanged."""
    return int(await state.get("hits", 0))


@app.post("/hold")
async def hold(state: State, seconds: float = 1.0, timeout: float = 10.0) -> dict[str, Any]:
    """Take the lock all workers share, keep it ``seconds``, and say who had it.

    Waiting for the lock does not block this worker's other requests. If the worker is
    killed while it holds the lock, the server frees the lock at once.
    """
    try:
        async with state.lock.hold(timeout=timeout):
            await asyncio.sleep(seconds)
    except Timeout:
        raise HTTPException(503, f"the lock was not free within {timeout} s") from None
    return {"pid": os.getpid(), "held": seconds}


def _config_path(path: str) -> tuple[str, ...]:
    return ("config", *(step for step in path.split("/") if step))


@app.get("/config/{path:path}")
async def get_config(path: str, state: State) -> Any:
    """A value inside the nested config, e.g. ``GET /config/db/port``."""
    value = await state.get_in(_config_path(path), default=None)
    if value is None:
        raise HTTPException(404, f"no config at {path!r}")
    return value


@app.put("/config/{path:path}")
async def set_config(path: str, value: Annotated[Any, Body()], state: State) -> Any:
    """Set one value deep inside the config, e.g. ``PUT /config/db/port`` with ``5432``.

    Only that value changes, on the server: two workers setting different paths at once
    both keep their write (a read-modify-write of the whole dict would lose one).
    """
    steps = _config_path(path)
    await state.setdefault("config", {})
    for depth in range(2, len(steps)):  # the dicts on the way, where missing
        if await state.get_in(steps[:depth]) is None:
            await state.set_in(steps[:depth], {})
    await state.set_in(steps, value)
    return await state.get("config")
