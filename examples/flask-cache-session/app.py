"""Flask-Caching and Flask-Session on sharedstate: a cache and sessions that every
gunicorn worker shares, without Redis. Run it with the config beside it (README.md)."""

from __future__ import annotations

import os
import time

from flask import Flask, Response, session
from flask.typing import ResponseReturnValue
from flask_caching import Cache
from flask_session import Session

from sharedstate import get_shared_state
from sharedstate.cachelib import SharedStateCache

app = Flask(__name__)
app.config.update(
    SECRET_KEY=os.environ.get("SECRET_KEY", "change me"),
    # Flask-Caching builds the cache itself, from the class's path and CACHE_OPTIONS.
    CACHE_TYPE="sharedstate.cachelib.SharedStateCache",
    CACHE_DEFAULT_TIMEOUT=60,
    CACHE_OPTIONS={"key_prefix": "flask_cache_"},
    # Flask-Session takes a cachelib cache object; its keys are "session:<id>".
    SESSION_TYPE="cachelib",
    SESSION_CACHELIB=SharedStateCache(key_prefix=""),
)
cache = Cache(app)
Session(app)


@app.after_request
def tell_the_worker(response: Response) -> Response:
    response.headers["X-Worker-Pid"] = str(os.getpid())  # which worker answered
    return response


@app.get("/report")
@cache.cached(timeout=30)
def report() -> ResponseReturnValue:
    """Expensive to compute: cached for 30 s for every worker."""
    runs = get_shared_state().incr("report_runs")  # how many times this body ran
    time.sleep(0.5)
    return f"report #{runs}, computed by worker {os.getpid()}\n"


@app.post("/login/<user>")
def login(user: str) -> ResponseReturnValue:
    session["user"] = user
    return f"logged in as {user}\n"


@app.get("/me")
def me() -> ResponseReturnValue:
    return f"{session.get('user', 'nobody')} (worker {os.getpid()})\n"


@app.post("/logout")
def logout() -> ResponseReturnValue:
    session.clear()
    return "logged out\n"


@app.get("/pid")
def pid() -> ResponseReturnValue:
    return str(os.getpid())
