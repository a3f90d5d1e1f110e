"""Addresses that name the wrong thing are refused before any server starts or file appears."""

from __future__ import annotations

import os

import pytest

from sharedstate import get_shared_state
from sharedstate.errors import ConfigError

from .support.processes import run_cli
from .support.servers import ServerFactory, free_tcp_port


def test_a_url_address_is_refused_and_creates_nothing(workdir: str) -> None:
    with pytest.raises(ConfigError, match=r"is a URL.*e\.g\. 127\.0\.0\.1:7005"):
        get_shared_state(address="tcp://127.0.0.1:7005")
    assert not os.path.exists(os.path.join(workdir, "tcp:"))


def test_a_url_in_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch, workdir: str) -> None:
    monkeypatch.setenv("SHAREDSTATE_ADDRESS", "tcp://127.0.0.1:7005")
    with pytest.raises(ConfigError, match="SHAREDSTATE_ADDRESS.*is a URL"):
        get_shared_state()
    assert not os.path.exists(os.path.join(workdir, "tcp:"))


def test_serve_refuses_a_host_without_a_port(workdir: str) -> None:
    result = run_cli("serve", "--address", "127.0.0.1", timeout=30)
    assert result.returncode != 0
    assert "looks like a host but has no port" in result.stderr
    assert "127.0.0.1:7000" in result.stderr
    assert not os.path.exists(os.path.join(workdir, "127.0.0.1"))


def test_serve_refuses_a_redis_address(workdir: str) -> None:
    result = run_cli("serve", "--address", "redis://:secret@127.0.0.1:6379", timeout=30)
    assert result.returncode != 0
    assert "is a Redis server, which holds the state itself" in result.stderr
    assert "secret" not in result.stderr
    assert not os.path.exists(os.path.join(workdir, "redis:"))


def test_a_server_on_localhost_is_reached_as_127_0_0_1(server_factory: ServerFactory) -> None:
    port = free_tcp_port()
    server_factory(address=f"localhost:{port}").start()
    state = get_shared_state(address=f"127.0.0.1:{port}")
    state["reached"] = True
    assert get_shared_state(address=f"localhost:{port}")["reached"] is True
