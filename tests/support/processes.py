"""Real worker processes for tests, and finding the processes a test left running."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Workers are forked, like gunicorn's: they inherit the test's environment and modules.
_fork = multiprocessing.get_context("fork")


def _report(results: Any, index: int, target: Callable[..., Any], args: Sequence[Any]) -> None:
    try:
        results.put((index, "ok", target(*args)))
    except BaseException as error:
        results.put((index, "error", f"{error!r}\n{traceback.format_exc()}"))


def run_in_processes(
    target: Callable[..., Any], args_list: Sequence[Sequence[Any]], timeout: float = 40.0
) -> list[Any]:
    """Run ``target(*args)`` in one forked process per ``args``; return results in order.

    A failure in any process fails the caller with that process's traceback. Every
    process is joined, or killed, before this returns.
    """
    results = _fork.Queue()
    processes = [
        _fork.Process(target=_report, args=(results, index, target, args))
        for index, args in enumerate(args_list)
    ]
    try:
        for process in processes:
            process.start()
        collected: dict[int, Any] = {}
        for _ in processes:
            try:
                index, kind, value = results.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"a worker did not finish within {timeout} s") from None
            if kind == "error":
                raise AssertionError(f"worker {index} failed: {value}")
            collected[index] = value
        return [collected[index] for index in range(len(processes))]
    finally:
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)


def start_process(target: Callable[..., Any], *args: Any) -> multiprocessing.process.BaseProcess:
    """Start one forked process; the caller joins or kills it."""
    process = _fork.Process(target=target, args=args)
    process.start()
    return process


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
            with open(f"/proc/{pid}/task/{thread}/stat", "rb") as file:
                if file.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                    return False
        except OSError:
            continue
    return True


def kill_and_wait(pid: int, timeout: float = 15.0) -> None:
    """SIGKILL ``pid`` and wait until it is dead."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while not is_dead(pid):
        assert time.monotonic() < deadline, f"process {pid} survived SIGKILL"
        time.sleep(0.01)


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


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sharedstate ARGS`` as an operator would; never raises on failure."""
    return subprocess.run(
        [sys.executable, "-m", "sharedstate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT, **(env or {})),
    )


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``condition`` until it holds; fail the test if it doesn't within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
