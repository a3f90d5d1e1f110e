"""Secure by default: private files, a generated key, loopback only, wrong keys refused."""

from __future__ import annotations

import os
import stat

import pytest

from sharedstate import AuthenticationFailed, InsecurePermissions, get_shared_state

from .support.processes import run_cli
from .support.servers import ServerFactory, ServerProcess, free_tcp_port

STRONG_KEY = "k" * 40


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("default_address", [True, False], ids=["default", "configured"])
def test_socket_key_and_directory_are_owner_only(
    workdir: str, monkeypatch: pytest.MonkeyPatch, default_address: bool
) -> None:
    if default_address:
        monkeypatch.delenv("SHAREDSTATE_ADDRESS")
    state = get_shared_state()  # started on demand
    state["x"] = 1
    address = str(state.address)
    assert mode(os.path.dirname(address)) == 0o700
    assert stat.S_ISSOCK(os.lstat(address).st_mode)
    assert mode(address) == 0o600
    assert mode(address + ".key") == 0o600
    assert mode(address + ".lock") == 0o600
    assert mode(address + ".log") == 0o600


def test_the_generated_key_is_random_and_long(workdir: str) -> None:
    state = get_shared_state()
    with open(str(state.address) + ".key", "rb") as file:
        key = file.read().strip()
    assert len(key) == 64
    int(key, 16)  # hex: 32 bytes from secrets


def test_wrong_key_fails_fast_and_the_server_keeps_serving(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = get_shared_state(start=False)
    good["x"] = 1
    for _ in range(10):
        with pytest.raises(AuthenticationFailed, match="different keys"):
            get_shared_state(authkey=b"not-the-right-key-at-all", start=False, timeout=5)
    # A wrong key must never start a second server either.
    with pytest.raises(AuthenticationFailed):
        get_shared_state(authkey=b"not-the-right-key-at-all", start=True, timeout=5)
    assert good["x"] == 1
    good.close()
    assert get_shared_state(start=False)["x"] == 1
    server.wait_for_log("wrong key")


def test_a_key_file_readable_by_others_is_refused(server: ServerProcess) -> None:
    key_file = server.address + ".key"
    os.chmod(key_file, 0o644)
    with pytest.raises(InsecurePermissions, match="chmod 600"):
        get_shared_state(start=False)


def test_a_server_refuses_a_key_file_readable_by_others(workdir: str) -> None:
    key_file = os.path.join(workdir, "app.key")
    with open(key_file, "w") as file:
        file.write(STRONG_KEY)
    os.chmod(key_file, 0o640)
    result = run_cli("serve", "--authkey-file", key_file)
    assert result.returncode == 1
    assert "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr


def test_explicit_key_file_is_used_by_server_and_clients(
    server_factory: ServerFactory, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = os.path.join(workdir, "app.key")
    with open(key_file, "w") as file:
        file.write(STRONG_KEY + "\n")
    os.chmod(key_file, 0o600)
    monkeypatch.setenv("SHAREDSTATE_AUTHKEY_FILE", key_file)
    server = server_factory().start()
    assert not os.path.exists(server.address + ".key"), "no key generated when one is given"
    get_shared_state(start=False)["x"] = 1
    monkeypatch.setenv("SHAREDSTATE_AUTHKEY", STRONG_KEY)
    monkeypatch.delenv("SHAREDSTATE_AUTHKEY_FILE")
    assert get_shared_state(start=False)["x"] == 1


def test_a_runtime_directory_open_to_others_is_refused(
    workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHAREDSTATE_ADDRESS")
    private = os.path.join(workdir, "sharedstate")
    os.mkdir(private)
    os.chmod(private, 0o755)
    with pytest.raises(InsecurePermissions, match="chmod 700"):
        get_shared_state()
    assert mode(private) == 0o755, "we never change modes behind the user's back"


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a directory to another user")
def test_a_runtime_directory_owned_by_another_user_is_refused(
    workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHAREDSTATE_ADDRESS")
    private = os.path.join(workdir, "sharedstate")
    os.mkdir(private, 0o700)
    os.chown(private, 65534, 65534)
    with pytest.raises(InsecurePermissions, match="not to you"):
        get_shared_state()


def test_tcp_on_loopback_works(server_factory: ServerFactory) -> None:
    address = f"127.0.0.1:{free_tcp_port()}"
    server_factory(address=address).start()
    state = get_shared_state(address, start=False)
    state["over"] = "tcp"
    assert state["over"] == "tcp"


def test_a_non_loopback_address_needs_both_opt_in_and_a_key(workdir: str) -> None:
    address = f"0.0.0.0:{free_tcp_port()}"
    refused = run_cli("serve", "--address", address)
    assert refused.returncode == 1
    assert "--allow-remote" in refused.stderr
    keyless = run_cli("serve", "--address", address, "--allow-remote")
    assert keyless.returncode == 1
    assert "key you chose" in keyless.stderr


def test_a_non_loopback_address_with_opt_in_and_key_serves(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHAREDSTATE_AUTHKEY", STRONG_KEY)
    port = free_tcp_port()
    server = server_factory("--allow-remote", address=f"0.0.0.0:{port}")
    server.start()
    assert get_shared_state(f"127.0.0.1:{port}", start=False).incr("n") == 1
    assert "not encrypted" in server.log()


def test_a_lock_file_that_is_a_symbolic_link_is_refused_in_one_line(
    workdir: str, address: str
) -> None:
    os.makedirs(os.path.dirname(address), mode=0o700)
    target = os.path.join(workdir, "elsewhere")
    with open(target, "w") as file:
        file.write("someone else's file")
    os.symlink(target, address + ".lock")
    result = run_cli("serve", "--address", address)
    assert result.returncode == 1
    assert "is a symbolic link" in result.stderr
    assert "Traceback" not in result.stderr
    with open(target) as file:
        assert file.read() == "someone else's file"
