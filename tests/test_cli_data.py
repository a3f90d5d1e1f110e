"""Operator commands against a running server: get, set, del, keys, incr, status."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sharedstate import get_shared_state

from .support.backends import NO_SERVER_THERE
from .support.processes import REPO_ROOT, run_cli
from .support.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.backends


def test_set_then_get_as_json(server: ServerProcess) -> None:
    assert run_cli("set", "cfg", '{"db": {"port": 5432}, "hosts": ["a"]}').returncode == 0
    assert get_shared_state(start=False)["cfg"] == {"db": {"port": 5432}, "hosts": ["a"]}
    result = run_cli("get", "cfg")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"db": {"port": 5432}, "hosts": ["a"]}


def test_raw_strings(server: ServerProcess) -> None:
    assert run_cli("set", "greeting", "hello world", "--raw").returncode == 0
    assert get_shared_state(start=False)["greeting"] == "hello world"
    assert run_cli("get", "greeting").stdout == '"hello world"\n'
    assert run_cli("get", "greeting", "--raw").stdout == "hello world\n"


def test_a_value_that_is_not_json_is_a_usage_error(server: ServerProcess) -> None:
    result = run_cli("set", "greeting", "hello world")
    assert result.returncode == 2
    assert "--raw" in result.stderr
    assert "greeting" not in get_shared_state(start=False)


def test_values_json_cannot_hold_are_shown_in_python_notation(server: ServerProcess) -> None:
    get_shared_state(start=False)["pair"] = (1, 2)
    assert run_cli("get", "pair").stdout == "(1, 2)\n"


def test_incr_and_del(server: ServerProcess) -> None:
    assert run_cli("incr", "hits").stdout == "1\n"
    assert run_cli("incr", "hits", "10").stdout == "11\n"
    assert run_cli("incr", "hits", "-2").stdout == "9\n"
    assert run_cli("incr", "ratio", "0.5").stdout == "0.5\n"
    assert run_cli("del", "hits").returncode == 0
    assert "hits" not in get_shared_state(start=False)


def test_keys_with_a_pattern(server: ServerProcess) -> None:
    get_shared_state(start=False).update({"user:1": 1, "user:2": 2, "session:9": 3, 7: "int"})
    assert run_cli("keys").stdout.split() == ["7", "session:9", "user:1", "user:2"]
    assert run_cli("keys", "user:*").stdout.split() == ["user:1", "user:2"]
    assert json.loads(run_cli("keys", "user:?", "--json").stdout) == ["user:1", "user:2"]


def test_keys_with_no_match_print_nothing(server: ServerProcess) -> None:
    get_shared_state(start=False)["user:1"] = 1
    result = run_cli("keys", "zzz*")
    assert result.returncode == 0
    assert result.stdout == ""
    assert run_cli("keys", "zzz*", "--json").stdout == "[]\n"


def test_keys_tell_a_str_from_other_types(server: ServerProcess) -> None:
    get_shared_state(start=False).update(
        {1: "int", "1": "str", "None": "str", None: "none", ("a", 1): "tuple", " pad": "str",
         "two\nlines": "str", "plain": "str", 2.5: "float", b"raw": "bytes"}
    )  # fmt: skip
    lines = run_cli("keys").stdout.splitlines()
    assert sorted(lines) == sorted(
        ["1", "'1'", "'None'", "None", "('a', 1)", "' pad'", "'two\\nlines'", "plain", "2.5",
         "b'raw'"]
    )  # fmt: skip
    listed = json.loads(run_cli("keys", "--json").stdout)
    assert sorted(map(json.dumps, listed)) == sorted(
        map(json.dumps, [1, "1", "None", None, ["a", 1], " pad", "two\nlines", "plain", 2.5,
                         {"python": "b'raw'"}])
    )  # fmt: skip
    assert run_cli("keys", "1").stdout.splitlines() == ["'1'", "1"]


@pytest.mark.parametrize(
    ("command", "complaint"),
    [
        (("get", "missing"), "key 'missing' not found"),
        (("del", "missing"), "key 'missing' not found"),
        (("incr", "text"), "not a number"),
    ],
)
def test_runtime_errors_are_one_line_and_exit_1(
    server: ServerProcess, command: tuple[str, ...], complaint: str
) -> None:
    get_shared_state(start=False)["text"] = "abc"
    result = run_cli(*command)
    assert result.returncode == 1
    assert complaint in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_incr_amount_must_be_a_number(server: ServerProcess) -> None:
    assert run_cli("incr", "hits", "many").returncode == 2


@pytest.mark.local_only("status of the local server process (pid, memory, persistence)")
def test_status_json_has_the_operator_facts(server: ServerProcess) -> None:
    get_shared_state(start=False)["x"] = 1
    info = json.loads(run_cli("status", "--json").stdout)
    assert info["running"] is True
    assert info["pid"] == server.pid
    assert info["keys"] == 1
    assert info["memory_bytes"] > 1_000_000
    assert info["persistence"] is None
    assert isinstance(info["clients"], list)
    assert info["uptime"] >= 0


@pytest.mark.local_only("starts a second local server at another address")
def test_the_address_flag_works_before_and_after_the_command(
    server_factory: ServerFactory, workdir: str
) -> None:
    elsewhere = os.path.join(workdir, "other", "state.sock")  # not SHAREDSTATE_ADDRESS
    server_factory(address=elsewhere).start()
    assert run_cli("--address", elsewhere, "set", "k", "1").returncode == 0
    assert run_cli("get", "k", "--address", elsewhere).stdout == "1\n"
    assert run_cli("get", "k").returncode == 3  # the environment's address: no server there


@pytest.mark.local_only(NO_SERVER_THERE)
@pytest.mark.parametrize(
    "command",
    [("get", "k"), ("set", "k", "1"), ("del", "k"), ("keys",), ("incr", "k"), ("status",),
     ("stop",), ("snapshot",), ("dump", "-")],
)  # fmt: skip
def test_commands_exit_3_when_no_server_runs(command: tuple[str, ...]) -> None:
    result = run_cli(*command)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr


def _read_then_close(args: tuple[str, ...], size: int) -> tuple[int, bytes]:
    """Run the CLI into a pipe whose reader takes ``size`` bytes and leaves, like ``head``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sharedstate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
    )
    assert process.stdout is not None
    assert process.stderr is not None
    if size:
        assert len(process.stdout.read(size)) == size
    process.stdout.close()
    stderr = process.stderr.read()
    process.stderr.close()
    return process.wait(60), stderr


@pytest.mark.parametrize(
    ("command", "size"),
    [(("status",), 0), (("status", "--json"), 0), (("keys",), 0), (("get", "big"), 0),
     (("dump", "-"), 0), (("dump", "-"), 20), (("dump", "-", "--format", "json"), 0),
     (("--help",), 0)],
)  # fmt: skip
def test_a_reader_that_stops_early_ends_the_command_quietly(
    server: ServerProcess, command: tuple[str, ...], size: int
) -> None:
    # With size 0 the reader has left before the command writes; the pickle dump is more
    # than a pipe holds, so it is still writing when the reader leaves after 20 bytes.
    state = get_shared_state(start=False)
    state.update({f"key:{index:06}": "x" * 20 for index in range(20_000)})
    state["big"] = "y" * 1_000_000
    returncode, stderr = _read_then_close(command, size)
    assert stderr == b""
    assert returncode == 1


@pytest.mark.local_only("serve against a running local server")
def test_serve_while_a_server_runs_says_so_once(server: ServerProcess) -> None:
    result = run_cli("serve")
    assert result.returncode == 1
    assert "already running" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
