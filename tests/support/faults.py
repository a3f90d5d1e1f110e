"""Injected disk failures for real server processes, SQLite-style.

A rule fails calls of one disk operation (``*``: any) on paths containing some text, from
the Nth matching call to the Mth, with ENOSPC (disk full), or with an exception that is
no ``OSError`` when one is named after ``!`` (what a bug or a ``MemoryError`` would do)::

    SHAREDSTATE_TEST_FAULTS="replace@state.snap:2-,write@journal:5-6,*@:7,write@tmp:1!ValueError"

``python -m tests.support.fault_server serve ...`` installs the rules from that variable in the
server process, then runs the normal CLI. Production code has no hook for this: it only
calls its file operations through ``sharedstate.persistence.durable.disk``.

Power loss is simulated the same way: with ``TEST_SHAREDSTATE_SYNCED_LOG`` set, the
server notes after each fsync how much of the file it made durable, and
:func:`lose_unsynced_writes` later cuts the journal back to that, as a machine that lost
power would (what a killed process wrote is otherwise safe in the OS's cache).
"""

from __future__ import annotations

import errno
import glob
import os
import sys
from dataclasses import dataclass
from typing import Any

from sharedstate.persistence import durable

ENV = "SHAREDSTATE_TEST_FAULTS"
SYNCED_LOG_ENV = "TEST_SHAREDSTATE_SYNCED_LOG"  # not SHAREDSTATE_*: no setting


UNEXPECTED: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "MemoryError": MemoryError,
    "RuntimeError": RuntimeError,
}


@dataclass
class Rule:
    op: str
    part: str
    first: int
    last: float
    error: int = errno.ENOSPC
    exception: str = ""  # raise this instead of an OSError
    calls: int = 0

    @classmethod
    def parse(cls, text: str) -> Rule:
        text, _, exception = text.partition("!")
        target, _, calls = text.partition(":")
        op, _, part = target.partition("@")
        first, dash, last = calls.partition("-")
        last_call = float(last) if last else (float("inf") if dash else int(first))
        return cls(op, part, int(first), last_call, exception=exception)


class FailingDisk(durable.Disk):
    """The real disk, except for the calls the rules pick; notes fsyncs in ``synced_log``."""

    def __init__(self, rules: list[Rule], synced_log: str | None = None) -> None:
        self.rules = rules
        self.synced_log = synced_log
        self.paths: dict[int, str] = {}

    def _check(self, op: str, path: str) -> None:
        for rule in self.rules:
            if rule.op in (op, "*") and rule.part in path:
                rule.calls += 1
                if rule.first <= rule.calls <= rule.last:
                    # Tests read this line from the server's log to know a fault fired.
                    print(f"injected fault: {op} {path} (call {rule.calls})", file=sys.stderr)
                    if rule.exception:
                        raise UNEXPECTED[rule.exception](f"injected {rule.exception}: {op} {path}")
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
        path = self.paths.get(fd, "")
        self._check("sync", path)
        size = os.fstat(fd).st_size  # everything written before the fsync began
        super().sync(fd)
        if self.synced_log:
            log = os.open(self.synced_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(log, f"{size} {path}\n".encode())
            finally:
                os.close(log)

    def replace(self, source: str, target: str) -> None:
        self._check("replace", target)
        super().replace(source, target)

    def unlink(self, path: str) -> None:
        self._check("unlink", path)
        super().unlink(path)

    def link(self, source: str, target: str) -> None:
        self._check("link", target)
        super().link(source, target)

    def truncate(self, fd: int, size: int) -> None:
        self._check("truncate", self.paths.get(fd, ""))
        super().truncate(fd, size)

    def rename(self, source: str, target: str) -> None:
        self._check("rename", target)
        super().rename(source, target)

    def sync_dir(self, path: str) -> None:
        self._check("sync_dir", path)
        super().sync_dir(path)


def install_from_env() -> None:
    spec = os.environ.get(ENV, "")
    rules = [Rule.parse(part) for part in spec.split(",") if part]
    durable.disk = FailingDisk(rules, os.environ.get(SYNCED_LOG_ENV))


def lose_unsynced_writes(snapshot: str, synced_log: str) -> dict[str, int]:
    """Cut each journal segment of ``snapshot`` back to what an fsync made durable.

    Call it once the server is dead; returns the bytes dropped per segment. The log is
    then removed, so the next server starts a fresh one.
    """
    durable_size: dict[str, int] = {}
    if os.path.exists(synced_log):
        with open(synced_log, encoding="utf-8") as file:
            for line in file:
                size, _, path = line.rstrip("\n").partition(" ")
                durable_size[path] = int(size)
        os.unlink(synced_log)
    dropped = {}
    for path in glob.glob(glob.escape(snapshot) + ".journal.*"):
        keep = durable_size.get(path, 0)  # never synced: a power loss may lose all of it
        written = os.path.getsize(path)
        if written > keep:
            os.truncate(path, keep)
            dropped[path] = written - keep
    return dropped


# -- replies that never arrive ---------------------------------------------------------

CUT_ENV = "SHAREDSTATE_TEST_CUT_REPLIES"


def install_reply_cuts_from_env() -> None:
    """Hang up (``cut``) or exit (``die``) instead of replying to chosen calls.

    ``SHAREDSTATE_TEST_CUT_REPLIES="cut:incr:3,die:nested:1"``: the 3rd ``incr`` is
    applied, then its client is hung up on before the reply; the server process exits at
    once after applying the 1st nested write. What a network failure or a crash between
    a write and its reply does, to test that a retried write is applied at most once.
    """
    from sharedstate.server.loop import ClientLoop

    rules = {}
    for part in filter(None, os.environ.get(CUT_ENV, "").split(",")):
        action, method, nth = part.split(":")
        rules[method] = (action, int(nth))
    if not rules:
        return
    counts: dict[str, int] = {}
    call, send = ClientLoop._call, ClientLoop._send

    def counting_call(self: ClientLoop, client: Any, parked: Any) -> bool:
        method = getattr(parked.function, "__name__", "")
        if method in rules:
            counts[method] = counts.get(method, 0) + 1
            if counts[method] == rules[method][1]:
                client.cut_reply = rules[method][0]
        return call(self, client, parked)

    def cutting_send(self: ClientLoop, client: Any, reply: Any) -> None:
        action = getattr(client, "cut_reply", None)
        if action is None:
            send(self, client, reply)
            return
        client.cut_reply = None
        print(f"injected fault: {action} instead of replying to {client}", file=sys.stderr)
        if action == "die":
            os._exit(1)
        self.hang_up(client)

    ClientLoop._call = counting_call  # type: ignore[method-assign, assignment]
    ClientLoop._send = cutting_send  # type: ignore[method-assign]
