"""A Flask app limited by Flask-Limiter with sharedstate's storage, for tests under gunicorn.

``LIMITER_STRATEGY`` picks the strategy (Flask-Limiter's names: ``fixed-window``,
``moving-window``, ``sliding-window-counter``).
"""

from __future__ import annotations

import os
import time

from flask import Flask
from flask.typing import ResponseReturnValue
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

import sharedstate.limits  # noqa: F401  (registers "sharedstate://" with limits)

app = Flask(__name__)
limiter = Limiter(
    get_remote_address,
    app=app,
    storage_uri="sharedstate://",
    strategy=os.environ.get("LIMITER_STRATEGY", "fixed-window"),
)


@app.errorhandler(429)
def too_many_requests(error: Exception) -> ResponseReturnValue:
    time.sleep(0.1)  # a worker busy this long leaves the next requests to the others
    return str(os.getpid()), 429  # which worker refused, as /limited says which served


@app.get("/pid")
def pid() -> ResponseReturnValue:
    return str(os.getpid())


@app.get("/limited")
@limiter.limit("10 per minute")
def limited() -> ResponseReturnValue:
    time.sleep(0.1)
    return str(os.getpid())
