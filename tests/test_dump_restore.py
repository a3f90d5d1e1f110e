"""`sharedstate dump` and `restore`: round trips, refusals, and never clobbering files."""

from __future__ import annotations

import json
import os
import pickle
import pty
import re
import signal
import subprocess
import sys

import pytest

from sharedstate import get_shared_state

from .support.clients import fresh_state
from .support.dumps import RICH
from .support.persisted import snapshot_in
from .support.processes import REPO_ROOT, run_cli
from .support.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.backends

PLAIN = {"text": "héllo", "n": 3, "ratio": 0.5, "flags": [True, False, None], "cfg": {"a": [1]}}


def test_pickle_dump_and_restore_round_trip_every_value(
    server: ServerProcess, workdir: str
) -> None:
    state = get_shared_state(start=False)
    state.update(RICH)
    state.namespace.mode = "live"
    path = os.path.join(workdir, "backup.dump")
    result = run_cli("dump", path)
    assert result.returncode == 0, result.stderr
    assert os.stat(path).st_mode & 0o077 == 0
    state.clear()
    del state.namespace.mode
    state["other"] = 1
    result = run_cli("restore", path, "--replace")
    assert result.returncode == 0, result.stderr
    assert state.to_dict() == RICH
    assert state.namespace.to_dict() == {"mode": "live"}


def test_json_dump_and_merge_restore_round_trip_plain_data(
    server: ServerProcess, workdir: str
) -> None:
    state = get_shared_state(start=False)
    state.update(PLAIN)
    path = os.path.join(workdir, "backup.json")
    assert run_cli("dump", path, "--format", "json").returncode == 0
    with open(path, encoding="utf-8") as file:
        assert json.load(file) == {"data": PLAIN, "namespace": {}}
    state.clear()
    state["kept"] = True
    assert run_cli("restore", path, "--merge").returncode == 0
    assert state.to_dict() == {**PLAIN, "kept": True}


def test_json_dump_to_standard_output(server: ServerProcess) -> None:
    get_shared_state(start=False)["n"] = 1
    result = run_cli("dump", "-", "--format", "json")
    assert json.loads(result.stdout) == {"data": {"n": 1}, "namespace": {}}


@pytest.mark.parametrize(
    ("key", "value", "complaint"),
    [
        ("pair", (1, 2), r"state\['pair'\] holds a tuple"),
        ("deep", {"a": [1, {2}]}, r"state\['deep'\]\['a'\]\[1\] holds a set"),
        ("nan", float("nan"), "JSON can't hold"),
        (7, "int key", "JSON keys must be strings"),
    ],
)
def test_json_dump_refuses_what_json_cannot_hold_and_names_it(
    server: ServerProcess, workdir: str, key: object, value: object, complaint: str
) -> None:
    get_shared_state(start=False)[key] = value
    path = os.path.join(workdir, "backup.json")
    result = run_cli("dump", path, "--format", "json")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--format pickle" in result.stderr
    assert re.search(complaint, result.stderr), result.stderr
    assert not os.path.exists(path)


def test_dump_never_replaces_a_file_without_force(server: ServerProcess, workdir: str) -> None:
    get_shared_state(start=False)["n"] = 1
    path = os.path.join(workdir, "mine.txt")
    with open(path, "w") as file:
        file.write("precious")
    result = run_cli("dump", path)
    assert result.returncode == 1
    assert "--force" in result.stderr
    with open(path) as file:
        assert file.read() == "precious"
    assert run_cli("dump", path, "--force").returncode == 0


def test_restore_needs_to_be_told_replace_or_merge(server: ServerProcess, workdir: str) -> None:
    path = os.path.join(workdir, "backup.dump")
    assert run_cli("dump", path).returncode == 0
    result = run_cli("restore", path)
    assert result.returncode == 2
    assert "--replace or --merge" in result.stderr


@pytest.mark.parametrize("flags", [("--merge", "--replace"), ("--replace", "--merge")])
def test_restore_refuses_both_replace_and_merge(
    server: ServerProcess, workdir: str, flags: tuple[str, str]
) -> None:
    # The last flag used to win: "--merge --replace" wiped every key not in the dump.
    state = get_shared_state(start=False)
    state["kept"] = 1
    path = os.path.join(workdir, "backup.json")
    with open(path, "w") as file:
        json.dump({"data": {"restored": 2}}, file)
    result = run_cli("restore", path, *flags)
    assert result.returncode == 2
    assert "not both" in result.stderr
    assert fresh_state().to_dict() == {"kept": 1}


