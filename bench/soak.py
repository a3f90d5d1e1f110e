"""python -m bench.soak: many clients for a long time, watching what the server holds.

    python -m bench.soak --minutes 60 --clients 64
    python -m bench.soak --minutes 10 --clients 16 --address /run/app/state.sock

Starts ``sharedstate serve`` in a private temporary directory (or, with ``--address``,
uses the server already running there) and runs ``--clients`` processes of the load
tests' mixed workload (:mod:`bench.workload`: incr, own keys, batches, nested writes,
edits, deletes, the lock). Each client is replaced by a fresh process every
``--client-seconds``, so connections keep coming and going. Every ``--interval``
seconds it prints the elapsed time, operations per second, and the server's RSS,
threads, open files, and the number of clients running.

At the end it prints a summary and exits with status 1 if any check failed: a client
saw an error or a wrong value, or died; the server's counts differ from what the
clients did; the server's threads or open files are not back to what they were before
the clients; or its RSS grew by more than ``--max-rss-growth`` MB between the end of
the first client generation and the end of the run. Not part of the test suite.

With ``--address``, only keys starting with ``load:`` are deleted and written; other
clients of that server come and go with their own threads and files, so the check of
those only means something when the soak is the server's only user.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from queue import Empty
from typing import Any

from sharedstate import SharedState
from sharedstate.client.launcher import call_server_function
from sharedstate.config import load_settings

from . import workload
from .persistence import client, server
from .procfs import (
    Resources,
    describe_fds,
    resources,
    rss_bytes,
    settled_resources,
    wait_for_resources,
)

_fork = multiprocessing.get_context("fork")
MB = 2**20
SETTLE_SECONDS = 30.0  # for the server's threads and files to return after the clients left


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--address", help="use the server already running here")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between reports")
    parser.add_argument("--client-seconds", type=float, default=30.0, help="life of a client")
    parser.add_argument("--max-rss-growth", type=float, default=32.0, metavar="MB")
    options = parser.parse_args()
    if options.address is not None:
        info = call_server_function(load_settings({"address": options.address}), "server_info", 10)
        passed = Soak(options.address, int(info["pid"]), options).run()
    else:
        workdir = tempfile.mkdtemp(prefix="ss-soak-", dir="/tmp")
        passed = False
        try:
            with server(workdir, "--log-level", "WARNING") as (address, process, _):
                passed = Soak(address, process.pid, options).run()
        finally:
            if passed:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                print(f"the server's files and log are kept in {workdir}")
    sys.exit(0 if passed else 1)


class Soak:
    """Client processes in ``--clients`` slots, each replaced when its life ends."""

    def __init__(self, address: str, pid: int, options: argparse.Namespace) -> None:
        self.address = address
        self.pid = pid
        self.options = options
        self.ops = _fork.Array("q", options.clients, lock=False)  # per slot, all generations
        self.errors = _fork.Array("q", options.clients, lock=False)
        self.results = _fork.Queue()
        self.running: dict[int, BaseProcess] = {}
        self.tallies: list[workload.Tally] = []  # in the order the clients ended
        self.crashed: list[str] = []
        self.rss_samples: list[int] = []
        self.started = self.end = 0.0

    def run(self) -> bool:
        """Run the clients, report as they go, then check; True if every check passed."""
        state = client(self.address)
        workload.prepare(state)
        baseline = settled_resources(self.pid)
        rss_before = rss_bytes(self.pid)
        self.started = time.monotonic()
        self.end = self.started + self.options.minutes * 60
        for slot in range(self.options.clients):
            # Staggered first lives, so clients are replaced a few at a time.
            self._start(slot, self.options.client_seconds * (slot + 1) / self.options.clients)
        rss_warm: int | None = None
        print(f"{'elapsed':>8} {'ops/s':>8} {'RSS MB':>7} {'threads':>7} {'fds':>5} clients")
        last_report, last_ops = self.started, 0
        try:
            while self.running:
                self._collect(timeout=0.1)
                now = time.monotonic()
                if now - last_report >= self.options.interval or not self.running:
                    total_ops = sum(self.ops)
                    rate = (total_ops - last_ops) / (now - last_report)
                    last_report, last_ops = now, total_ops
                    rss = rss_bytes(self.pid)
                    self.rss_samples.append(rss)
                    if rss_warm is None and now - self.started >= self.options.client_seconds:
                        rss_warm = rss
                    held = resources(self.pid)
                    print(
                        f"{now - self.started:7.0f}s {rate:8,.0f} {rss / MB:7.1f} "
                        f"{held.threads:7} {held.fds:5} {len(self.running):7}",
                        flush=True,
                    )
        finally:
            for process in self.running.values():
                process.kill()
                process.join(10)
        after = wait_for_resources(self.pid, baseline, SETTLE_SECONDS)
        rss_after = rss_bytes(self.pid)
        rss_warm = rss_warm if rss_warm is not None else self.rss_samples[0]
        return self._summary(state, baseline, after, (rss_before, rss_warm, rss_after))

    def _start(self, slot: int, seconds: float) -> None:
        seconds = min(seconds, self.end - time.monotonic())
        args = (self.address, slot, seconds, self.ops, self.errors, self.results)
        self.running[slot] = _fork.Process(target=_client, args=args)
        self.running[slot].start()

    def _collect(self, timeout: float) -> None:
        """Take the tallies of clients that finished; replace them while time is left."""
        deadline = time.monotonic() + timeout
        while (wait := deadline - time.monotonic()) > 0:
            try:
                slot, tally = self.results.get(timeout=wait)
            except Empty:
                break
            self.running.pop(slot).join(30)
            self.tallies.append(tally)
            self._replace(slot)
        for slot, process in list(self.running.items()):
            if process.exitcode not in (None, 0):  # died before sending its tally
                self.crashed.append(f"client {slot} (pid {process.pid}): exit {process.exitcode}")
                del self.running[slot]
                self._replace(slot)

    def _replace(self, slot: int) -> None:
        if self.end - time.monotonic() > 1.0:
            self._start(slot, self.options.client_seconds)

    def _summary(
        self, state: SharedState, baseline: Resources, after: Resources, rss: tuple[int, int, int]
    ) -> bool:
        rss_before, rss_warm, rss_after = rss
        total = workload.combine(self.tallies)
        problems = workload.verify(state, total)
        growth = rss_after - rss_warm
        print()
        print(f"clients run: {len(self.tallies)}, operations: {total.ops:,}")
        print(f"errors seen by clients: {total.errors}")
        print(
            f"server RSS MB: before clients {rss_before / MB:.1f}, after first generation "
            f"{rss_warm / MB:.1f}, min {min(self.rss_samples) / MB:.1f}, "
            f"max {max(self.rss_samples) / MB:.1f}, end {rss_after / MB:.1f} "
            f"(growth {growth / MB:+.1f})"
        )
        print(f"server threads, fds: before {tuple(baseline)}, after the clients {tuple(after)}")
        checks = {
            "no client saw an error": total.errors == 0,
            "no client died": not self.crashed,
            "counts and values match what the clients did": not problems,
            "threads and fds back to where they were": after == baseline,
            f"RSS growth under {self.options.max_rss_growth:g} MB": (
                growth < self.options.max_rss_growth * MB
            ),
        }
        for check, passed in checks.items():
            print(f"{'ok  ' if passed else 'FAIL'} {check}")
        for line in total.first_errors + self.crashed + problems:
            print(f"     {line}")
        if after != baseline:
            print(f"     server files now: {describe_fds(self.pid)}")
        return all(checks.values())


def _client(address: str, slot: int, seconds: float, ops: Any, errors: Any, results: Any) -> None:
    ops_before, errors_before = ops[slot], errors[slot]

    def progress(tally: workload.Tally) -> None:
        ops[slot] = ops_before + tally.ops
        errors[slot] = errors_before + tally.errors

    tally = workload.run_client(client(address), slot, seconds, progress)
    progress(tally)
    results.put((slot, tally))


if __name__ == "__main__":
    main()
