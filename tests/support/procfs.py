"""What ``/proc`` says about a process: alive or not, stopped, its parent and children.

Tests look at servers and workers from outside, through the kernel, so what they see
does not depend on what the process reports about itself. Threads, open files and
resident memory are read by ``bench/procfs.py``, which the soak command shares.
"""

from __future__ import annotations

import os


def _stat_fields(path: str) -> list[bytes]:
    """The fields of a ``stat`` file after the command name: state, parent pid, ...

    The name is in parentheses and may itself hold spaces and parentheses, so the
    fields start after the last ``)``.
    """
    with open(path, "rb") as file:
        return file.read().rsplit(b")", 1)[1].split()


def is_stopped(pid: int) -> bool:
    """Stopped by a signal (SIGSTOP): a hung process, as tests make one."""
    return _stat_fields(f"/proc/{pid}/stat")[0] == b"T"


def parent_of(pid: int) -> int:
    return int(_stat_fields(f"/proc/{pid}/stat")[1])


def children_of(pid: int) -> set[int]:
    """The live children of ``pid`` (zombies, already exited, left out)."""
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = _stat_fields(f"/proc/{entry}/stat")
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != b"Z":
                children.add(int(entry))
    return children


def is_dead(pid: int) -> bool:
    """Gone, or a zombie in every thread: its sockets and locks are closed by then.

    Earlier signs lie: the command line reads empty while the process is still exiting,
    and the main thread turns zombie while other threads still hold the open files.
    """
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for thread in threads:
        try:
            if _stat_fields(f"/proc/{pid}/task/{thread}/stat")[0] != b"Z":
                return False
        except OSError:
            continue
    return True


def processes_mentioning(text: str) -> list[int]:
    """Pids of our processes whose command line or environment contains ``text``."""
    found = []
    needle = text.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{entry}/{part}", "rb") as file:
                    if needle in file.read():
                        found.append(int(entry))
                        break
            except OSError:
                continue
    return found


def server_pids(workdir: str) -> list[int]:
    """Pids of live sharedstate servers started for this test's directory."""
    pids = []
    for pid in processes_mentioning(workdir):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                argv = file.read().split(b"\0")
        except OSError:
            continue
        if b"sharedstate" in argv and b"serve" in argv and not is_dead(pid):
            pids.append(pid)
    return pids


def peak_memory(pid: int) -> int:
    """The most memory the process has ever had resident (``VmHWM``), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")
