"""The Flask extension, with Flask's test client and a real sharedstate server."""

from __future__ import annotations

import os

import pytest
from flask import Flask

import sharedstate
from sharedstate import ConfigError
from sharedstate.flask import SharedStateExtension, shared_state

from .support.procfs import server_pids
from .support.servers import ServerFactory, ServerProcess


def make_app(**config: object) -> Flask:
    app = Flask(__name__)
    app.config.update(config)

    @app.get("/hits")
    def hits() -> str:
        return str(shared_state().incr("hits"))

    return app


@pytest.mark.backends
def test_the_state_is_an_app_extension_and_a_request_helper(server: ServerProcess) -> None:
    app = make_app()
    SharedStateExtension(app)
    assert isinstance(app.extensions["sharedstate"], sharedstate.SharedState)
    client = app.test_client()
    assert client.get("/hits").text == "1"
    assert client.get("/hits").text == "2"
    with app.app_context():
        assert shared_state()["hits"] == 2


def test_app_config_comes_before_the_environment(
    server_factory: ServerFactory, workdir: str
) -> None:
    elsewhere = os.path.join(workdir, "other", "state.sock")
    server_factory(address=elsewhere).start()
    app = make_app(SHAREDSTATE_ADDRESS=elsewhere)
    extension = SharedStateExtension()
    extension.init_app(app)  # the app-factory way
    assert app.test_client().get("/hits").text == "1"
    with app.app_context():
        assert str(extension.state.address) == elsewhere


def test_creating_the_app_connects_nothing_until_first_use(workdir: str) -> None:
    app = make_app()
    SharedStateExtension(app)  # as in a gunicorn master with --preload: no server needed yet
    assert server_pids(workdir) == []
    assert app.test_client().get("/hits").text == "1"  # started on first use
    assert len(server_pids(workdir)) == 1


def test_a_bad_setting_in_app_config_is_reported_at_setup() -> None:
    app = make_app(SHAREDSTATE_FSYNC="sometimes")
    with pytest.raises(ConfigError, match=r"app.config\['SHAREDSTATE_FSYNC'\]: 'sometimes'"):
        SharedStateExtension(app)


def test_the_helper_says_when_the_extension_is_missing() -> None:
    app = make_app()
    with app.app_context(), pytest.raises(ConfigError, match="SharedStateExtension"):
        shared_state()


def test_the_old_name_of_the_extension_still_works_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="SharedStateExtension"):
        from sharedstate.flask import SharedState
    assert SharedState is SharedStateExtension


def test_any_other_missing_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'SharedStat'"):
        sharedstate.flask.SharedStat  # type: ignore[attr-defined]  # noqa: B018 - a typo is an error, not the old name