def test_a_pickle_dump_others_could_write_is_refused(server: ServerProcess, workdir: str) -> None:
    path = os.path.join(workdir, "backup.dump")
    assert run_cli("dump", path).returncode == 0
    os.chmod(path, 0o646)
    result = run_cli("restore", path, "--merge")
    assert result.returncode == 1
    assert "another user" in result.stderr


@pytest.mark.local_only("the local server's snapshot file after a kill")
def test_restore_is_saved_in_the_snapshot(server_factory: ServerFactory, workdir: str) -> None:
    snapshot = snapshot_in(workdir)
    dump = os.path.join(workdir, "backup.json")
    with open(dump, "w") as file:
        json.dump({"data": {"restored": [1, 2]}}, file)
    server = server_factory("--snapshot", snapshot, "--no-journal").start()
    result = run_cli("restore", dump, "--replace")
    assert result.returncode == 0, result.stderr
    assert f"saved in {snapshot}" in result.stdout
    server.signal(signal.SIGKILL)  # no journal, no final snapshot: only the restore's own
    server.wait()
    server_factory("--snapshot", snapshot, "--no-journal").start()
    assert fresh_state().to_dict() == {"restored": [1, 2]}


def test_a_dump_path_that_cannot_be_written_is_one_line_and_exit_1(
    server: ServerProcess, workdir: str
) -> None:
    missing = os.path.join(workdir, "no-such-dir")
    result = run_cli("dump", os.path.join(missing, "backup.dump"))
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot write ")
    assert f"directory {missing} does not exist" in result.stderr
    assert ".tmp" not in result.stderr  # not the temporary file the dump is written to first
    assert len(result.stderr.strip().splitlines()) == 1


def _dump_to_a_terminal(*args: str) -> tuple[int, str, bytes]:
    """Run ``dump - ARGS`` with a terminal as its standard output."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "sharedstate", "dump", "-", *args],
            stdout=terminal,
            stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=REPO_ROOT),
        )
        os.close(terminal)
        shown = b""
        while True:  # read what reaches the terminal, so the dump never blocks on it
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            shown += chunk
        _, stderr = process.communicate(timeout=60)
    finally:
        os.close(controller)
    return process.returncode, stderr.decode(), shown


def test_a_pickle_dump_is_not_written_to_a_terminal(server: ServerProcess) -> None:
    get_shared_state(start=False)["n"] = 1
    returncode, stderr, shown = _dump_to_a_terminal()
    assert returncode == 2
    assert "refusing to write a binary pickle dump to the terminal" in stderr
    assert "--format json" in stderr
    assert shown == b""
    returncode, stderr, shown = _dump_to_a_terminal("--format", "json")
    assert returncode == 0, stderr
    assert json.loads(shown.replace(b"\r\n", b"\n")) == {"data": {"n": 1}, "namespace": {}}


@pytest.mark.local_only("a fault in the local server's snapshot file")
def test_restore_says_so_when_saving_it_fails(server_factory: ServerFactory, workdir: str) -> None:
    # It used to print "the server has no snapshot file" for any failure to save.
    snapshot = os.path.join(workdir, "state.snap")
    server_factory("--snapshot", snapshot, faults="replace@state.snap:1-").start()
    path = os.path.join(workdir, "backup.json")
    with open(path, "w") as file:
        json.dump({"data": {"restored": 1}}, file)
    result = run_cli("restore", path, "--merge")
    assert result.returncode == 1
    assert "no snapshot file" not in result.stdout
    assert snapshot in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert get_shared_state(start=False)["restored"] == 1, "applied, though not saved"


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (pickle.dumps({"a": 1}), "is a Python pickle, not a sharedstate dump"),
        (bytes(range(200, 256)), "is binary data, not a sharedstate dump"),
        ("naïve: not json".encode(), "is text, but not valid JSON"),
        (b"", "is empty"),
    ],
    ids=["plain-pickle", "binary", "text", "empty"],
)
def test_restoring_a_file_that_is_not_a_dump_says_what_it_looks_like(
    server: ServerProcess, workdir: str, content: bytes, said: str
) -> None:
    path = os.path.join(workdir, "not-a-dump")
    with open(path, "wb") as file:
        file.write(content)
    result = run_cli("restore", path, "--merge")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert said in line, line
    assert "what `sharedstate dump` writes" in line
    assert "codec can't decode" not in line


def test_dump_to_a_bare_file_name_writes_it_in_the_working_directory(
    server: ServerProcess, workdir: str
) -> None:
    get_shared_state(start=False)["k"] = 1
    result = run_cli("dump", "backup.pickle")  # the working directory is the test's
    assert (result.returncode, result.stderr) == (0, "")
    assert os.path.exists(os.path.join(workdir, "backup.pickle"))
    assert run_cli("restore", "backup.pickle", "--merge").returncode == 0
