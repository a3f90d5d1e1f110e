"""A Flask extension: the shared state as ``app.extensions["sharedstate"]``.

::

    from flask import Flask
    from sharedstate.flask import SharedStateExtension, shared_state

    app = Flask(__name__)
    SharedStateExtension(app)     # or: ext = SharedStateExtension(); ext.init_app(app)

    @app.route("/")
    def hits():
        return str(shared_state().incr("hits"))

Settings come from ``app.config`` keys named like the environment variables
(``SHAREDSTATE_ADDRESS``, ``SHAREDSTATE_AUTHKEY``...), falling back to the environment
and ``.env``. The state connects on first use, in the worker that uses it, so creating
the app in a gunicorn master (``--preload``) or an app factory is safe.

The extension was called ``SharedState``, the name of the :class:`sharedstate.SharedState`
it provides; that name still works here, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from flask import Flask, current_app

# The module, not the class: a global named SharedState here would hide the deprecated
# alias that __getattr__ provides.
from .client import state as _state
from .config import SETTINGS, load_settings
from .errors import ConfigError

EXTENSION = "sharedstate"


class SharedStateExtension:
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
            "sharedstate is not set up on this app: call SharedStateExtension(app) or "
            "init_app(app)"
        ) from None


if TYPE_CHECKING:
    SharedState = SharedStateExtension  # the old name; type checkers see the class itself
else:

    def __getattr__(name: str) -> type[SharedStateExtension]:
        if name == "SharedState":
            warnings.warn(
                "sharedstate.flask.SharedState is now SharedStateExtension (it is the Flask "
                "extension, not the state); the old name will be removed in a future version",
                DeprecationWarning,
                stacklevel=2,
            )
            return SharedStateExtension
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
