"""python -m bench.expiry: key expiry and the memory bound, against real servers.

    python -m bench.expiry [--quick] [--out bench/results]

Three parts, each on a server of its own (``python -m sharedstate serve`` in a temporary
directory, stopped and removed at the end, also on Ctrl-C or an error):

1. TTL overhead: ops/s of ``state.set(k, v)`` against ``state.set(k, v, ttl=60)``, and of
   ``state[k]`` of keys without and with a TTL; one client, 100 B values, rounds of
   each alternating A B, B A, A B... so an order effect or the machine's noise shows.
2. Reclaim: a million keys (``--quick``: 100,000) set with one shared deadline, then,
   never read, left to the background reaper. The server's RSS and ``memory_used`` are
   sampled every 0.25 s from the deadline on, while another process times reads of one
   other key (the probe), compared with the same probe on the idle server.
3. LRU hit rate: a Zipf trace used as a cache (get; on a miss, set) against a server
   bounded to a tenth of the working set with ``allkeys-lru``, and an exact LRU of the
   same capacity, simulated here with the same size accounting.

Prints a markdown report and writes it to ``--out``/expiry.md. Speed is reported, never
asserted; ratios are measured in the same run, as this machine's speed varies.
"""

from __future__ import annotations

import argparse
import array
import bisect
import itertools
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bench.procfs import rss_bytes
from sharedstate import SharedState, get_shared_state
from sharedstate.client.launcher import call_server_function
from sharedstate.codec import encode
from sharedstate.config import load_settings
from sharedstate.server.entries import DEADLINE_OVERHEAD, KEY_OVERHEAD

MIB = 1024 * 1024
VALUE = b"v" * 100
SAMPLE_EVERY = 0.25  # seconds between samples of the server during the reclaim
RECLAIM_WATCH = 20.0  # seconds the reclaim is watched at most, from the deadline
SETTLE = 5.0  # seconds still watched once every key has gone
IDLE_PROBE = 3.0  # seconds of probe reads on the idle server
ZIPF_SEED = 20261129


# -- servers -----------------------------------------------------------------------------


@dataclass
class Server:
    address: str
    process: subprocess.Popen[bytes]
    state: SharedState

    @property
    def pid(self) -> int:
        return self.process.pid

    def info(self) -> dict[str, Any]:
        found: dict[str, Any] = call_server_function(
            load_settings({"address": self.address}), "server_info", 30
        )
        return found

    def rss(self) -> int:
        return rss_bytes(self.pid)


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SHAREDSTATE_")}


