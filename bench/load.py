"""Driving a system from client processes and measuring what they see."""

from __future__ import annotations

import multiprocessing
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

from .systems import System

_fork = multiprocessing.get_context("fork")
BATCH = 100
SAMPLES_PER_CLIENT = 20_000


@dataclass
class Result:
    """One measurement: all clients together."""

    ops_per_second: float
    p50_us: float
    p99_us: float

    @staticmethod
    def median_of(runs: list[Result]) -> Result:
        return Result(
            statistics.median(r.ops_per_second for r in runs),
            statistics.median(r.p50_us for r in runs),
            statistics.median(r.p99_us for r in runs),
        )


def prefill(system: System, keys: int, value: bytes) -> None:
    """Store ``keys`` values and nested dicts, from a separate process."""
    process = _fork.Process(target=_prefill, args=(system, keys, value))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"prefilling {system.name} failed")


def _prefill(system: System, keys: int, value: bytes) -> None:
    client = system.client()
    step = 1000
    for start in range(0, keys, step):
        names = range(start, min(start + step, keys))
        client.set_batch({f"k{i}": value for i in names})
    client.prefill_nested({f"d{i}": {"field": value} for i in range(min(keys, 1000))})


def measure(
    system: System, op: str, clients: int, seconds: float, keys: int, value: bytes
) -> Result:
    """Run ``op`` from ``clients`` processes for ``seconds``; return the aggregate."""
    barrier = _fork.Barrier(clients + 1)
    results = _fork.Queue()
    workers = [
        _fork.Process(target=_client, args=(system, op, seconds, keys, value, barrier, results))
        for _ in range(clients)
    ]
    for worker in workers:
        worker.start()
    try:
        barrier.wait(60)
        collected = [results.get(timeout=seconds + 120) for _ in workers]
    finally:
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
    total = sum(count for count, _, _ in collected)
    elapsed = max(elapsed for _, elapsed, _ in collected)
    latencies = sorted(sample for _, _, samples in collected for sample in samples)
    return Result(
        total / elapsed,
        latencies[len(latencies) // 2] * 1e6,
        latencies[int(len(latencies) * 0.99)] * 1e6,
    )


def _client(
    system: System,
    op: str,
    seconds: float,
    keys: int,
    value: bytes,
    barrier: Any,
    results: Any,
) -> None:
    client = system.client()
    rng = random.Random()
    names = [f"k{i}" for i in range(keys)]
    rng.shuffle(names)  # random access, so a large store can't hide behind a hot cache line
    nested = [f"d{i}" for i in range(min(keys, 1000))]
    counters = [f"n{i}" for i in range(16)]
    batches = [names[i : i + BATCH] for i in range(0, min(keys, 100 * BATCH), BATCH)]
    mappings = [{name: value for name in batch} for batch in batches]
    call = {
        "get": lambda i: client.get(names[i % len(names)]),
        "set": lambda i: client.set(names[i % len(names)], value),
        "incr": lambda i: client.incr(counters[i % len(counters)]),
        "locked_rmw": lambda i: client.locked_rmw(names[i % len(names)]),
        "nested": lambda i: client.nested(nested[i % len(nested)]),
        "get_batch": lambda i: client.get_batch(batches[i % len(batches)]),
        "set_batch": lambda i: client.set_batch(mappings[i % len(mappings)]),
    }[op]
    for i in range(20):  # warm up: connect, fill caches
        call(i)
    barrier.wait(60)
    samples: list[float] = []
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    now = started
    while now < deadline:
        call(count)
        after = time.perf_counter()
        if len(samples) < SAMPLES_PER_CLIENT:
            samples.append(after - now)
        now = after
        count += 1
    results.put((count, now - started, samples))
