"""``python -m bench.contention``: the shared lock and edits when many clients want them.

Each client process loops ``with state.lock: state.incr(...)`` (or ``with
state.edit(key)``) for a few seconds; the report gives operations per second for 1 to 64
clients, and the ratio to one client. A lock can't serve more than one holder at a time,
so the ideal is a ratio near 1; what this guards against is the collapse a thread per
waiting call caused (0.03 times one client's rate at 64 clients: every release woke
every waiter).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from .persistence import client, rate, server

CLIENT_COUNTS = (1, 2, 8, 32, 64)


def _locked_loop(address: str, seconds: float, results: Any) -> None:
    state = client(address)
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        with state.lock:
            state.incr("locked")
        count += 1
    results.put(count)


def _edit_loop(address: str, seconds: float, results: Any) -> None:
    state = client(address)
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        with state.edit("edited", default={"n": 0}) as edited:
            edited["n"] += 1
        count += 1
    results.put(count)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.contention", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(
        "| clients | `with state.lock` ops/s | × 1 client | `with state.edit` ops/s | × 1 client |"
    )
    print("|---|---|---|---|---|")
    with (
        tempfile.TemporaryDirectory(prefix="ss-bench-") as workdir,
        server(workdir) as (
            address,
            _,
            _,
        ),
    ):
        first: tuple[float, float] | None = None
        for clients in CLIENT_COUNTS:
            locked = rate(address, _locked_loop, clients, args.seconds)
            edited = rate(address, _edit_loop, clients, args.seconds)
            first = first or (locked, edited)
            print(
                f"| {clients} | {locked:,.0f} | {locked / first[0]:.2f} | "
                f"{edited:,.0f} | {edited / first[1]:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
