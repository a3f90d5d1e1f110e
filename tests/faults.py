"""Injected disk failures for real server processes, SQLite-style.

A rule fails calls of one disk operation on paths containing some text, from the Nth
matching call to the Mth, with ENOSPC (disk full) unless told otherwise::

    SHAREDSTATE_TEST_FAULTS="replace@state.snap:2-,write@journal:5-6"

``python -m tests.fault_server serve ...`` installs the rules from that variable in the
server process, then runs the normal CLI. Production code has no hook for this: it only
calls its file operations through ``sharedstate.durable.disk``.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from sharedstate import durable

ENV = "SHAREDSTATE_TEST_FAULTS"


@dataclass
class Rule:
    op: str
    part: str
    first: int
    last: float
    error: int = errno.ENOSPC
    calls: int = 0

    @classmethod
    def parse(cls, text: str) -> Rule:
        target, _, calls = text.partition(":")
        op, _, part = target.partition("@")
        first, dash, last = calls.partition("-")
        return cls(
            op, part, int(first), float(last) if last else (float("inf") if dash else int(first))
        )


class FailingDisk(durable.Disk):
    """The real disk, except for the calls the rules pick."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.paths: dict[int, str] = {}

    def _check(self, op: str, path: str) -> None:
        for rule in self.rules:
            if rule.op == op and rule.part in path:
                rule.calls += 1
                if rule.first <= rule.calls <= rule.last:
                    raise OSError(rule.error, os.strerror(rule.error), path)

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        self._check("open", path)
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        return fd

    def write(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        self._check("write", self.paths.get(fd, ""))
        return super().write(fd, data, offset)

    def sync(self, fd: int) -> None:
        self._check("sync", self.paths.get(fd, ""))
        super().sync(fd)

    def replace(self, source: str, target: str) -> None:
        self._check("replace", target)
        super().replace(source, target)

    def unlink(self, path: str) -> None:
        self._check("unlink", path)
        super().unlink(path)


def install_from_env() -> None:
    spec = os.environ.get(ENV, "")
    rules = [Rule.parse(part) for part in spec.split(",") if part]
    durable.disk = FailingDisk(rules)
