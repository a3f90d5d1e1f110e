"""python -m bench.ab: two installs of sharedstate, one client each, alternating rounds.

    python -m bench.ab OLD_PYTHON NEW_PYTHON [--rounds 5] [--calls 20000]

Each interpreter must import the sharedstate to compare (e.g. the ``python`` of a venv
with an older checkout installed). A round starts a real server with that interpreter,
times ``--calls`` calls of each operation from one client, and stops it; rounds
alternate old, new, old, new... and each second half of the rounds runs new first, so
an order effect shows as such instead of passing for a difference between the codes.
Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

OPERATIONS = ("get", "set", "incr", "nested", "get_shared_state+get")


def one_round(calls: int) -> dict[str, float]:
    """Run in the interpreter under test: ops/s of each operation against a new server."""
    workdir = tempfile.mkdtemp(prefix="ss-ab-", dir="/tmp")
    address = os.path.join(workdir, "state.sock")
    os.environ["SHAREDSTATE_ADDRESS"] = address
    server = subprocess.Popen(
        [sys.executable, "-m", "sharedstate", "serve", "--address", address],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        from sharedstate import get_shared_state

        deadline = time.monotonic() + 15
        while True:
            try:
                state = get_shared_state(start=False)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        state["k"] = b"x" * 100
        state["cfg"] = {"a": 1}
        work: dict[str, Callable[[], Any]] = {
            "get": lambda: state["k"],
            "set": lambda: state.__setitem__("k", b"y" * 100),
            "incr": lambda: state.incr("n"),
            "nested": lambda: state["cfg"].__setitem__("a", 2),
            "get_shared_state+get": lambda: get_shared_state()["k"],
        }
        rates = {}
        for name in OPERATIONS:
            call = work[name]
            call()
            started = time.perf_counter()
            for _ in range(calls):
                call()
            rates[name] = calls / (time.perf_counter() - started)
        return rates
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("old_python")
    parser.add_argument("new_python")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(one_round(options.calls)))
        return
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    order = ("old", "new")
    # Run from an empty directory with only bench/ on the path, so each interpreter
    # imports its own installed sharedstate, never this checkout's.
    outside = tempfile.mkdtemp(prefix="ss-ab-", dir="/tmp")
    os.symlink(os.path.dirname(os.path.abspath(__file__)), os.path.join(outside, "bench"))
    try:
        _alternate(options, runs, order, outside)
    finally:
        shutil.rmtree(outside, ignore_errors=True)
    print("\n| operation | old ops/s (median) | new ops/s (median) | new / old |")
    print("|---|---|---|---|")
    for name in OPERATIONS:
        old = statistics.median(run[name] for run in runs["old"])
        new = statistics.median(run[name] for run in runs["new"])
        print(f"| {name} | {old:,.0f} | {new:,.0f} | {new / old:.2f} |")


def _alternate(
    options: argparse.Namespace,
    runs: dict[str, list[dict[str, float]]],
    order: tuple[str, str],
    outside: str,
) -> None:
    for index in range(options.rounds):
        if index == (options.rounds + 1) // 2:
            order = ("new", "old")
        for which in order:
            python = options.old_python if which == "old" else options.new_python
            output = subprocess.run(
                [python, "-m", "bench.ab", "-", "-", "--child", "--calls", str(options.calls)],
                cwd=outside,
                env=dict(os.environ, PYTHONPATH=outside),
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            ).stdout
            runs[which].append(json.loads(output))
            print(which, " ".join(f"{k}={v:,.0f}" for k, v in runs[which][-1].items()))


if __name__ == "__main__":
    main()
