"""`sharedstate get` of values the CLI can't load: it says what they are and shows them.

The CLI runs outside the app, without the app's modules on its path; the values here are
instances of classes defined in a module only the test process imports.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sharedstate import get_shared_state

from .support.processes import REPO_ROOT, run_cli
from .support.servers import ServerProcess

APP_MODULE = textwrap.dedent(
    """
    import enum

    class User:
        def __init__(self, name):
            self.name = name

    class Color(enum.Enum):
        RED = 1

    class Point:
        __slots__ = ("x", "y")
        def __init__(self, x, y):
            self.x, self.y = x, y

    class Tags(list):
        pass
    """
)


@pytest.fixture
def app(workdir: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The app's module, importable in this process only (from ``workdir/app``)."""
    folder = Path(workdir, "app")
    folder.mkdir()
    (folder / "shop_models.py").write_text(APP_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    import shop_models  # type: ignore[import-not-found]

    yield shop_models
    monkeypatch.delitem(sys.modules, "shop_models")


def test_get_names_what_it_cannot_load_and_the_ways_to_see_it(
    server: ServerProcess, app: Any
) -> None:
    get_shared_state(start=False)["user"] = app.User("ann")
    result = run_cli("get", "user")
    assert result.returncode == 1
    assert result.stdout == ""
    message = result.stderr
    assert message.count("\n") == 1
    assert "state['user'] holds a shop_models.User" in message
    assert f"({len(pickle.dumps(app.User('ann'), protocol=5))} bytes pickled)" in message
    assert "No module named 'shop_models'" in message
    assert "PYTHONPATH" in message
    assert "--format repr" in message


def test_repr_shows_stand_ins_for_classes_it_cannot_import(server: ServerProcess, app: Any) -> None:
    tags = app.Tags(["new", "sale"])
    tags.source = "import"
    get_shared_state(start=False)["order"] = {
        "by": app.User("ann"),
        "color": app.Color.RED,
        "at": app.Point(1, 2),
        "tags": tags,
        "n": 3,
    }
    result = run_cli("get", "order", "--format", "repr")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "{'by': shop_models.User(name='ann'), 'color': shop_models.Color(1), "
        "'at': shop_models.Point(x=1, y=2), 'tags': shop_models.Tags(['new', 'sale'], "
        "source='import'), 'n': 3}\n"
    )
    assert result.stderr == (
        "note: shown with stand-ins for shop_models.Color, shop_models.Point, "
        "shop_models.Tags, shop_models.User, which can't be imported here\n"
    )


def test_type_shows_type_and_size_without_the_class(server: ServerProcess, app: Any) -> None:
    state = get_shared_state(start=False)
    state["user"] = app.User("ann")
    state["plain"] = {"a": 1}
    size = len(state.pickled("user"))
    result = run_cli("get", "user", "--format", "type")
    assert result.returncode == 0
    assert result.stdout == f"shop_models.User, {size} bytes pickled\n"
    assert run_cli("get", "plain", "--format", "type").stdout == (
        f"dict, {len(state.pickled('plain'))} bytes pickled\n"
    )


def test_with_the_apps_modules_on_the_path_the_value_loads(
    server: ServerProcess, app: Any, workdir: str
) -> None:
    get_shared_state(start=False)["color"] = app.Color.RED
    app_path = os.pathsep.join([str(Path(workdir, "app")), REPO_ROOT])
    result = run_cli("get", "color", "--format", "repr", env={"PYTHONPATH": app_path})
    assert result.returncode == 0
    assert result.stdout == "<Color.RED: 1>\n"
    assert result.stderr == ""


def test_pickle_writes_the_stored_bytes_to_a_pipe(server: ServerProcess, app: Any) -> None:
    get_shared_state(start=False)["user"] = app.User("ann")
    result = subprocess.run(
        [sys.executable, "-m", "sharedstate", "get", "user", "--format", "pickle"],
        capture_output=True,
        timeout=60,
        check=False,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
    )
    assert result.returncode == 0, result.stderr
    assert pickle.loads(result.stdout).name == "ann"  # this process can import the class


def test_json_refuses_what_json_cannot_hold_and_points_to_repr(server: ServerProcess) -> None:
    get_shared_state(start=False).update({"pair": (1, 2), "cfg": {"port": 5432}})
    refused = run_cli("get", "pair", "--format", "json")
    assert refused.returncode == 1
    assert "use --format repr" in refused.stderr
    assert run_cli("get", "cfg", "--format", "json").stdout == '{"port": 5432}\n'
    assert run_cli("get", "pair").stdout == "(1, 2)\n"  # auto: Python's notation


def test_a_value_that_is_not_a_pickle_at_all_is_reported(server: ServerProcess) -> None:
    # A client can't store one (values are pickled for it); a restore from a damaged
    # dump can, since values stay pickled until used.
    from sharedstate.codec import Contents

    state = get_shared_state(start=False)
    state.restore(Contents(0, {"broken": b"\x80\x05garbage"}, {}), replace=False)
    result = run_cli("get", "broken", "--format", "repr")
    assert result.returncode == 1
    assert "state['broken'] holds 9 bytes that are not a whole pickle" in result.stderr
