"""A FastAPI app limited by slowapi with sharedstate's storage, for tests under uvicorn."""

from __future__ import annotations

import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from slowapi import Limiter
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address

import sharedstate.limits  # noqa: F401  (registers "sharedstate://" with limits)

limiter = Limiter(
    key_func=get_remote_address,
    storage_uri="sharedstate://",
    strategy=os.environ.get("LIMITER_STRATEGY", "fixed-window"),
)
app = FastAPI()
app.state.limiter = limiter


@app.exception_handler(RateLimitExceeded)
async def too_many_requests(request: Request, error: RateLimitExceeded) -> PlainTextResponse:
    # Blocks this worker's event loop on purpose, so that the others take the next requests.
    time.sleep(0.1)
    return PlainTextResponse(str(os.getpid()), status_code=429)  # which worker refused


@app.get("/pid", response_class=PlainTextResponse)
def pid() -> str:
    return str(os.getpid())


@app.get("/limited", response_class=PlainTextResponse)
@limiter.limit("10/minute")
async def limited(request: Request) -> str:
    time.sleep(0.1)
    return str(os.getpid())
