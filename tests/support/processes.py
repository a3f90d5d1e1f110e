"""Real worker processes for tests, the CLI as a separate process, and waiting for things."""

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

from .procfs import is_dead

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Workers are forked, like gunicorn's: they inherit the test's environment and modules.
fork_context = multiprocessing.get_context("fork")


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
    results = fork_context.Queue()
    processes = [
        fork_context.Process(target=_report, args=(results, index, target, args))
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
    process = fork_context.Process(target=target, args=args)
    process.start()
    return process


def resume_and_reap(*processes: multiprocessing.process.BaseProcess | None) -> None:
    """Let stopped ``processes`` go on (SIGCONT), join them, and kill what won't end."""
    for process in processes:
        if process is None:
            continue
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGCONT)
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(10)


def kill_and_wait(pid: int, timeout: float = 15.0) -> None:
    """SIGKILL ``pid`` and wait until it is dead."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while not is_dead(pid):
        assert time.monotonic() < deadline, f"process {pid} survived SIGKILL"
        time.sleep(0.01)


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
        env={**os.environ, "PYTHONPATH": REPO_ROOT, **(env or {})},
    )


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``condition`` until it holds; fail the test if it doesn't within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
