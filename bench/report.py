"""Markdown tables and the throughput plot."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .load import Result


@dataclass
class Cell:
    """Repeated runs of one measurement."""

    runs: list[Result]

    @property
    def median(self) -> Result:
        return Result.median_of(self.runs)

    @property
    def spread(self) -> str:
        rates = sorted(run.ops_per_second for run in self.runs)
        return f"{rates[0]:,.0f}-{rates[-1]:,.0f}" if len(rates) > 1 else "one run"


def header(command: str, repeat: int, seconds: float) -> str:
    import sharedstate

    return "\n".join(
        [
            f"# sharedstate benchmark, {time.strftime('%Y-%m-%d %H:%M')}",
            "",
            f"- machine: {os.cpu_count()} cores, {platform.machine()}, {platform.platform()}",
            f"- Python {platform.python_version()}, sharedstate {sharedstate.__version__}",
            f"- command: `{command}`",
            f"- each figure: median of {repeat} runs of {seconds:g} s (the range of ops/s in "
            "brackets); latencies are per operation, as the client sees them",
            "",
        ]
    )


def ops_table(title: str, rows: Sequence[tuple[str, str, Cell | None]], per: str = "op") -> str:
    """Rows of (operation, system, cell); ratios against the floor and sharedstate."""
    lines = [
        f"## {title}",
        "",
        f"| operation | system | {per}s/s (range) | p50 µs | p99 µs | × floor | × sharedstate |",
        "|---|---|---|---|---|---|---|",
    ]
    by_op: dict[str, dict[str, Cell | None]] = {}
    for op, system, cell in rows:
        by_op.setdefault(op, {})[system] = cell
    for op, systems in by_op.items():
        floor = systems.get("floor")
        ours = systems.get("sharedstate")
        for system, cell in systems.items():
            if cell is None:
                lines.append(f"| {op} | {system} | not run | | | | |")
                continue
            result = cell.median
            lines.append(
                f"| {op} | {system} | {result.ops_per_second:,.0f} ({cell.spread}) | "
                f"{result.p50_us:,.0f} | {result.p99_us:,.0f} | {_ratio(result, floor)} | "
                f"{_ratio(result, ours)} |"
            )
    return "\n".join(lines) + "\n"


def _ratio(result: Result, base: Cell | None) -> str:
    if base is None:
        return ""
    return f"{result.ops_per_second / base.median.ops_per_second:.2f}"


def plot_scaling(path: str, series: dict[str, dict[str, dict[int, float]]]) -> None:
    """Throughput against client processes: one panel per operation, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 4.5), squeeze=False)
    for axis, (op, systems) in zip(axes[0], series.items(), strict=True):
        for system, points in systems.items():
            clients = sorted(points)
            axis.plot(clients, [points[c] for c in clients], marker="o", label=system)
        axis.set_title(f"{op}, 100 B values")
        axis.set_xlabel("client processes")
        axis.set_ylabel("operations per second (all clients)")
        axis.set_xscale("log", base=2)
        axis.set_xticks([1, 4, 16], labels=["1", "4", "16"])
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
