"""What a process holds, read from ``/proc``: threads, open files, resident memory.

The load tests and the soak command watch a server from outside with these, so the
figures include everything the process holds, not only what it knows about.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple


class Resources(NamedTuple):
    threads: int
    fds: int


def resources(pid: int) -> Resources:
    return Resources(len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd")))


def settled_resources(pid: int, readings: int = 5) -> Resources:
    """What ``pid`` holds when idle: the same reading several times in a row.

    A server answers each new connection on a thread that ends just after replying,
    so a single reading may catch one.
    """
    seen = [resources(pid)]
    while len(seen) < readings or len(set(seen[-readings:])) > 1:
        time.sleep(0.02)
        seen.append(resources(pid))
    return seen[-1]


def wait_for_resources(pid: int, expected: Resources, timeout: float) -> Resources:
    """Poll until ``pid`` holds ``expected``, or ``timeout`` passes; return the last reading."""
    deadline = time.monotonic() + timeout
    while (now := resources(pid)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def describe_fds(pid: int) -> str:
    """What the open files of ``pid`` are, by kind: ``5 socket, 1 anon_inode, ...``."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        kind = target.split(":")[0] if ":[" in target else target
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))


def rss_bytes(pid: int) -> int:
    """Resident memory (``VmRSS``), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"process {pid} reports no VmRSS (a zombie?)")
