"""What persistence costs: write rates per fsync policy, and snapshots at 1M keys.

    python -m bench.persistence [--keys 1000000] [--seconds 2]

Starts real servers in a private temporary directory and prints a markdown report.
Speed is reported here, never asserted in a test.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sharedstate.client.launcher import call_server_function
from sharedstate.client.state import connect_state
from sharedstate.config import load_settings

VALUE = "x" * 100


@contextmanager
def server(workdir: str, *args: str) -> Iterator[tuple[str, subprocess.Popen[bytes], str]]:
    address = os.path.join(workdir, "run", "bench.sock")
    log = os.path.join(workdir, f"server-{time.monotonic_ns()}.log")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sharedstate", "serve", "--address", address, *args],
            stdout=out,
            stderr=out,
        )
    try:
        settings = load_settings({"address": address})
        deadline = time.monotonic() + 300
        while True:
            try:
                call_server_function(settings, "server_info", 5)
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    with open(log) as failed:
                        raise RuntimeError(failed.read()) from None
                time.sleep(0.02)
        yield address, process, log
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(600)


def client(address: str) -> Any:
    return connect_state(load_settings({"address": address}), start=False, timeout=10)


def _write_loop(address: str, seconds: float, results: Any) -> None:
    state = client(address)
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            state[f"k{count % 10_000}"] = VALUE
            count += 1
    results.put(count)


def write_rate(workdir: str, args: tuple[str, ...], clients: int, seconds: float) -> float:
    with server(workdir, *args) as (address, _, _):
        return rate(address, _write_loop, clients, seconds)


def rate(address: str, loop: Any, clients: int, seconds: float) -> float:
    """Operations per second of ``clients`` processes each running ``loop(address, ...)``."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [
        context.Process(target=loop, args=(address, seconds, results)) for _ in range(clients)
    ]
    for worker in workers:
        worker.start()
    total = sum(results.get(timeout=seconds + 60) for _ in workers)
    for worker in workers:
        worker.join()
    return float(total) / seconds


def snapshot_figures(workdir: str, keys: int) -> dict[str, float]:
    snapshot = os.path.join(workdir, "big", "state.snap")
    args = ("--snapshot", snapshot, "--snapshot-interval", "86400")
    figures: dict[str, float] = {}
    with server(workdir, *args) as (address, process, _):
        state = client(address)
        batch = 10_000
        for start in range(0, keys, batch):
            state.update({f"key:{i}": VALUE for i in range(start, start + batch)})
        figures["rss_mb"] = _rss_mb(process.pid)

        latencies: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            prober = client(address)
            while not stop.is_set():
                started = time.perf_counter()
                prober["key:1"]
                latencies.append(time.perf_counter() - started)

        thread = threading.Thread(target=probe)
        thread.start()
        time.sleep(0.5)
        figures["probe_p50_ms"] = statistics.median(latencies) * 1000
        settings = load_settings({"address": address})
        # The first snapshot also pays for faulting in memory for the copy; later ones
        # reuse it. Each is measured by the store pause it reports and by the slowest
        # read a client saw meanwhile.
        for label in ("first", "second", "third"):
            state[f"changed-{label}"] = 1
            seen = len(latencies)
            info = call_server_function(settings, "snapshot_now", 600)
            slowest = max(latencies[seen:] or [0.0])
            figures[f"{label}_snapshot_seconds"] = info["seconds"]
            figures[f"{label}_store_pause_ms"] = info["stall_seconds"] * 1000
            figures[f"{label}_slowest_read_ms"] = slowest * 1000
        figures["snapshot_mb"] = info["bytes"] / 1e6
        stop.set()
        thread.join()
    with server(workdir, *args) as (_, _, log), open(log) as text:
        match = re.search(r"recovered (\d+) keys .* in ([\d.]+) s", text.read())
        assert match, "no recovery line in the log"
        figures["recovered_keys"] = float(match.group(1))
        figures["recovery_seconds"] = float(match.group(2))
    return figures


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; median shown")
    options = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="ss-bench-", dir="/tmp")
    try:
        print(f"# sharedstate persistence, {time.strftime('%Y-%m-%d')}")
        machine = f"{os.cpu_count()} cores, Python {platform.python_version()}"
        print(f"{machine}, {platform.platform()}\n")
        print(f"Write rates: median of {options.repeat} runs of {options.seconds:g} s (min-max).\n")
        print("| writes (100 B values) | 1 client ops/s | 8 clients ops/s |")
        print("|---|---|---|")
        modes: list[tuple[str, tuple[str, ...]]] = [("memory only", ())]
        for policy in ("no", "everysec", "always"):
            path = os.path.join(workdir, policy, "state.snap")
            modes.append(
                (
                    f"journal, fsync={policy}",
                    ("--snapshot", path, "--create-snapshot-dir", "--fsync", policy),
                )
            )
        for name, args in modes:
            cells = []
            for clients in (1, 8):
                runs = sorted(
                    write_rate(workdir, args, clients, options.seconds)
                    for _ in range(options.repeat)
                )
                cells.append(f"{statistics.median(runs):,.0f} ({runs[0]:,.0f}-{runs[-1]:,.0f})")
            print(f"| {name} | {cells[0]} | {cells[1]} |")
        figures = snapshot_figures(workdir, options.keys)
        print(f"\n| {options.keys:,} keys of 100 B | |\n|---|---|")
        for name, value in figures.items():
            print(f"| {name} | {value:,.2f} |")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
