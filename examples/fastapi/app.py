"""The three things people come to sharedstate for, in one FastAPI app.

Run it with ``uvicorn --workers 4``, or gunicorn with uvicorn's worker and the config
beside it (see README.md in this folder). Every worker runs the same code; the state,
the lock and the nested config are the same for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException

from sharedstate.aio import AsyncSharedState
from sharedstate.errors import KeyNotFound, Timeout
from sharedstate.starlette import shared_state, shared_state_lifespan

DEFAULT_CONFIG = {"db": {"host": "localhost", "port": 5432}, "features": {"beta": False}}


@contextlib.asynccontextmanager
async def setup(app: FastAPI) -> AsyncIterator[None]:
    """The app's own lifespan, run by each worker once connected (so it may use the state)."""
    await app.state.shared.add("config", DEFAULT_CONFIG)  # atomic: the first worker's wins
    yield


# Each worker connects at startup (the first to find no server starts it, only one),
# runs setup(), and closes its connections at shutdown. Settings from SHAREDSTATE_*
# variables, then .env. Without a lifespan of your own: FastAPI(lifespan=lifespan).
app = FastAPI(lifespan=shared_state_lifespan(setup))

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


@app.get("/config/{path:path}")
async def get_config(path: str, state: State) -> Any:
    """A value in the nested config (``GET /config/db/port``), or all of it (``/config/``)."""
    value = await state.get_in(("config", *_steps(path)))
    if value is None:
        raise HTTPException(404, f"no config at {path!r}")
    return value


@app.put("/config/{section}/{name}")
async def set_config(section: str, name: str, value: Annotated[Any, Body()], state: State) -> Any:
    """Set one value inside the config (``PUT /config/db/port`` with ``5432``), on the server.

    Only that value changes: two workers setting different values at once both keep
    their write (a read-modify-write of the whole dict could lose one).
    """
    try:
        await state.set_in(("config", section, name), value)
    except KeyNotFound:
        raise HTTPException(404, f"no config section {section!r}") from None
    return await state.get_in(("config", section))


def _steps(path: str) -> list[str]:
    return [step for step in path.split("/") if step]
