"""The example app, plus two endpoints the gunicorn tests need."""

from __future__ import annotations

import importlib
import os
import sys
import time

from flask import Flask
from flask.typing import ResponseReturnValue

from sharedstate import get_shared_state
from sharedstate.flask import shared_state

from .processes import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "examples", "gunicorn"))
app: Flask = importlib.import_module("app").app

if os.environ.get("TEST_TOUCH_STATE_AT_IMPORT"):
    # What some apps do at import; with --preload, in the master before on_starting.
    get_shared_state().setdefault("imported", True)


@app.get("/pid")
def pid() -> ResponseReturnValue:
    return str(os.getpid())


@app.get("/hold-lock")
def hold_lock() -> ResponseReturnValue:
    """Take the shared lock and keep it until this worker is killed."""
    with shared_state().lock:
        time.sleep(120)
    return "released"
