"""A Flask extension: the shared state as ``app.extensions["sharedstate"]``.

::

    from flask import Flask
    from sharedstate.flask import SharedState, shared_state

    app = Flask(__name__)
    SharedState(app)                      # or: ext = SharedState(); ext.init_app(app)

    @app.route("/")
    def hits():
        return str(shared_state().incr("hits"))

Settings come from ``app.config`` keys named like the environment variables
(``SHAREDSTATE_ADDRESS``, ``SHAREDSTATE_AUTHKEY``...), falling back to the environment
and ``.env``. The state connects on first use, in the worker that uses it, so creating
the app in a gunicorn master (``--preload``) or an app factory is safe.

(The extension is named ``SharedState`` by Flask convention; the object it provides is a
:class:`sharedstate.SharedState`.)
"""

from __future__ import annotations

from flask import Flask, current_app

from .client import state as _state
from .config import SETTINGS, load_settings
from .errors import ConfigError

EXTENSION = "sharedstate"


class SharedState:
    """Registers the shared state on a Flask app."""

    def __init__(self, app: Flask | None = None, *, start: bool = True, timeout: float = 10.0):
        self.start = start
        self.timeout = timeout
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        overrides = {spec.name: app.config[spec.env] for spec in SETTINGS if spec.env in app.config}
        settings = load_settings(overrides, overrides_from="app.config")
        app.extensions[EXTENSION] = _state.connect_state(
            settings, start=self.start, timeout=self.timeout, lazy=True
        )

    @property
    def state(self) -> _state.SharedState:
        """The state of the current app (inside a request or app context)."""
        return shared_state()


def shared_state() -> _state.SharedState:
    """The shared state of the current Flask app; use it inside a request."""
    try:
        return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]
    except KeyError:
        raise ConfigError(
            "sharedstate is not set up on this app: call SharedState(app) or init_app(app)"
        ) from None
