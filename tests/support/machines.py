"""Groups of worker processes as if on separate machines, all reaching one Redis.

A :class:`Machine` is an environment and a directory of its own: its workers share no
runtime directory, working directory or ``.env`` with another machine's, only the
Redis address (over TCP, with the password) and the key prefix. A worker forked for a
machine enters it first (:func:`on_machine`), so whatever it reads from the
environment comes from that machine, not from the test process.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import sharedstate.client.state


@dataclass(frozen=True)
class Machine:
    name: str
    directory: str
    env: dict[str, str] = field(default_factory=dict)


def unique_prefix() -> str:
    """A key prefix no other test uses, so tests can share one Redis."""
    return f"sstest-{uuid.uuid4().hex[:12]}:"


def make_machine(workdir: str, name: str, redis_url: str, prefix: str, **env: str) -> Machine:
    """A machine named ``name`` whose workers use ``redis_url`` with ``prefix``."""
    directory = os.path.join(workdir, name)
    os.makedirs(directory, mode=0o700)
    return Machine(
        name,
        directory,
        {
            "SHAREDSTATE_ADDRESS": redis_url,
            "SHAREDSTATE_PREFIX": prefix,
            "XDG_RUNTIME_DIR": directory,
            **env,
        },
    )


def enter_machine(machine: Machine) -> None:
    """Make this (forked) process one of ``machine``'s workers."""
    for name in list(os.environ):
        if name.startswith("SHAREDSTATE_"):
            del os.environ[name]
    os.environ.update(machine.env)
    os.chdir(machine.directory)
    sharedstate.client.state.forget_settings()


def visit_machine(monkeypatch: pytest.MonkeyPatch, machine: Machine) -> None:
    """Make the test process a client of ``machine`` until the test ends."""
    for name, value in machine.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(machine.directory)
    sharedstate.client.state.forget_settings()


def on_machine(machine: Machine, target: Callable[..., Any], *args: Any) -> Any:
    """Run ``target(*args)`` as a worker of ``machine``: the target of a forked process."""
    enter_machine(machine)
    return target(*args)
