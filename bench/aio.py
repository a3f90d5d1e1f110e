"""python -m bench.aio: the asyncio client (``sharedstate.aio``), against real servers.

    python -m bench.aio [--quick] [--rounds N] [--seconds S] [--profile] [--out bench/results]

Starts, in a private temporary directory, a sharedstate server and a redis-server (Unix
sockets), and stops and removes them at the end (also on Ctrl-C or an error). Every
figure is the median of several rounds, and every ratio is against a baseline measured
in the same run, rounds alternating in order (A B, B A...):

1. Tasks in one event loop: aggregate ops/s of ``await state.get`` and ``await
   state.incr`` with 1 task and with 64 concurrent tasks (goal: 64 tasks at least 3 times 1 task).
2. One task's ``get`` against the sync client's ``get`` in the same process, same server
   (goal: at least 0.9 times).
3. Event-loop stalls: while 1 and 2 run, a probe task sleeps 1 ms in a loop and records
   how late it wakes (max and p99, against the same probe on an idle loop); the same
   during connecting, reconnecting after ``aclose()`` and starting a server. Then the
   same work once more in asyncio debug mode with a low ``slow_callback_duration``: the
   slowest callbacks the loop logged.
4. End to end: a FastAPI counter (``bench/aio_app.py``, ``POST /hits``) under ``uvicorn
   --workers 4``, on ``sharedstate.aio`` and on ``redis.asyncio``, driven by wrk (a
   Lua script counts the requests it sends); requests/s, the ratio (goal: at least 1.2 times), the
   CPU each process tree spent per request, and the final count against the requests
   sent (must be exact).

redis.asyncio runs the same work in 1 to 3 for reference. Prints a markdown report and
writes it to ``--out``/aio.md. Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import http.client
import io
import logging
import os
import platform
import pstats
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from bench.expiry import percentile, server
from bench.systems import Redis

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALUE = b"v" * 100
KEYS = [f"k{i}" for i in range(1000)]
MANY = 64  # concurrent tasks in the "many tasks" figures
PERIOD = 0.001  # the stall probe's sleep
SLOW_CALLBACK = 0.0005  # asyncio debug mode's slow_callback_duration in the debug pass
CONNECTIONS = 64  # wrk connections, end to end
EXACT_POSTS = 20_000  # the exact-count check's requests, per backend
WRK_THREADS = 2
WORKERS = 4

AsyncCall = Callable[[str], Awaitable[Any]]


# -- the stall probe -------------------------------------------------------------------------


class Probe:
    """A task that sleeps PERIOD in a loop and records how late it wakes up each time."""

    def __init__(self) -> None:
        self.overshoots: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._since = time.perf_counter()

    async def _run(self) -> None:
        clock = time.perf_counter
        while True:
            self._since = started = clock()
            await asyncio.sleep(PERIOD)
            self.overshoots.append(clock() - started - PERIOD)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[float]:
        assert self._task is not None
        overdue = time.perf_counter() - self._since - PERIOD
        if overdue > PERIOD:  # it never woke again: the loop was blocked until now
            self.overshoots.append(overdue)
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task
        return self.overshoots


def stall_cells(overshoots: list[float]) -> str:
    if not overshoots:
        return "| | |"
    ordered = sorted(overshoots)
    return f"| {percentile(ordered, 0.99) * 1e3:.2f} | {ordered[-1] * 1e3:.2f} |"


# -- measuring ops/s ---------------------------------------------------------------------------


async def async_rate(call: AsyncCall, tasks: int, seconds: float, keys: list[str]) -> float:
    """Aggregate calls per second of ``tasks`` tasks calling ``call`` back to back.

    Each task watches the clock itself: a call that completes without yielding to the
    loop must not make the measurement run forever.
    """
    counts = [0] * tasks
    clock = time.perf_counter
    started = clock()
    deadline = started + seconds

    async def worker(index: int) -> None:
        done, where = 0, index * 7
        while clock() < deadline:
            await call(keys[where % len(keys)])
            done += 1
            where += 1
        counts[index] = done

    await asyncio.gather(*(worker(i) for i in range(tasks)))
    return sum(counts) / (clock() - started)


def sync_rate(call: Callable[[str], Any], seconds: float, keys: list[str]) -> float:
    done, clock = 0, time.perf_counter
    started = clock()
    deadline = started + seconds
    while clock() < deadline:
        call(keys[done % len(keys)])
        done += 1
    return done / (clock() - started)


@dataclass
class Phase:
    """One measured thing, run once per round."""

    name: str
    system: str  # "sharedstate" or "redis"
    run: Callable[[], float]
    rates: list[float] = field(default_factory=list)
    overshoots: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def spread(self) -> str:
        return f"{min(self.rates):,.0f}-{max(self.rates):,.0f}"


# -- parts 1 to 3: one process, one event loop -------------------------------------------------


class InProcess:
    def __init__(self, address: str, redis_socket: str, seconds: float, loop: str) -> None:
        import redis
        import redis.asyncio

        from sharedstate import get_shared_state as get_sync
        from sharedstate.aio import get_shared_state

        self.address = address
        self.seconds = seconds
        self.get_shared_state = get_shared_state
        self.sync = get_sync(address=address, start=False)
        self.sync.set_many(dict.fromkeys(KEYS, VALUE))
        self.sync_redis = redis.Redis(unix_socket_path=redis_socket)
        self.sync_redis.mset(dict.fromkeys(KEYS, VALUE))
        self.redis_socket = redis_socket
        self.runner = asyncio.Runner(loop_factory=_loop_factory(loop))
        self.loop = self.runner.get_loop()
        self.aio: Any = self.runner.run(self._connect())
        self.aredis = redis.asyncio.Redis(unix_socket_path=redis_socket)
        self.incrs = {"sharedstate": 0, "redis": 0}  # incr calls made, for the count check
        self.counted_before = self._counted()  # the servers may be shared with an earlier run
        self.notes: list[str] = []

    async def _connect(self) -> Any:
        return await self.get_shared_state(address=self.address, start=False)

    def close(self) -> None:
        async def close_all() -> None:
            await self.aio.aclose()
            await self.aredis.aclose()

        self.runner.run(close_all())
        self.runner.close()
        self.sync_redis.close()

    # One round of one phase: ops/s (and the probe's overshoots, if probed).

    def _async(self, call: AsyncCall, tasks: int, probed: bool, keys: list[str]) -> Phase | Any:
        async def body() -> tuple[float, list[float]]:
            probe = Probe()
            if probed:
                probe.start()
            rate = await async_rate(call, tasks, self.seconds, keys)
            overshoots = await probe.stop() if probed else []
            return rate, overshoots

        return self.runner.run(body())

    def phases(self) -> list[Phase]:
        incr_keys = [f"n{i}" for i in range(MANY)]
        found: list[Phase] = []

        def add(name: str, system: str, run: Callable[[Phase], float]) -> None:
            phase = Phase(name, system, lambda: 0.0)
            phase.run = lambda: run(phase)
            found.append(phase)

        def async_phase(call: AsyncCall, tasks: int, probed: bool, keys: list[str],
                        incr_of: str | None = None) -> Callable[[Phase], float]:  # fmt: skip
            def run(phase: Phase) -> float:
                rate, overshoots = self._async(call, tasks, probed, keys)
                phase.overshoots.extend(overshoots)
                return float(rate)

            return run

        def counting(system: str, call: AsyncCall) -> AsyncCall:
            async def counted(key: str) -> Any:
                self.incrs[system] += 1
                return await call(key)

            return counted

        ss_incr = counting("sharedstate", self.aio.incr)
        rd_incr = counting("redis", self.aredis.incr)
        for system, sync_get, get, incr in (
            ("sharedstate", self.sync.get, self.aio.get, ss_incr),
            ("redis", self.sync_redis.get, self.aredis.get, rd_incr),
        ):  # each pair compared in the targets runs back to back
            add(
                "sync client `get`, 1 thread",
                system,
                lambda phase, sync_get=sync_get: sync_rate(sync_get, self.seconds, KEYS),
            )
            add("`get`, 1 task, no probe", system, async_phase(get, 1, False, KEYS))
            add("`get`, 1 task", system, async_phase(get, 1, True, KEYS))
            add(f"`get`, {MANY} tasks", system, async_phase(get, MANY, True, KEYS))
            add("`incr`, 1 task", system, async_phase(incr, 1, True, incr_keys))
            add(f"`incr`, {MANY} tasks", system, async_phase(incr, MANY, True, incr_keys))

        async def nothing(key: str) -> None:
            await asyncio.sleep(0.05)

        add("idle loop (probe only)", "none", async_phase(nothing, 1, True, KEYS))
        return found  # fmt: skip

    def measure(self, rounds: int) -> list[Phase]:
        phases = self.phases()
        for phase in phases:  # warm up: connections, pools, caches
            saved = self.seconds
            self.seconds = 0.2
            phase.run()
            self.seconds = saved
            phase.overshoots.clear()
        for index in range(rounds):
            order = phases if index % 2 == 0 else phases[::-1]
            for phase in order:
                phase.rates.append(phase.run())
            shown = next(p for p in phases if p.name.startswith("`get`, 1 task, no"))
            sync = phases[0]
            print(f"  round {index + 1}/{rounds}: aio get 1 task {shown.rates[-1]:,.0f}/s, "
                  f"sync get {sync.rates[-1]:,.0f}/s", flush=True)  # fmt: skip
        self._check_counts()
        return phases

    def _counted(self) -> dict[str, int]:
        keys = [f"n{i}" for i in range(MANY)]
        return {
            "sharedstate": sum(v or 0 for v in self.sync.get_many(keys).values()),
            "redis": sum(int(v or 0) for v in self.sync_redis.mget(keys)),
        }

    def _check_counts(self) -> None:
        """The incr phases' counters must add up to the calls made (sync client reads them)."""
        counted_now = self._counted()
        for system in ("sharedstate", "redis"):
            counted = counted_now[system] - self.counted_before[system]
            made = self.incrs[system]
            verdict = "right" if counted == made else f"**WRONG**: {counted:,} counted"
            self.notes.append(f"- {system}: {made:,} `incr` calls made, counters sum: {verdict}")

    # Stalls outside the steady state: connecting, reconnecting, starting a server.

    def connection_stalls(self, workdir: str) -> list[tuple[str, float, list[float]]]:
        """(what, mean seconds per time, probe overshoots) for each connection event."""
        results = []

        async def timed_probe(body: Callable[[], Awaitable[int]]) -> tuple[float, list[float]]:
            probe = Probe()
            probe.start()
            await asyncio.sleep(0.01)
            started = time.perf_counter()
            times = await body()
            took = (time.perf_counter() - started) / times
            return took, await probe.stop()

        async def repeated_get_shared_state() -> int:
            # Yield every 10 calls, as a request handler would between requests: a cached
            # answer need not yield, and 10,000 calls in a row would stall the probe.
            for index in range(10_000):
                await self.get_shared_state(address=self.address, start=False)
                if index % 10 == 9:
                    await asyncio.sleep(0)
            return 10_000

        async def reconnects() -> int:
            for _ in range(50):
                await self.aio.aclose()
                await self.aio.get(KEYS[0])
            return 50

        async def start_server() -> int:
            address = os.path.join(workdir, "started-by-aio", "state.sock")
            state = await self.get_shared_state(address=address, start=True, timeout=30)
            await state.set("started", True)
            self._started_address = address
            return 1

        for what, body in (
            ("`get_shared_state()` again, same loop, same arguments (10,000 calls, "
             "yielding every 10)",
             repeated_get_shared_state),
            ("`aclose()` then `get` (reconnect), 50 times", reconnects),
            ("`get_shared_state(start=True)` starting a server", start_server),
        ):  # fmt: skip
            try:
                took, overshoots = self.runner.run(timed_probe(body))
            except Exception as error:  # report it, measure the rest
                self.notes.append(f"- {what}: failed with {type(error).__name__}: {error}")
                continue
            results.append((what, took, overshoots))
        started = getattr(self, "_started_address", None)
        if started:
            subprocess.run([sys.executable, "-m", "sharedstate", "stop", "--address", started],
                           capture_output=True, timeout=60, check=False)  # fmt: skip
        return results

    # The debug-mode pass.

    def debug_pass(self, seconds: float) -> tuple[dict[str, list[tuple[float, str]]], list[str]]:
        """Per system, the callbacks asyncio debug mode logged as slow; other debug messages."""
        slow: dict[str, list[tuple[float, str]]] = {"sharedstate": [], "redis": []}
        other: list[str] = []
        current = ["sharedstate"]

        class Catch(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.msg == "Executing %s took %.3f seconds" and record.args:
                    handle, took = record.args  # type: ignore[misc]
                    slow[current[0]].append((float(took), str(handle)))
                else:
                    other.append(f"{current[0]}: {record.getMessage()[:300]}")

        import redis.asyncio

        logger = logging.getLogger("asyncio")
        handler = Catch()
        logger.addHandler(handler)
        old_propagate, logger.propagate = logger.propagate, False
        try:
            with (
                warnings.catch_warnings(record=True) as caught,
                asyncio.Runner(debug=True) as runner,
            ):
                warnings.simplefilter("always")
                runner.get_loop().slow_callback_duration = SLOW_CALLBACK

                async def work(system: str) -> None:
                    current[0] = system
                    if system == "sharedstate":
                        state = await self.get_shared_state(address=self.address, start=False)
                        get, incr, close = state.get, state.incr, state.aclose
                    else:
                        client = redis.asyncio.Redis(unix_socket_path=self.redis_socket)
                        get, incr, close = client.get, client.incr, client.aclose
                    for call, tasks in ((get, 1), (get, MANY), (incr, 1), (incr, MANY)):
                        await async_rate(call, tasks, seconds, [f"debug{i}" for i in range(MANY)]
                                         if call is incr else KEYS)  # fmt: skip

                    async def reconnect() -> None:
                        await close()
                        await get(KEYS[0])  # reconnects
                        await close()

                    await asyncio.create_task(reconnect())

                runner.run(work("sharedstate"))
                runner.run(work("redis"))
            for warning in caught:
                other.append(f"warning: {warning.category.__name__}: {str(warning.message)[:300]}")
        finally:
            logger.removeHandler(handler)
            logger.propagate = old_propagate
        for found in slow.values():
            found.sort(reverse=True)
        return slow, other

    def where_time_goes(self, workdir: str, rounds: int) -> str:
        """Target 2's context: asyncio's own round-trip cost on this machine (a bare echo,
        blocking socket against an asyncio Protocol), and the client CPU per ``get``."""
        path = tempfile.mktemp(suffix=".sock", dir=workdir)  # noqa: S306 (a private dir)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(8)
        echo = os.fork()
        if echo == 0:  # the echo server: a thread per connection, each message sent back
            try:
                import threading

                def serve(conn: socket.socket) -> None:
                    while data := conn.recv(65536):
                        conn.sendall(data)

                while True:
                    conn, _ = listener.accept()
                    threading.Thread(target=serve, args=(conn,), daemon=True).start()
            finally:
                os._exit(0)
        listener.close()
        message = b"m" * 120  # about a pickled get request
        blocking = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        blocking.connect(path)

        class Echo(asyncio.Protocol):
            waiter: asyncio.Future[bytes]

            def data_received(self, data: bytes) -> None:
                self.waiter.set_result(data)

        async def connect() -> tuple[asyncio.BaseTransport, Echo]:
            return await asyncio.get_running_loop().create_unix_connection(Echo, path)

        def sync_echo(seconds: float) -> float:
            clock, done = time.perf_counter, 0
            started = clock()
            while clock() < started + seconds:
                blocking.sendall(message)
                blocking.recv(65536)
                done += 1
            return done / (clock() - started)

        async def async_echo(seconds: float) -> float:
            loop = asyncio.get_running_loop()
            clock, done = time.perf_counter, 0
            started = clock()
            while clock() < started + seconds:
                protocol.waiter = loop.create_future()
                transport.write(message)  # type: ignore[attr-defined]
                await protocol.waiter
                done += 1
            return done / (clock() - started)

        def cpu_per_call(body: Callable[[], Any], calls: int) -> tuple[float, float]:
            wall, cpu = time.perf_counter(), time.process_time()
            body()
            return ((time.process_time() - cpu) / calls, (time.perf_counter() - wall) / calls)

        async def aio_gets(calls: int) -> None:
            for i in range(calls):
                await self.aio.get(KEYS[i % len(KEYS)])

        def sync_gets(calls: int) -> None:
            for i in range(calls):
                self.sync.get(KEYS[i % len(KEYS)])

        try:
            transport, protocol = self.runner.run(connect())
            floors: dict[str, list[float]] = {"sync": [], "async": []}
            costs: dict[str, list[tuple[float, float]]] = {"sync": [], "async": []}
            calls = 10_000
            for index in range(rounds):
                for kind in ("sync", "async") if index % 2 == 0 else ("async", "sync"):
                    if kind == "sync":
                        floors[kind].append(sync_echo(0.5))
                        costs[kind].append(cpu_per_call(lambda: sync_gets(calls), calls))
                    else:
                        floors[kind].append(self.runner.run(async_echo(0.5)))
                        costs[kind].append(
                            cpu_per_call(lambda: self.runner.run(aio_gets(calls)), calls)
                        )
            transport.close()
        finally:
            blocking.close()
            os.kill(echo, signal.SIGKILL)
            os.waitpid(echo, 0)
        floor_sync, floor_async = (statistics.median(floors[k]) for k in ("sync", "async"))
        cpu = {k: statistics.median(c for c, _ in costs[k]) * 1e6 for k in costs}
        wall = {k: statistics.median(w for _, w in costs[k]) * 1e6 for k in costs}
        return "\n".join([
            "### Where one task's `get` time goes",
            "",
            f"Medians of {rounds} rounds, alternating. The echo: {len(message)} B messages "
            "to a forked echo server on a Unix socket, one round trip at a time, from a "
            "blocking socket and from an asyncio Protocol in this process's loop (what "
            "asyncio itself costs, with no sharedstate in it). CPU: this process's CPU "
            f"time (time.process_time) over {calls:,} calls.",
            "",
            "| | blocking / sync client | asyncio / sharedstate.aio, 1 task | async / sync |",
            "|---|---|---|---|",
            f"| bare echo round trips/s | {floor_sync:,.0f} | {floor_async:,.0f} | "
            f"{floor_async / floor_sync:.2f} |",
            f"| `get`: wall µs per call | {wall['sync']:.1f} | {wall['async']:.1f} | "
            f"{wall['sync'] / wall['async']:.2f} (as a rate) |",
            f"| `get`: client CPU µs per call | {cpu['sync']:.1f} | {cpu['async']:.1f} | "
            f"{cpu['async'] - cpu['sync']:+.1f} µs |",
            "",
        ])  # fmt: skip

    def profile(self, calls: int) -> str:
        """cProfile of one task's get loop and of the sync client's, ``calls`` calls each."""

        async def loop_gets() -> None:
            get = self.aio.get
            for i in range(calls):
                await get(KEYS[i % len(KEYS)])

        def sync_gets() -> None:
            get = self.sync.get
            for i in range(calls):
                get(KEYS[i % len(KEYS)])

        parts = []
        for what, body in (("sharedstate.aio, 1 task", lambda: self.runner.run(loop_gets())),
                           ("sync client", sync_gets)):  # fmt: skip
            profiler = cProfile.Profile()
            started = time.perf_counter()
            profiler.enable()
            body()
            profiler.disable()
            took = time.perf_counter() - started
            text = io.StringIO()
            stats = pstats.Stats(profiler, stream=text)
            stats.sort_stats("tottime").print_stats(18)
            listing = "\n".join(line for line in text.getvalue().splitlines()
                                if re.match(r"\s+\d", line) or "ncalls" in line)  # fmt: skip
            parts.append(
                f"### {what}: {calls:,} `get`s, {took / calls * 1e6:.1f} µs each under cProfile\n"
                f"\n```\n{listing}\n```\n"
            )
        return "\n".join(parts)


# -- part 4: end to end ------------------------------------------------------------------------

WRK_SCRIPT = """
-- Counts what each wrk thread sends and gets back; done() prints the totals.
sent = 0
answered = 0
failed = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function request() sent = sent + 1; return wrk.format("POST", "/hits") end
function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then failed = failed + 1 end
end
function done(summary, latency, requests)
  local s, a, f = 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent"); a = a + t:get("answered"); f = f + t:get("failed")
  end
  io.write(string.format("COUNTED sent=%d answered=%d failed=%d\\n", s, a, f))
end
"""


@dataclass
class Load:
    rate: float
    sent: int
    answered: int
    failed: int
    socket_errors: str
    cpu_app: float  # seconds of CPU, uvicorn master and workers
    cpu_server: float  # seconds of CPU, the state server


@dataclass
class App:
    system: str
    port: int
    process: subprocess.Popen[bytes]
    server_pid: int
    log: Any
    loads: list[Load] = field(default_factory=list)
    warmup_sent: int = 0
    warmup_answered: int = 0

    @property
    def sent(self) -> int:
        return self.warmup_sent + sum(load.sent for load in self.loads)


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with suppress(OSError), open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    parents: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with suppress(OSError), open(f"/proc/{entry}/stat", "rb") as stat:
                parents[int(stat.read().rsplit(b")", 1)[1].split()[1])].append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _http(port: int, method: str, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def start_app(system: str, workdir: str, address: str, redis_socket: str, server_pid: int,
              loop: str = "asyncio", http: str = "h11") -> App:  # fmt: skip
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAREDSTATE_")}
    env.update(BENCH_AIO_BACKEND=system, BENCH_REDIS_SOCKET=redis_socket,
               SHAREDSTATE_ADDRESS=address,
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")])))  # fmt: skip
    log = open(os.path.join(workdir, f"uvicorn-{system}.log"), "wb")  # noqa: SIM115 (closed in stop_app)
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.aio_app:app", "--workers", str(WORKERS),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--no-access-log", "--loop", loop, "--http", http],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    app = App(system, port, process, server_pid, log)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            stop_app(app)
            with open(os.path.join(workdir, f"uvicorn-{system}.log"), errors="replace") as text:
                raise RuntimeError(f"uvicorn ({system}) exited:\n{text.read()[-3000:]}")
        with suppress(OSError):
            if _http(port, "GET", "/value")[0] == 200:
                return app
        if time.monotonic() > deadline:
            stop_app(app)
            raise RuntimeError(f"uvicorn ({system}) did not answer within 60 s")
        time.sleep(0.1)


def stop_app(app: App) -> None:
    if app.process.poll() is None:
        app.process.send_signal(signal.SIGTERM)
        try:
            app.process.wait(30)
        except subprocess.TimeoutExpired:
            for pid in _tree(app.process.pid):
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            app.process.wait()
    app.log.close()


def wrk(app: App, script: str, seconds: float) -> Load:
    pids = _tree(app.process.pid)
    before = _cpu_seconds(pids), _cpu_seconds([app.server_pid])
    result = subprocess.run(
        ["wrk", "-t", str(WRK_THREADS), "-c", str(CONNECTIONS), "-d", f"{seconds:g}s",
         "-s", script, f"http://127.0.0.1:{app.port}/hits"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    after = _cpu_seconds(pids), _cpu_seconds([app.server_pid])
    rate = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    counted = re.search(r"COUNTED sent=(\d+) answered=(\d+) failed=(\d+)", result.stdout)
    errors = re.search(r"Socket errors: (.*)", result.stdout)
    assert rate, result.stdout + result.stderr
    assert counted, result.stdout + result.stderr
    sent, answered, failed = (int(n) for n in counted.groups())
    return Load(float(rate.group(1)), sent, answered, failed,
                errors.group(1) if errors else "none",
                after[0] - before[0], after[1] - before[1])  # fmt: skip


async def _exact_posts(port: int, total: int, connections: int) -> tuple[list[int], int]:
    """POST /hits ``total`` times over ``connections`` keep-alive connections, waiting
    for every answer: (the counts answered, the non-200 answers)."""
    remaining = [total]
    values: list[int] = []
    failed = [0]
    request = b"POST /hits HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n"

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while remaining[0] > 0:
                remaining[0] -= 1
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                assert length, head
                body = await reader.readexactly(int(length.group(1)))
                if status == 200:
                    values.append(int(body))
                else:
                    failed[0] += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return values, failed[0]


def exact_count(app: App, total: int) -> str:
    """Every POST answered, each count answered once: exactly before+1 .. before+total."""
    before = int(_http(app.port, "GET", "/value")[1])
    values, failed = asyncio.run(_exact_posts(app.port, total, CONNECTIONS))
    after = int(_http(app.port, "GET", "/value")[1])
    expected = list(range(before + 1, before + total + 1))
    if sorted(values) == expected and failed == 0 and after == before + total:
        return "yes"
    return (f"**no**: {len(values):,} answered, {failed} non-200, {len(set(values)):,} distinct, "
            f"count went {before:,} → {after:,}")  # fmt: skip


def end_to_end(workdir: str, servers: dict[str, tuple[str, int]], redis_socket: str,
               rounds: int, seconds: float, loop: str, http: str = "h11") -> str:  # fmt: skip
    """servers: system -> (address, server pid)."""
    if shutil.which("wrk") is None:
        return "## 4. End to end\n\nNot measured: wrk not found (bench/setup.sh installs it).\n"
    script = os.path.join(workdir, "count.lua")
    with open(script, "w") as file:
        file.write(WRK_SCRIPT)
    apps: list[App] = []
    try:
        for system in ("sharedstate", "redis"):
            address, pid = servers[system]
            apps.append(start_app(system, workdir, address, redis_socket, pid, loop, http))
        for app in apps:  # warm up: every worker connects
            warmup = wrk(app, script, 2.0)
            app.warmup_sent, app.warmup_answered = warmup.sent, warmup.answered
        for index in range(rounds):
            for app in apps if index % 2 == 0 else apps[::-1]:
                app.loads.append(wrk(app, script, seconds))
                load = app.loads[-1]
                print(f"  round {index + 1}/{rounds}: {app.system} {load.rate:,.0f} req/s",
                      flush=True)  # fmt: skip
        time.sleep(1.0)  # requests still in flight when wrk stopped
        finals = {app.system: int(_http(app.port, "GET", "/value")[1]) for app in apps}
        exact = {app.system: exact_count(app, EXACT_POSTS) for app in apps}
    finally:
        for app in apps:
            stop_app(app)
    by = {app.system: app for app in apps}
    medians = {s: statistics.median(load.rate for load in a.loads) for s, a in by.items()}
    ratio = medians["sharedstate"] / medians["redis"]
    lines = [
        f"## 4. End to end: FastAPI counter, `uvicorn --workers {WORKERS}`",
        "",
        f"`POST /hits` → `await state.incr(\"hits\")` (`bench/aio_app.py`); uvicorn "
        f"{_version('uvicorn')} ({http}; loop: {loop}), FastAPI "
        f"{_version('fastapi')}, redis-py {_version('redis')}; TCP_NODELAY set on the "
        "workers' connections, as asyncio means to (without it, every keep-alive answer "
        "waits ~40 ms for a delayed ACK: `bench/aio_app.py` says why). "
        f"Load: wrk, {WRK_THREADS} threads, "
        f"{CONNECTIONS} keep-alive connections, {rounds} rounds of {seconds:g} s per backend, "
        "alternating, after 2 s of warm-up each; a Lua script counts the requests wrk sends. "
        "CPU per request: /proc utime+stime of the process tree over the rounds, divided by "
        "the answered requests. wrk stops at its deadline with requests still in flight, "
        "so after its rounds the count must lie between the requests answered and those "
        "sent (warm-up included). Then the exact check: "
        f"{EXACT_POSTS:,} more `POST /hits` over {CONNECTIONS} keep-alive connections from "
        "a Python asyncio client that waits for every answer; the answers must be exactly "
        "the counts before+1 .. before+N, each once, and the count must end at before+N.",
        "",
        "| backend | requests/s, median (range) | × redis.asyncio | app CPU µs/req | "
        "server CPU µs/req | wrk: sent / answered / count | count in range | "
        f"exact check ({EXACT_POSTS:,} POSTs) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system, app in by.items():
        rates = [load.rate for load in app.loads]
        answered = app.warmup_answered + sum(load.answered for load in app.loads)
        measured = sum(load.answered for load in app.loads)
        app_cpu = sum(load.cpu_app for load in app.loads) / measured * 1e6
        server_cpu = sum(load.cpu_server for load in app.loads) / measured * 1e6
        failed = sum(load.failed for load in app.loads)
        in_range = answered <= finals[system] <= app.sent and failed == 0
        lines.append(
            f"| {'sharedstate.aio' if system == 'sharedstate' else 'redis.asyncio'} | "
            f"{medians[system]:,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) | "
            f"{medians[system] / medians['redis']:.2f} | {app_cpu:,.0f} | {server_cpu:,.0f} | "
            f"{app.sent:,} / {answered:,} / {finals[system]:,} | "
            f"{'yes' if in_range else f'**no** ({failed} non-200)'} | {exact[system]} |"
        )
    errors = {app.system: sorted({load.socket_errors for load in app.loads}) for app in apps}
    lines += ["", f"wrk socket errors per round: {errors}.", ""]
    END_TO_END["ratio"] = ratio
    pairs = zip(by["sharedstate"].loads, by["redis"].loads, strict=True)
    END_TO_END["per_round"] = f"{statistics.median(a.rate / b.rate for a, b in pairs):.2f}"
    END_TO_END["exact"] = all(verdict == "yes" for verdict in exact.values())
    return "\n".join(lines)


END_TO_END: dict[str, Any] = {}


def _version(package: str) -> str:
    from importlib.metadata import version

    try:
        return version(package)
    except Exception:
        return "?"


# -- the report ------------------------------------------------------------------------------------


@contextmanager
def redis_server(workdir: str) -> Iterator[Redis]:
    redis = Redis()
    if not redis.available:
        raise SystemExit(f"bench.aio needs redis: {redis.why_unavailable}")
    directory = os.path.join(workdir, "redis")
    os.makedirs(directory)
    redis.start(directory)
    try:
        yield redis
    finally:
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.aio", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 short rounds of each")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of parts 1-3")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per phase, 1-3")
    parser.add_argument("--e2e-rounds", type=int, default=3)
    parser.add_argument("--e2e-seconds", type=float, default=10.0)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--profile", action="store_true", help="add cProfile of the get loops")
    parser.add_argument(
        "--http",
        choices=("h11", "httptools"),
        default="h11",
        help="uvicorn's HTTP implementation, end to end",
    )
    parser.add_argument(
        "--also-uvloop",
        action="store_true",
        help="then parts 1-2 and the echo floor again on uvloop, appended",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of parts 1-3 and of uvicorn (the debug pass: asyncio)",
    )
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    options = parser.parse_args()
    if options.quick:
        options.rounds, options.seconds = 2, 0.5
        if "--e2e-rounds" not in sys.argv:
            options.e2e_rounds = 2
        if "--e2e-seconds" not in sys.argv:
            options.e2e_seconds = 3.0
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # clean up servers
    for name in [k for k in os.environ if k.startswith("SHAREDSTATE_")]:
        del os.environ[name]
    started = time.time()
    load_before = os.getloadavg()[0]
    workdir = tempfile.mkdtemp(prefix="ss-bench-aio-", dir="/tmp")
    sections: list[str] = []
    try:
        with server() as ours, redis_server(workdir) as redis:
            print("1-3. one process, one event loop", flush=True)
            bench = InProcess(ours.address, redis.socket, options.seconds, options.loop)
            try:
                phases = bench.measure(options.rounds)
                connecting = bench.connection_stalls(workdir)
                print("3. debug mode", flush=True)
                slow, other = bench.debug_pass(options.seconds)
                breakdown = bench.where_time_goes(workdir, max(options.rounds, 3))
                profile = bench.profile(20_000) if options.profile else ""
            finally:
                bench.close()
            sections += in_process_report(phases, connecting, slow, other, bench.notes, options)
            sections.append(breakdown)
            if not options.skip_e2e:
                print("4. end to end", flush=True)
                servers = {"sharedstate": (ours.address, ours.pid),
                           "redis": (redis.socket, redis.process.pid)}  # fmt: skip
                sections.append(end_to_end(workdir, servers, redis.socket, options.e2e_rounds,
                                           options.e2e_seconds, options.loop,
                                           options.http))  # fmt: skip
            if options.also_uvloop:
                print("1-2 again, on uvloop", flush=True)
                again = InProcess(ours.address, redis.socket, options.seconds, "uvloop")
                try:
                    uv_phases = again.measure(options.rounds)
                    uv_breakdown = again.where_time_goes(workdir, max(options.rounds, 3))
                finally:
                    again.close()
                table = targets_table(uv_phases, end_to_end=False).replace(
                    "## Targets", f"## Parts 1-2 again on uvloop {_version('uvloop')}: targets"
                )
                sections += [table, phases_table(uv_phases, again.notes, "### On uvloop"),
                             uv_breakdown]  # fmt: skip
            if profile:
                title = "## Where one task's `get` spends its time (cProfile)"
                sections.append(f"{title}\n\n{profile}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    took = time.time() - started
    command = " ".join(["python -m bench.aio", *sys.argv[1:]])
    header = (
        "# sharedstate.aio, the asyncio client\n\n"
        f"Event loop: {options.loop}"
        + (
            f" (uvloop {_version('uvloop')}; the debug-mode pass uses asyncio's own loop)"
            if options.loop == "uvloop"
            else " (the standard library's)"
        )
        + ". "
        f"`{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}, sharedstate {_sharedstate_version()} (commit "
        f"{_commit()}); took {took / 60:.1f} min. Each figure is the median of "
        f"{options.rounds} rounds of {options.seconds:g} s (end to end: {options.e2e_rounds} "
        f"of {options.e2e_seconds:g} s), rounds alternating in order; ratios are measured "
        "in the same run, as this machine's speed varies. Load average (1 min) "
        f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on "
        f"{os.cpu_count()} CPUs: other work shares the machine, so single rounds vary.\n"
    )
    report = "\n".join([header, targets_table(phases), *sections])
    print()
    print(report)
    os.makedirs(options.out, exist_ok=True)
    with open(os.path.join(options.out, "aio.md"), "w", encoding="utf-8") as out:
        out.write(report)


def _loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop  # type: ignore[no-any-return]
    return None


def _sharedstate_version() -> str:
    import sharedstate

    return str(sharedstate.__version__)


def _commit() -> str:
    done = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return done.stdout.strip() or "?"


def _find(phases: list[Phase], name: str, system: str) -> Phase:
    return next(p for p in phases if p.name == name and p.system == system)


def targets_table(phases: list[Phase], end_to_end: bool = True) -> str:
    def ratio(a: tuple[str, str], b: tuple[str, str]) -> float:
        return _find(phases, *a).median / _find(phases, *b).median

    def per_round(a: tuple[str, str], b: tuple[str, str]) -> str:
        pairs = zip(_find(phases, *a).rates, _find(phases, *b).rates, strict=True)
        return f"{statistics.median(x / y for x, y in pairs):.2f}"

    ss = "sharedstate"
    get1, get64 = ("`get`, 1 task", ss), (f"`get`, {MANY} tasks", ss)
    incr1, incr64 = ("`incr`, 1 task", ss), (f"`incr`, {MANY} tasks", ss)
    sync1, get1np = ("sync client `get`, 1 thread", ss), ("`get`, 1 task, no probe", ss)
    checks: list[tuple[str, float | None, float, str, str]] = [
        (f"`get`, {MANY} tasks vs 1 task, one loop", ratio(get64, get1), 3.0, "×",
         per_round(get64, get1)),
        (f"`incr`, {MANY} tasks vs 1 task, one loop", ratio(incr64, incr1), 3.0, "×",
         per_round(incr64, incr1)),
        ("`get`, 1 task vs the sync client, same process", ratio(get1np, sync1), 0.9, "×",
         per_round(get1np, sync1)),
        ("(the same, with the stall probe running)", ratio(get1, sync1), 0.9, "×",
         per_round(get1, sync1)),
        ("end to end, FastAPI counter vs redis.asyncio", END_TO_END.get("ratio"), 1.2, "×",
         END_TO_END.get("per_round", "")),
    ]  # fmt: skip
    if not end_to_end:
        checks = checks[:-1]
    lines = [
        "## Targets",
        "",
        "Measured: the ratio of the medians; in brackets the median of the per-round ratios "
        "(the two run back to back in each round, so they share the machine's load).",
        "",
        "| measure | measured | target | met |",
        "|---|---|---|---|",
    ]
    for name, value, target, unit, paired in checks:
        shown = "not measured" if value is None else f"{value:.2f} {unit} ({paired})"
        met = "" if value is None else ("yes" if value >= target else "**no**")
        lines.append(f"| {name} | {shown} | ≥ {target:g} {unit} | {met} |")
    if "exact" in END_TO_END and end_to_end:
        lines.append(
            f"| end to end: {EXACT_POSTS:,} POSTs answered counts before+1..before+N, each once | "
            f"{'exact' if END_TO_END['exact'] else 'not exact'} | exact | "
            f"{'yes' if END_TO_END['exact'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def in_process_report(
    phases: list[Phase],
    connecting: list[tuple[str, float, list[float]]],
    slow: dict[str, list[tuple[float, str]]],
    other: list[str],
    notes: list[str],
    options: argparse.Namespace,
) -> list[str]:
    rows = [
        phases_table(
            phases,
            notes,
            "## 1-3. One process, one event loop (100 B values, " "1,000 keys; Unix sockets)",
        ),  # fmt: skip
        "### Stalls while connecting",
        "",
        "| what | time per call | stall p99 ms | stall max ms |",
        "|---|---|---|---|",
    ]
    for what, took, overshoots in connecting:
        shown = f"{took * 1e6:,.2f} µs" if took < 1e-3 else f"{took * 1e3:,.1f} ms"
        rows.append(f"| {what} | {shown} {stall_cells(overshoots)}")
    return _debug_rows(rows, slow, other, options)


def phases_table(phases: list[Phase], notes: list[str], title: str) -> str:
    rows = [
        title,
        "",
        f"Stall: how late a probe task sleeping {PERIOD * 1e3:g} ms wakes up, pooled over the "
        "rounds (p99 and max, ms). With 64 tasks it includes waiting for the other tasks' "
        "turns in the loop, not only time blocked in the client.",
        "",
        "| measure | sharedstate.aio ops/s (range) | stall p99 | stall max | "
        "redis.asyncio ops/s (range) | stall p99 | stall max | sharedstate / redis |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys(p.name for p in phases if p.system != "none"))
    for name in names:
        ours, theirs = _find(phases, name, "sharedstate"), _find(phases, name, "redis")
        rows.append(
            f"| {name} | {ours.median:,.0f} ({ours.spread}) {stall_cells(ours.overshoots)} "
            f"{theirs.median:,.0f} ({theirs.spread}) {stall_cells(theirs.overshoots)} "
            f"{ours.median / theirs.median:.2f} |"
        )
    idle = _find(phases, "idle loop (probe only)", "none")
    rows += [
        f"| idle loop, probe only (the timer's own lateness) | "
        f"{stall_cells(idle.overshoots)} | | | |",
        "",
        "Counts after the `incr` phases (read with the sync clients):",
        *notes,
        "",
    ]
    return "\n".join(rows)


def _debug_rows(
    rows: list[str],
    slow: dict[str, list[tuple[float, str]]],
    other: list[str],
    options: argparse.Namespace,
) -> list[str]:
    rows += [
        "",
        f"### asyncio debug mode, `slow_callback_duration` = {SLOW_CALLBACK * 1e3:g} ms",
        "",
        f"Each system: `get` and `incr` with 1 and {MANY} tasks, {options.seconds:g} s each, "
        "then `aclose()`, a `get` that reconnects, `aclose()`; in a new event loop in "
        "debug mode (so connecting is included).",
        "",
        "Steps of the bench's own driver task (`debug_pass.<locals>.work`, which creates "
        f"the {MANY} tasks, slow in debug mode) are counted apart; the rest run the client: "
        "the worker tasks' steps and the client's own callbacks.",
        "",
        "| system | callbacks logged as slow (the bench's own) | slowest | what it was |",
        "|---|---|---|---|",
    ]
    for system, found in slow.items():
        label = "sharedstate.aio" if system == "sharedstate" else "redis.asyncio"
        ours = [(took, handle) for took, handle in found if "debug_pass.<locals>.work" in handle]
        client = [(took, handle) for took, handle in found if (took, handle) not in ours]
        if client:
            took, handle = client[0]
            rows.append(f"| {label} | {len(client)} ({len(ours)}) | {took * 1e3:.1f} ms | "
                        f"{_describe(handle)} |")  # fmt: skip
        else:
            rows.append(f"| {label} | 0 ({len(ours)}) | | |")
        if len(client) > 1:
            SLOWEST[system] = [(took, _describe(handle)) for took, handle in client[1:6]]
    for system, found in SLOWEST.items():
        rows.append("")
        rows.append(f"Next slowest, {system}: " + "; ".join(
            f"{took * 1e3:.1f} ms {handle}" for took, handle in found))  # fmt: skip
    if other:
        rows += ["", "Other messages in debug mode:", ""]
        rows += [f"- {line}" for line in dict.fromkeys(other)][:20]
    return ["\n".join(rows) + "\n"]


SLOWEST: dict[str, list[tuple[float, str]]] = {}


def _describe(handle: str) -> str:
    """A logged handle, short: a task step by its coroutine and where it was, else as is."""
    task = re.match(r"<Task \w+ name='[^']*' coro=<(.+?\(\))(?:.*?running at ([^ >]+))?", handle)
    if task:
        where = task.group(2)
        if where:
            shown = os.path.relpath(where, REPO) if where.startswith("/") else where
            where = f", suspended at {shown}"
        else:
            where = ""
        return f"a step of task `{task.group(1)}`{where}".replace("|", "\\|")
    return "`" + handle[:160].replace("|", "\\|") + "`"


if __name__ == "__main__":
    main()
