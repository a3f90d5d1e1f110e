"""`sharedstate serve`, `stop` and `status` as an operator runs them."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from sharedstate import get_shared_state

from .support.clients import fresh_state
from .support.processes import run_cli
from .support.procfs import is_dead, server_pids
from .support.servers import ServerFactory, ServerProcess


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_stops_the_server_cleanly(server: ServerProcess, signum: int) -> None:
    get_shared_state(start=False)["x"] = 1
    server.signal(signum)
    assert server.wait() == 0
    assert not os.path.exists(server.address), "the socket file must be removed"
    assert "stopping" in server.log()
    assert "Traceback" not in server.log()


def test_status_reports_address_and_pid(server: ServerProcess) -> None:
    result = run_cli("status")
    assert result.returncode == 0
    assert server.address in result.stdout
    assert f"pid:      {server.pid}" in result.stdout


def test_commands_exit_3_and_say_the_next_step_when_nothing_runs(address: str) -> None:
    for command in (("status",), ("stop",), ("get", "k"), ("keys",)):
        result = run_cli(*command)
        assert result.returncode == 3, command
        assert address in result.stderr
        assert "Traceback" not in result.stderr
        [line] = result.stderr.splitlines()  # once, with the next step at a shell
        if command == ("stop",):
            assert "nothing to stop" in line
        else:
            assert "start one with `sharedstate serve`" in line
        assert "get_shared_state" not in line


def test_stop_stops_the_server_and_waits_for_it(server_factory: ServerFactory) -> None:
    for _ in range(5):  # it used to return, now and then, while the process was exiting
        server = server_factory().start()
        result = run_cli("stop")
        assert result.returncode == 0, result.stderr
        assert f"pid {server.pid}" in result.stdout
        assert is_dead(server.pid), "stop returned before the server's process was gone"
        assert server.wait(5) == 0
        assert not os.path.exists(server.address)


def test_stop_says_so_when_the_final_snapshot_failed(
    server_factory: ServerFactory, workdir: str
) -> None:
    # It used to print success, though the final snapshot had failed (the disk was full).
    snapshot = os.path.join(workdir, "state.snap")
    server = server_factory("--snapshot", snapshot, faults="replace@state.snap:1-").start()
    get_shared_state(start=False)["x"] = 1
    result = run_cli("stop")
    assert result.returncode == 1
    assert "final snapshot failed" in result.stderr
    assert "journal still holds every write" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert server.wait(10) == 1, "serve itself exits 1, saying why"
    server_factory("--snapshot", snapshot).start()
    assert fresh_state()["x"] == 1, "the journal kept the write"


def test_a_second_server_on_the_same_address_is_refused(server: ServerProcess) -> None:
    result = run_cli("serve")
    assert result.returncode == 1
    assert "already running" in result.stderr
    assert str(server.pid) in result.stderr
    assert get_shared_state(start=False).incr("n") == 1, "the first server is unharmed"


def test_a_file_that_is_not_a_socket_is_never_replaced(address: str) -> None:
    os.makedirs(os.path.dirname(address), mode=0o700)
    with open(address, "w") as file:
        file.write("my notes")
    result = run_cli("serve")
    assert result.returncode == 1
    assert "not a socket" in result.stderr
    with open(address) as file:
        assert file.read() == "my notes"


def test_an_address_used_by_another_program_is_refused(address: str) -> None:
    os.makedirs(os.path.dirname(address), mode=0o700)
    with socket.socket(socket.AF_UNIX) as other_program:
        other_program.bind(address)
        other_program.listen()
        result = run_cli("serve")
        assert result.returncode == 1
        assert "another program" in result.stderr
        assert os.path.exists(address)


def test_a_tcp_port_used_by_another_program_is_refused() -> None:
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        port = other_program.getsockname()[1]
        result = run_cli("serve", "--address", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert "already in use" in result.stderr


def test_serve_detach_returns_once_serving(workdir: str, address: str) -> None:
    result = run_cli("serve", "--detach")
    assert result.returncode == 0, result.stderr
    assert "started in the background" in result.stdout
    [pid] = server_pids(workdir)
    assert str(pid) in result.stdout
    assert os.getsid(pid) == pid, "a detached server leads its own session"
    assert get_shared_state(start=False).incr("n") == 1
    assert run_cli("stop").returncode == 0


def test_serve_says_when_the_state_lives_in_memory_only(workdir: str) -> None:
    result = run_cli("serve", "--detach")
    assert "no --snapshot: its state lives in memory only" in result.stdout
    assert run_cli("stop").returncode == 0
    snapshot = os.path.join(workdir, "state.snap")
    result = run_cli("serve", "--detach", "--snapshot", snapshot)
    assert result.returncode == 0
    assert "memory only" not in result.stdout
