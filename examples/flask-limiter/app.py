"""Flask-Limiter with its counters in sharedstate: one limit for all gunicorn workers.

Run it with gunicorn and the config beside it (see README.md in this folder).
"""

from __future__ import annotations

import os

from flask import Flask
from flask.typing import ResponseReturnValue
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

import sharedstate.limits  # noqa: F401  (registers the "sharedstate://" storage with limits)

app = Flask(__name__)
# strategy="moving-window" or "sliding-window-counter" work too; the default is fixed-window.
limiter = Limiter(get_remote_address, app=app, storage_uri="sharedstate://")


@app.get("/")
@limiter.limit("10 per minute")
def index() -> ResponseReturnValue:
    """10 requests a minute per client address, however many workers serve them."""
    return f"served by worker {os.getpid()}\n"
