"""The FastAPI example app (examples/fastapi/app.py), as the tests serve it, saying which
worker answered."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from .processes import REPO_ROOT

# Loaded from its file under a name of its own: the gunicorn example's module is "app" too.
_PATH = os.path.join(REPO_ROOT, "examples", "fastapi", "app.py")
_spec = importlib.util.spec_from_file_location("fastapi_example_app", _PATH)
assert _spec is not None
assert _spec.loader is not None
example = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = example
_spec.loader.exec_module(example)

app: FastAPI = example.app


@app.middleware("http")
async def say_which_worker(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Every response names the worker that sent it (the tests count the workers)."""
    response = await call_next(request)
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response