@contextmanager
def server(*flags: str) -> Iterator[Server]:
    """A real server in a new temporary directory, stopped and removed on the way out."""
    workdir = tempfile.mkdtemp(prefix="ss-expiry-", dir="/tmp")
    address = os.path.join(workdir, "s.sock")
    log = open(os.path.join(workdir, "server.log"), "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "-m", "sharedstate", "serve", "--address", address, *flags],
        cwd=workdir,
        env=_clean_environ(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                log.flush()
                with open(os.path.join(workdir, "server.log"), errors="replace") as text:
                    raise RuntimeError(f"the server exited at start:\n{text.read()}")
            try:
                state = get_shared_state(address=address, start=False)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield Server(address, process, state)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


# -- small statistics ----------------------------------------------------------------------


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted figures."""
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def latency_cells(latencies: Sequence[float]) -> str:
    ordered = sorted(latencies)
    if not ordered:
        return "| 0 | | | |"
    return (
        f"| {len(ordered):,} | {percentile(ordered, 0.5) * 1e6:,.0f} | "
        f"{percentile(ordered, 0.99) * 1e6:,.0f} | {ordered[-1] * 1e3:,.1f} |"
    )


# -- 1. TTL overhead -----------------------------------------------------------------------

OVERHEAD_KEYS = 1000


def ttl_overhead(rounds: int, calls: int) -> str:
    with server() as srv:
        state = srv.state
        plain = [f"get:plain:{i}" for i in range(OVERHEAD_KEYS)]
        expiring = [f"get:ttl:{i}" for i in range(OVERHEAD_KEYS)]
        state.set_many(dict.fromkeys(plain, VALUE))
        state.set_many(dict.fromkeys(expiring, VALUE), ttl=3600)
        assert state[expiring[0]] == VALUE
        assert state.ttl(expiring[0]) is not None
        set_plain = [f"set:plain:{i}" for i in range(OVERHEAD_KEYS)]
        set_expiring = [f"set:ttl:{i}" for i in range(OVERHEAD_KEYS)]

        def timed(call: Callable[[int], Any], count: int) -> float:
            started = time.perf_counter()
            for i in range(count):
                call(i % OVERHEAD_KEYS)
            return count / (time.perf_counter() - started)

        work: dict[str, tuple[Callable[[int], Any], Callable[[int], Any]]] = {
            "`set`": (
                lambda i: state.set(set_plain[i], VALUE),
                lambda i: state.set(set_expiring[i], VALUE, ttl=60),
            ),
            "`state[k]`": (lambda i: state[plain[i]], lambda i: state[expiring[i]]),
        }
        rates: dict[str, tuple[list[float], list[float]]] = {op: ([], []) for op in work}
        for without, with_ttl in work.values():  # warm up both
            timed(without, 1000)
            timed(with_ttl, 1000)
        for index in range(rounds):
            order = (0, 1) if index % 2 == 0 else (1, 0)  # A B, B A, A B...
            for op, calls_ab in work.items():
                for which in order:
                    rates[op][which].append(timed(calls_ab[which], calls))
            print(
                f"  round {index + 1}/{rounds}: "
                + ", ".join(
                    f"{op} {rates[op][0][-1]:,.0f} / {rates[op][1][-1]:,.0f}" for op in work
                ),
                flush=True,
            )
        final_info = srv.info()
    lines = [
        "## 1. TTL overhead (1 client, 100 B values)",
        "",
        f"{rounds} rounds of {calls:,} calls of each, order A B, B A, A B... "
        f"(A: no TTL, B: TTL; keys cycle over {OVERHEAD_KEYS:,} of each kind; "
        "reads of keys set with ttl=3600, writes with ttl=60).",
        "",
        "| operation | A: no TTL, ops/s per round | B: TTL, ops/s per round | A median | "
        "B median | B / A (medians) | median of per-round B / A |",
        "|---|---|---|---|---|---|---|",
    ]
    for op, (a, b) in rates.items():
        paired = statistics.median(y / x for x, y in zip(a, b, strict=True))
        lines.append(
            f"| {op} | {', '.join(f'{x:,.0f}' for x in a)} | {', '.join(f'{x:,.0f}' for x in b)} "
            f"| {statistics.median(a):,.0f} | {statistics.median(b):,.0f} | "
            f"{statistics.median(b) / statistics.median(a):.3f} | {paired:.3f} |"
        )
    lines += [
        "",
        f"Goal: B / A ≥ 0.95. Server at the end: {final_info['keys']:,} keys, "
        f"{final_info['expiring_keys']:,} with a TTL.",
    ]
    return "\n".join(lines) + "\n"


# -- 2. Reclaim ----------------------------------------------------------------------------


def run_probe(address: str, out_path: str) -> None:
    """In a child process: read ``probe`` until SIGTERM; write (start time, latency) pairs."""
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    state = get_shared_state(address=address, start=False)
    figures = array.array("d")
    clock, wall = time.perf_counter, time.time
    while not stopping:
        at = wall()
        started = clock()
        state["probe"]
        figures.append(at)
        figures.append(clock() - started)
    with open(out_path, "wb") as out:
        figures.tofile(out)


@contextmanager
def probe(address: str, workdir: str, name: str) -> Iterator[list[tuple[float, float]]]:
    """A process timing ``state["probe"]`` reads for as long as the block runs; the list
    it yields is filled with (wall-clock start, seconds) pairs when the block ends."""
    out_path = os.path.join(workdir, f"{name}.probe")
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.expiry", "--probe", address, out_path],
        env=dict(_clean_environ(), PYTHONPATH=os.getcwd()),
    )
    found: list[tuple[float, float]] = []
    try:
        time.sleep(0.5)  # connected and reading
        yield found
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    figures = array.array("d")
    with open(out_path, "rb") as data:
        figures.frombytes(data.read())
    found.extend(zip(figures[0::2], figures[1::2], strict=True))


def reclaim(keys: int, batch: int, poll_info: bool) -> str:
    """With ``poll_info``, ask the server for its stats every sample (as ``sharedstate
    status`` would); without, read only its RSS from ``/proc`` until the watch ends."""
    value_size = len(encode(b"%08d" % 0 + b"r" * 92, ("k",)))
    workdir = tempfile.mkdtemp(prefix="ss-expiry-probe-", dir="/tmp")
    try:
        with server() as srv:
            return _reclaim(srv, keys, batch, value_size, workdir, poll_info)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _reclaim(
    srv: Server, keys: int, batch: int, value_size: int, workdir: str, poll_info: bool
) -> str:
    state = srv.state
    state["probe"] = VALUE
    time.sleep(0.5)
    with probe(srv.address, workdir, "idle") as idle:
        time.sleep(IDLE_PROBE)
    empty_rss, empty_info = srv.rss(), srv.info()
    assert empty_info["pid"] == srv.pid, "the server runs in another process than started"

    # Every key gets one deadline, 2 s after the loading is expected to end: the
    # ttl of each batch is what is left until then. The loading rate is estimated first
    # from a batch of other keys, deleted at once.
    warm = {f"warm:{i}": b"%08d" % i + b"w" * 92 for i in range(batch)}
    started = time.perf_counter()
    state.set_many(warm, ttl=3600)
    per_batch = time.perf_counter() - started
    state.delete_many(warm)
    batches = -(-keys // batch)
    load_started = time.time()
    expiry_at = load_started + max(4.0, 2.0 * per_batch * batches) + 2.0
    overran = 0
    for first in range(0, keys, batch):
        chunk = {f"r:{i}": b"%08d" % i + b"r" * 92 for i in range(first, min(keys, first + batch))}
        ttl = expiry_at - time.time()
        if ttl < 0.5:
            overran += 1
            ttl = 0.5
        state.set_many(chunk, ttl=ttl)
    load_seconds = time.time() - load_started
    loaded_rss, loaded_info = srv.rss(), srv.info()
    print(
        f"  loaded {keys:,} keys in {load_seconds:.1f} s; deadline in "
        f"{expiry_at - time.time():.1f} s",
        flush=True,
    )

    samples: list[dict[str, Any]] = []
    done_after: float | None = None
    with probe(srv.address, workdir, "reclaim") as during:
        time.sleep(max(0.0, expiry_at - time.time()))
        for tick in itertools.count():
            time.sleep(max(0.0, expiry_at + tick * SAMPLE_EVERY - time.time()))
            rss = srv.rss()
            since = time.time() - expiry_at
            last = since >= RECLAIM_WATCH
            sample: dict[str, Any] = {"t": since, "rss": rss}
            if poll_info or last:
                asked = time.perf_counter()
                info = srv.info()
                sample["info_s"] = time.perf_counter() - asked
                sample.update(used=info["memory_used"], expired=info["expired"], keys=info["keys"])
                if done_after is None and info["expired"] >= keys and poll_info:
                    done_after = since
                    print(f"  every key removed {since:.2f} s after the deadline", flush=True)
            samples.append(sample)
            if last or (done_after is not None and since >= done_after + SETTLE):
                break
    end = samples[-1]
    idle_latencies = [seconds for _, seconds in idle]
    until = expiry_at + (done_after if done_after is not None else end["t"])
    reclaim_latencies = [s for at, s in during if expiry_at <= at <= until]
    loaded_latencies = [s for at, s in during if at < expiry_at]
    after_latencies = [s for at, s in during if at > until]
    reclaim_window = (
        "deadline to last key removed"
        if done_after is not None
        else f"deadline to {until - expiry_at:.1f} s after it"
    )
    worst_at = max(during, key=lambda pair: pair[1]) if during else (expiry_at, 0.0)

    growth = loaded_rss - empty_rss
    used = loaded_info["memory_used"] - empty_info["memory_used"]
    implied = growth / keys - value_size
    counted = KEY_OVERHEAD + DEADLINE_OVERHEAD
    polled = (
        f"`server_info` asked every {SAMPLE_EVERY} s, as a `sharedstate status` loop would"
        if poll_info
        else f"only RSS read (from /proc) every {SAMPLE_EVERY} s; `server_info` asked once, "
        f"{RECLAIM_WATCH:.0f} s after the deadline"
    )
    lines = [
        f"## 2{'a' if poll_info else 'b'}. Reclaim: {keys:,} keys with a TTL, never read; "
        + polled,
        "",
        f"Loaded with `set_many` in batches of {batch:,} ({value_size} B pickled values) in "
        f"{load_seconds:.1f} s, each batch's ttl set so that every key has the same deadline, "
        f"{expiry_at - load_started - load_seconds:.1f} s after the load ended"
        + (f" ({overran} batches overran it and got ttl=0.5 s)" if overran else "")
        + ". (A plain ttl=2 s would have let the first batches expire while later ones were "
        "still loading.)",
        "",
        "| | server RSS | `memory_used` | keys |",
        "|---|---|---|---|",
        f"| empty (probe key only) | {empty_rss / MIB:,.1f} MiB | {empty_info['memory_used']:,} B "
        f"| {empty_info['keys']:,} |",
        f"| loaded | {loaded_rss / MIB:,.1f} MiB | {loaded_info['memory_used'] / MIB:,.1f} MiB "
        f"| {loaded_info['keys']:,} |",
        f"| end ({end['t']:.1f} s after the deadline) | {end['rss'] / MIB:,.1f} MiB | "
        f"{_bytes(end['used'])} | {end['keys']:,} |",
        "",
        "- Every key removed (`expired` ≥ "
        + f"{keys:,}) "
        + (
            f"{done_after:.2f} s after the deadline (sampled every {SAMPLE_EVERY} s)"
            if done_after is not None
            else f"by {end['t']:.1f} s after the deadline (when it was first asked)"
            if end["expired"] >= keys
            else f"**not within {end['t']:.1f} s**: {end['expired']:,} expired by then"
        )
        + ".",
        f"- RSS at the end: {end['rss'] / empty_rss:.2f} × the empty server's, "
        f"{(end['rss'] - empty_rss) / MIB:+,.1f} MiB (it was {loaded_rss / empty_rss:.2f} ×, "
        f"{growth / MIB:+,.1f} MiB, loaded).",
        f"- `memory_used` against RSS: RSS growth / `memory_used` growth = "
        f"{growth / used:.2f}. RSS growth per key {growth / keys:,.0f} B; minus the "
        f"{value_size} B pickle: {implied:,.0f} B per key of overhead, where the count uses "
        f"KEY_OVERHEAD + DEADLINE_OVERHEAD = {KEY_OVERHEAD} + {DEADLINE_OVERHEAD} = {counted} B.",
        "",
        "RSS over time (t: seconds after the deadline):",
        "",
        "| t (s) | RSS (MiB) | `memory_used` (MiB) | expired | keys | `server_info` call (ms) |",
        "|---|---|---|---|---|---|",
    ]
    wanted = [0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0]
    if done_after is not None:
        wanted.append(done_after)
    drops = [samples[i - 1]["rss"] - samples[i]["rss"] for i in range(1, len(samples))]
    biggest_drop = max(range(len(drops)), key=drops.__getitem__) + 1 if drops else 0
    wanted.append(samples[biggest_drop]["t"])

    def nearest(t: float) -> int:
        return min(range(len(samples)), key=lambda i: abs(samples[i]["t"] - t))

    shown = sorted({nearest(t) for t in wanted})
    for index in shown:
        s = samples[index]
        if "info_s" in s:
            lines.append(
                f"| {s['t']:.2f} | {s['rss'] / MIB:,.1f} | {s['used'] / MIB:,.1f} | "
                f"{s['expired']:,} | {s['keys']:,} | {s['info_s'] * 1e3:,.1f} |"
            )
        else:
            lines.append(f"| {s['t']:.2f} | {s['rss'] / MIB:,.1f} | | | | not asked |")
    info_times = sorted(s["info_s"] for s in samples if "info_s" in s)
    lines += [
        "",
        f"`server_info` (what `sharedstate status` calls), timed by the sampler: median "
        f"{percentile(info_times, 0.5) * 1e3:,.1f} ms, max {info_times[-1] * 1e3:,.1f} ms "
        f"over {len(info_times)} calls.",
        f"Peak RSS seen: {max(s['rss'] for s in samples) / MIB:,.1f} MiB; the largest drop "
        f"between two samples: {drops[biggest_drop - 1] / MIB if drops else 0:,.1f} MiB, by "
        f"{samples[biggest_drop]['t']:.2f} s.",
        "",
        'Probe: another process reading `state["probe"]` in a loop (latency of each read):',
        "",
        "| when | reads | p50 µs | p99 µs | max ms |",
        "|---|---|---|---|---|",
        f"| idle server, before loading ({IDLE_PROBE:.0f} s) {latency_cells(idle_latencies)}",
        f"| loaded, before the deadline {latency_cells(loaded_latencies)}",
        f"| during the reclaim ({reclaim_window}) {latency_cells(reclaim_latencies)}",
        *([f"| after the reclaim {latency_cells(after_latencies)}"] if done_after else []),
        "",
        f"Slowest probe read: {worst_at[1] * 1e3:,.1f} ms, "
        f"{worst_at[0] - expiry_at:+.2f} s from the deadline."
        + (
            " The sampler's `server_info` calls ran meanwhile, and count in what the probe saw."
            if poll_info
            else ""
        ),
    ]
    return "\n".join(lines) + "\n"


def _bytes(count: int) -> str:
    return f"{count:,} B" if count < MIB else f"{count / MIB:,.1f} MiB"


# -- 3. LRU hit rate -----------------------------------------------------------------------


def zipf_trace(requests: int, distinct: int, exponent: float, seed: int) -> list[int]:
    """``requests`` ranks in 0..distinct-1, rank r drawn with weight 1 / (r + 1) ** exponent."""
    cumulative = list(itertools.accumulate(1.0 / (r + 1) ** exponent for r in range(distinct)))
    total = cumulative[-1]
    rng = random.Random(seed)
    return [
        min(bisect.bisect_left(cumulative, rng.random() * total), distinct - 1)
        for _ in range(requests)
    ]


def exact_lru(trace: Sequence[int], size: int, capacity: int) -> tuple[int, int]:
    """Hits and evictions of an exact LRU of ``capacity`` bytes, every item ``size`` bytes,
    used as the server's cache is (evict least recent until the new item fits)."""
    order: OrderedDict[int, None] = OrderedDict()
    used = hits = evicted = 0
    for item in trace:
        if item in order:
            order.move_to_end(item)
            hits += 1
            continue
        while used + size > capacity and order:
            order.popitem(last=False)
            used -= size
            evicted += 1
        if used + size <= capacity:
            order[item] = None
            used += size
    return hits, evicted


def lru_hit_rate(requests: int, distinct: int, exponent: float) -> str:
    trace = zipf_trace(requests, distinct, exponent, ZIPF_SEED)
    touched = len(set(trace))
    keys = [f"z:{r}" for r in range(distinct)]
    values = [b"%08d" % r + b"z" * 92 for r in range(distinct)]
    pickled = len(encode(values[0], ("k",)))
    per_key = pickled + KEY_OVERHEAD
    capacity = int(0.10 * touched * per_key)

    with server("--max-memory", str(capacity), "--eviction", "allkeys-lru") as srv:
        state = srv.state
        before = srv.info()["memory_used"]
        state.set("size-check", values[0])
        measured = srv.info()["memory_used"] - before - KEY_OVERHEAD
        state.delete_many(["size-check"])
        start = srv.info()
        hits = 0
        started = time.perf_counter()
        for rank in trace:
            if state.get(keys[rank]) is not None:
                hits += 1
            else:
                state.set(keys[rank], values[rank])
        seconds = time.perf_counter() - started
        info = srv.info()
    sim_hits, sim_evicted = exact_lru(trace, per_key, capacity)
    server_hits = info["hits"] - start["hits"]
    rate, sim_rate = hits / requests, sim_hits / requests
    lines = [
        "## 3. LRU hit rate (`allkeys-lru`, cache use: get; on a miss, set)",
        "",
        f"Zipf trace: {requests:,} requests over {distinct:,} keys, exponent {exponent}, "
        f"seed {ZIPF_SEED}; {touched:,} distinct keys requested (the working set). Values "
        f"{pickled} B pickled (the server counted {measured} B for one), so "
        f"{per_key} B per key counted; `--max-memory {capacity}` = 10 % of "
        f"{touched:,} × {per_key} B, room for {capacity // per_key:,} keys.",
        "",
        "| | hits | hit rate | evictions |",
        "|---|---|---|---|",
        f"| server | {hits:,} (server's count: {server_hits:,}) | {rate:.2%} | "
        f"{info['evicted'] - start['evicted']:,} |",
        f"| exact LRU, simulated | {sim_hits:,} | {sim_rate:.2%} | {sim_evicted:,} |",
        "",
        f"Server / exact LRU hit rate: {rate / sim_rate:.4f} (goal ≥ 0.90). At the end the "
        f"server held {info['keys']:,} keys, `memory_used` {info['memory_used']:,} of "
        f"{info['max_memory']:,} B. {requests:,} requests in {seconds:.1f} s "
        f"({requests / seconds:,.0f}/s, 1 or 2 round trips each).",
    ]
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.expiry", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer calls and keys")
    parser.add_argument("--out", default=os.path.join("bench", "results"))
    parser.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.probe:
        run_probe(*options.probe)
        return
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # clean up servers
    for name in [k for k in os.environ if k.startswith("SHAREDSTATE_")]:
        del os.environ[name]
    started = time.time()
    quick = options.quick
    command = "python -m bench.expiry" + (" --quick" if quick else "")
    sections = []
    print("1. TTL overhead", flush=True)
    sections.append(ttl_overhead(rounds=4 if quick else 5, calls=5_000 if quick else 20_000))
    print("2. Reclaim", flush=True)
    for poll_info in (True, False):
        sections.append(reclaim(100_000 if quick else 1_000_000, 10_000, poll_info))
    print("3. LRU hit rate", flush=True)
    if quick:
        sections.append(lru_hit_rate(requests=50_000, distinct=25_000, exponent=1.0))
    else:
        sections.append(lru_hit_rate(requests=200_000, distinct=100_000, exponent=1.0))
    took = time.time() - started
    header = (
        "# Expiry and the memory bound\n\n"
        f"`{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"took {took / 60:.1f} min. Ratios are measured in the same run; absolute rates "
        "vary with the machine's other load.\n"
    )
    report = "\n".join([header, *sections])
    print()
    print(report)
    os.makedirs(options.out, exist_ok=True)
    with open(os.path.join(options.out, "expiry.md"), "w", encoding="utf-8") as out:
        out.write(report)


if __name__ == "__main__":
    main()
