"""Operator commands for keys that expire: set --ttl, ttl, expire, persist; and what
status says of expiry, eviction, memory and reads."""

from __future__ import annotations

import json
import re

import pytest

from sharedstate import get_shared_state

from .support.processes import run_cli, wait_until
from .support.servers import ServerFactory, ServerProcess


def test_set_with_a_ttl_then_ttl_counts_down(server: ServerProcess) -> None:
    assert run_cli("set", "session", '{"user": 7}', "--ttl", "60").returncode == 0
    assert get_shared_state(start=False)["session"] == {"user": 7}
    result = run_cli("ttl", "session")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"\d+(\.\d{1,3})?\n", result.stdout), result.stdout
    assert 50 < float(result.stdout) <= 60


def test_a_key_set_with_a_ttl_is_gone_when_its_time_passes(server: ServerProcess) -> None:
    assert run_cli("set", "flash", "hello", "--raw", "--ttl", "0.5").returncode == 0
    state = get_shared_state(start=False)
    assert state["flash"] == "hello"
    wait_until(lambda: "flash" not in state, timeout=10)
    assert run_cli("get", "flash").returncode == 1


def test_ttl_of_a_key_that_does_not_expire_is_none(server: ServerProcess) -> None:
    get_shared_state(start=False)["forever"] = 1
    result = run_cli("ttl", "forever")
    assert (result.returncode, result.stdout) == (0, "none\n")


def test_expire_gives_an_existing_key_a_ttl(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    state["k"] = 1
    assert run_cli("expire", "k", "30").returncode == 0
    assert 0 < float(run_cli("ttl", "k").stdout) <= 30
    assert run_cli("expire", "k", "0.25").returncode == 0  # replaces the time it had
    wait_until(lambda: "k" not in state, timeout=10)


def test_persist_removes_the_expiry(server: ServerProcess) -> None:
    assert run_cli("set", "k", "1", "--ttl", "60").returncode == 0
    result = run_cli("persist", "k")
    assert (result.returncode, result.stderr) == (0, "")
    assert run_cli("ttl", "k").stdout == "none\n"
    assert get_shared_state(start=False)["k"] == 1


def test_persist_of_a_key_with_no_expiry_says_so_and_succeeds(server: ServerProcess) -> None:
    get_shared_state(start=False)["k"] = 1
    result = run_cli("persist", "k")
    assert result.returncode == 0
    assert result.stderr == "key 'k' had no expiry; nothing changed\n"
    assert get_shared_state(start=False)["k"] == 1


def test_set_without_a_ttl_makes_a_key_that_does_not_expire(server: ServerProcess) -> None:
    assert run_cli("set", "k", "1").returncode == 0
    assert run_cli("ttl", "k").stdout == "none\n"


@pytest.mark.parametrize("command", [("ttl",), ("expire", "30"), ("persist",)])
def test_a_missing_key_is_one_line_and_exit_1(
    server: ServerProcess, command: tuple[str, ...]
) -> None:
    name, *rest = command
    result = run_cli(name, "missing", *rest)
    assert result.returncode == 1
    assert "key 'missing' not found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "missing" not in get_shared_state(start=False)


def test_a_bad_ttl_leaves_the_key_alone(server: ServerProcess) -> None:
    get_shared_state(start=False)["k"] = 1
    assert run_cli("set", "k", "2", "--ttl", "0").returncode == 2
    assert run_cli("expire", "k", "-1").returncode == 2
    assert get_shared_state(start=False)["k"] == 1
    assert run_cli("ttl", "k").stdout == "none\n"


@pytest.mark.parametrize("command", [("ttl", "k"), ("expire", "k", "5"), ("persist", "k")])
def test_expiry_commands_exit_3_when_no_server_runs(command: tuple[str, ...]) -> None:
    result = run_cli(*command)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr


def test_status_counts_keys_with_a_ttl_and_reads(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    state["plain"] = 1
    assert run_cli("set", "session", "1", "--ttl", "60").returncode == 0
    assert state["plain"] == 1
    assert state.get("missing") is None
    info = json.loads(run_cli("status", "--json").stdout)
    assert (info["keys"], info["expiring_keys"]) == (2, 1)
    assert (info["expired"], info["evicted"]) == (0, 0)
    assert info["hits"] >= 1
    assert info["misses"] >= 1
    assert info["memory_used"] > 0
    assert (info["max_memory"], info["eviction"]) == (None, "noeviction")
    text = run_cli("status").stdout
    assert "keys:     2 (1 with a TTL; 0 expired, 0 evicted since start)" in text
    assert re.search(r"^memory:   \S+ \S+ \(no bound\)", text, re.MULTILINE), text
    assert re.search(r"^reads:    [\d.]+% hits \(\d+ of \d+\)$", text, re.MULTILINE), text


def test_status_shows_the_memory_bound_and_eviction_policy_served_with(
    server_factory: ServerFactory,
) -> None:
    server_factory("--max-memory", "512M", "--eviction", "allkeys-lru").start()
    info = json.loads(run_cli("status", "--json").stdout)
    assert (info["max_memory"], info["eviction"]) == (512 << 20, "allkeys-lru")
    assert re.search(r"^memory:   .* of 512 MiB \(allkeys-lru\)", run_cli("status").stdout, re.M)


def test_status_counts_expired_keys(server: ServerProcess) -> None:
    assert run_cli("set", "flash", "1", "--ttl", "0.2").returncode == 0
    state = get_shared_state(start=False)
    wait_until(lambda: "flash" not in state, timeout=10)
    wait_until(lambda: json.loads(run_cli("status", "--json").stdout)["expired"] == 1, timeout=10)
