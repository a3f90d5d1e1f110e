"""python -m bench: sharedstate against its alternatives, on this machine, in one run.

    bash bench/setup.sh            # once: redis-server, wrk, redis-py, diskcache...
    python -m bench [--quick] [--out bench/results]

Prints a markdown report and writes it, with a PNG plot, to ``--out``. Speed is
reported, never asserted: none of this runs in the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from . import e2e
from .load import BATCH, measure, prefill
from .report import Cell, header, ops_table, plot_scaling
from .systems import ALL, System

OPERATIONS = ("get", "set", "incr", "locked_rmw", "nested", "get_batch", "set_batch")
SMALL = b"x" * 100


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 run of 0.5 s each, fewer sizes")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--skip-e2e", action="store_true", help="skip the gunicorn benchmark")
    options = parser.parse_args()
    if options.quick:
        options.seconds, options.repeat = 0.5, 1
    os.makedirs(options.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="ss-bench-", dir="/tmp")
    systems = [cls() for cls in ALL]
    sections = [
        header(" ".join(["python -m bench", *sys.argv[1:]]), options.repeat, options.seconds)
    ]
    for system in systems:
        if not system.available:
            sections.append(f"- {system.name} not measured: {system.why_unavailable}\n")
    try:
        bench = Bench(workdir, systems, options.seconds, options.repeat)
        sections.append(bench.operations())
        sections.append(bench.scaling(os.path.join(options.out, "throughput.png")))
        sections.append(bench.value_sizes(quick=options.quick))
        sections.append(bench.store_sizes(quick=options.quick))
        if not options.skip_e2e:
            sections.append(e2e.run(workdir, seconds=5.0 if options.quick else 10.0))
        sections.append(bench.targets())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = "\n".join(sections)
    print(report)
    with open(os.path.join(options.out, "latest.md"), "w") as file:
        file.write(report)


class Bench:
    def __init__(self, workdir: str, systems: list[System], seconds: float, repeat: int) -> None:
        self.workdir = workdir
        self.systems = [system for system in systems if system.available]
        self.seconds = seconds
        self.repeat = repeat
        self.figures: dict[tuple[str, str, int], Cell] = {}  # (op, system, clients)
        self.by_size: dict[int, float] = {}

    def _run(self, system: System, op: str, clients: int, keys: int, value: bytes) -> Cell:
        runs = [measure(system, op, clients, self.seconds, keys, value) for _ in range(self.repeat)]
        return Cell(runs)

    def _with(self, system: System, keys: int, value: bytes, body: Callable[[], Any]) -> Any:
        directory = tempfile.mkdtemp(dir=self.workdir)
        system.start(directory)
        try:
            prefill(system, keys, value)
            return body()
        finally:
            system.stop()

    def operations(self) -> str:
        rows: list[tuple[str, str, Cell | None]] = []
        for system in self.systems:

            def each_op(system: System = system) -> None:
                for op in OPERATIONS:
                    cell = self._run(system, op, 1, 1000, SMALL)
                    self.figures[(op, system.name, 1)] = cell

            self._with(system, 1000, SMALL, each_op)
        for op in OPERATIONS:
            for system in self.systems:
                rows.append((op, system.name, self.figures.get((op, system.name, 1))))
        note = (
            f"\nBatches move {BATCH} keys per operation. incr is the system's own atomic "
            "increment where it has one; the BaseManager recipe does lock + get + set. nested "
            "changes one field of a stored dict (`state[k]['field'] = v`: two round trips; "
            "HSET for Redis; get-change-set for the others).\n"
        )
        return ops_table("Operations: 1 client, 100 B values, 1,000 keys", rows) + note

    def scaling(self, plot_path: str) -> str:
        rows: list[tuple[str, str, Cell | None]] = []
        series: dict[str, dict[str, dict[int, float]]] = {"get": {}, "incr": {}}
        for system in self.systems:

            def each(system: System = system) -> None:
                for op in series:
                    for clients in (1, 4, 16):
                        cell = self._run(system, op, clients, 1000, SMALL)
                        self.figures[(op, system.name, clients)] = cell
                        points = series[op].setdefault(system.name, {})
                        points[clients] = cell.median.ops_per_second

            self._with(system, 1000, SMALL, each)
        for op in series:
            for clients in (1, 4, 16):
                for system in self.systems:
                    cell = self.figures.get((op, system.name, clients))
                    rows.append((f"{op}, {clients} clients", system.name, cell))
        plot_scaling(plot_path, series)
        return (
            ops_table("Client processes: 1, 4 and 16 (aggregate throughput)", rows)
            + f"\n![throughput against client processes]({os.path.basename(plot_path)})\n"
        )

    def value_sizes(self, quick: bool) -> str:
        rows: list[tuple[str, str, Cell | None]] = []
        sizes = (100, 10_000) if quick else (100, 10_000, 1_000_000)
        for size in sizes:
            value = b"x" * size
            keys = max(10, min(1000, 100_000_000 // size))  # at most ~100 MB of values
            for system in self.systems:

                def each(system: System = system, value: bytes = value, keys: int = keys) -> None:
                    for op in ("get", "set"):
                        cell = self._run(system, op, 1, keys, value)
                        self.figures[(f"{op} {len(value):,} B", system.name, 1)] = cell

                self._with(system, keys, value, each)
            for op in ("get", "set"):
                for system in self.systems:
                    name = f"{op} {size:,} B"
                    rows.append((name, system.name, self.figures.get((name, system.name, 1))))
        return ops_table("Value sizes: 1 client", rows)

    def store_sizes(self, quick: bool) -> str:
        """get latency as the store grows, and server memory per key."""
        counts = (1_000, 100_000) if quick else (1_000, 10_000, 100_000, 1_000_000)
        lines = [
            "## Store size: `get` of random keys (1 client, 100 B values)",
            "",
            "| system | keys | gets/s (range) | p50 µs | p99 µs | server memory per key |",
            "|---|---|---|---|---|---|",
        ]
        for system in self.systems:
            if system.name == "floor":
                continue  # it stores nothing
            directory = tempfile.mkdtemp(dir=self.workdir)
            system.start(directory)
            try:
                base = _rss(system.server_pid())
                for count in counts:
                    prefill(system, count, SMALL)
                    cell = self._run(system, "get", 1, count, SMALL)
                    pid = system.server_pid()
                    memory = f"{(_rss(pid) - base) / count:,.0f} B" if pid else "no server"
                    result = cell.median
                    if system.name == "sharedstate":
                        self.by_size[count] = result.ops_per_second
                    lines.append(
                        f"| {system.name} | {count:,} | {result.ops_per_second:,.0f} "
                        f"({cell.spread}) | {result.p50_us:,.0f} | {result.p99_us:,.0f} | "
                        f"{memory} |"
                    )
            finally:
                system.stop()
        return "\n".join(lines) + "\n"

    def targets(self) -> str:
        def rate(op: str, system: str, clients: int = 1) -> float | None:
            cell = self.figures.get((op, system, clients))
            return cell.median.ops_per_second if cell else None

        def ratio(a: float | None, b: float | None) -> float | None:
            return a / b if a is not None and b else None

        ours = "sharedstate"
        batch = rate("get_batch", ours)
        batch_keys = batch * BATCH if batch else None
        checks: list[tuple[str, float | None, float, str]] = [
            ("`get`, 1 client, 100 B", ratio(rate("get", ours), rate("get", "floor")),
             0.85, "× floor"),
            ("`set`, 1 client, 100 B", ratio(rate("set", ours), rate("set", "floor")),
             0.85, "× floor"),
            ("`incr`", ratio(rate("incr", ours), rate("incr", "BaseManager recipe")),
             3.0, "× BaseManager lock+get+set"),
            ("`incr`", ratio(rate("incr", ours), rate("incr", "redis-py")),
             1.5, "× redis-py INCR"),
            ("batch of 100 keys, per key", ratio(batch_keys, rate("get", ours)),
             20.0, "× single get"),
            ("16 client processes, get", ratio(rate("get", ours, 16), rate("get", ours, 1)),
             1.5, "× one client"),
            ("16 client processes, incr", ratio(rate("incr", ours, 16), rate("incr", ours, 1)),
             1.5, "× one client"),
        ]  # fmt: skip
        if self.by_size:
            small, large = min(self.by_size), max(self.by_size)
            checks.append(
                (f"`get` at {large:,} keys", ratio(self.by_size[large], self.by_size[small]),
                 0.9, f"× at {small:,} keys")
            )  # fmt: skip
        if e2e.LAST is not None:
            checks.append(("gunicorn counter, end to end", e2e.LAST, 1.2, "× redis-py app"))
        lines = ["## Targets", "", "| measure | measured | target | met |", "|---|---|---|---|"]
        for name, value, target, unit in checks:
            shown = "not measured" if value is None else f"{value:.2f} {unit}"
            met = "" if value is None else ("yes" if value >= target else "**no**")
            lines.append(f"| {name} | {shown} | ≥ {target:g} {unit} | {met} |")
        return "\n".join(lines) + "\n"


def _rss(pid: int | None) -> int:
    if pid is None:
        return 0
    total = 0
    for process in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{process}/statm") as file:
                total += int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as file:
                    if int(file.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


if __name__ == "__main__":
    main()
