"""The three things people come to sharedstate for, in one Flask app.

Run it with gunicorn and the config beside it (see README.md in this folder).
"""

from __future__ import annotations

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from sharedstate.flask import SharedStateExtension, shared_state

app = Flask(__name__)
SharedStateExtension(app)  # settings from app.config, then SHAREDSTATE_* variables, then .env


@app.get("/count")
def count() -> ResponseReturnValue:
    """A counter that is right under load: with 4 workers, 100 requests get 1..100."""
    return str(shared_state().incr("hits"))


@app.post("/visits/<page>")
def visit(page: str) -> ResponseReturnValue:
    """Nested data updated in place: one key holds a dict of dicts, changed atomically."""
    state = shared_state()
    state.setdefault("stats", {"pages": {}})
    state["stats"]["pages"].incr(page)  # a write inside the value, not a copy of it
    return jsonify(state["stats"].copy())


@app.post("/log")
def log() -> ResponseReturnValue:
    """A read-modify-write under the shared lock: keep the last 5 messages."""
    message = request.get_data(as_text=True)
    state = shared_state()
    with state.lock:  # workers that also take the lock can't interleave with us
        lines = [*state.get("log", []), message][-5:]
        state["log"] = lines
    return jsonify(lines)
