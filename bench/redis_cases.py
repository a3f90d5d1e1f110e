"""One client process of ``python -m bench.redis``: the cases it times, both sides of each.

The parent starts one of these per redis-py parser (hiredis, or the pure-Python one with
hiredis hidden) and drives it over stdin/stdout, one JSON line per command: "time this
side of this case for 50 ms", taking turns between the processes and the sides, so all
of them meet the same load on a shared machine, each with its connections kept warm.

Each case has a sharedstate side and a raw redis-py side that does what an app would
write by hand. Values are pickled on the raw side too: sharedstate pickles them, and a
fair baseline stores the same Python objects, not bare bytes.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import json
import os
import pickle
import pstats
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

VALUE = b"v" * 100  # the 100 B value of the get case (pickled: 117 B)
KEYS = [f"k{i}" for i in range(1000)]
COUNTERS = [f"n{i}" for i in range(64)]
CONFIG = {
    "db": {"host": "db.internal", "port": 5432, "name": "app", "pool": 10},
    "cache": {"ttl": 300, "backend": "redis"},
    "features": ["search", "export"],
}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX_PRINTED = "@@ "  # marks the protocol's lines on stdout; anything else is a log line

Call = Callable[[int], Any]
AsyncCall = Callable[[int], Awaitable[Any]]


@dataclass
class Case:
    name: str
    sides: dict[str, Call | AsyncCall]  # "sharedstate", "redis-py"
    is_async: bool = False


def hide_hiredis() -> None:
    """Make ``import hiredis`` fail, so redis-py picks its pure-Python parser."""
    sys.modules["hiredis"] = None  # type: ignore[assignment]


class Worker:
    def __init__(self, url: str, raw_prefix: str, server_pid: int) -> None:
        import redis
        import redis.asyncio
        import redis.utils

        from sharedstate import get_shared_state
        from sharedstate.aio import get_shared_state as aio_get_shared_state

        self.hiredis = bool(redis.utils.HIREDIS_AVAILABLE)
        self.server_pid = server_pid
        self.state = get_shared_state(address=url, start=False)
        raw_url = url.replace("redis+unix://", "unix://", 1)  # redis-py's name for it
        self.redis = redis.Redis.from_url(raw_url)
        self.meter = redis.Redis.from_url(raw_url)  # reads INFO; its own connection
        self.runner = asyncio.Runner()
        self.aio = self.runner.run(aio_get_shared_state(address=url, start=False))
        self.aredis = redis.asyncio.Redis.from_url(raw_url)
        self.raw = raw_prefix
        self.raw_lock = self.redis.lock(raw_prefix + "lock", timeout=10)
        self.calls: dict[tuple[str, str], int] = {}  # (case, side) -> calls made, for checks
        self._fill()
        self.cases = self._cases()

    def _fill(self) -> None:
        self.state.clear()
        self.state.set_many(dict.fromkeys(KEYS, VALUE))
        self.state.set("cfg", CONFIG)
        self.state.set("total", 0)
        raw = self.raw
        self.redis.delete(*[raw + name for name in [*COUNTERS, "cfg", "total", "lock"]])
        self.redis.delete(*[raw + "a" + name for name in COUNTERS])
        self.redis.mset({raw + key: pickle.dumps(VALUE) for key in KEYS})
        self.redis.set(raw + "cfg", pickle.dumps(CONFIG))
        self.redis.set(raw + "total", pickle.dumps(0))

    def _cases(self) -> list[Case]:
        import redis

        state, r, raw = self.state, self.redis, self.raw
        raw_keys = [raw + key for key in KEYS]
        raw_counters = [raw + name for name in COUNTERS]
        raw_cfg, raw_total = raw + "cfg", raw + "total"
        loads, dumps = pickle.loads, pickle.dumps
        aio, aredis = self.aio, self.aredis
        aio_counters = ["a" + name for name in COUNTERS]
        raw_aio_counters = [raw + name for name in aio_counters]

        def raw_nested(n: int) -> None:  # the optimistic-transaction recipe of redis-py's docs
            with r.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(raw_cfg)
                        config = loads(pipe.get(raw_cfg))
                        config["db"]["port"] = n
                        pipe.multi()
                        pipe.set(raw_cfg, dumps(config))
                        pipe.execute()
                        return
                    except redis.WatchError:
                        continue

        def ss_locked(n: int) -> None:
            with state.lock.hold():
                value = state.get("total")
                state.set("total", value + 1)

        def raw_locked(n: int) -> None:
            with self.raw_lock:
                value = loads(r.get(raw_total))
                r.set(raw_total, dumps(value + 1))

        async def aio_get(n: int) -> Any:
            return await aio.get(KEYS[n % 1000])

        async def aredis_get(n: int) -> Any:
            return loads(await aredis.get(raw_keys[n % 1000]))

        async def aio_incr(n: int) -> Any:
            return await aio.incr(aio_counters[n % 64])

        async def aredis_incr(n: int) -> Any:
            return await aredis.incr(raw_aio_counters[n % 64])

        return [
            Case("get", {
                "sharedstate": lambda n: state.get(KEYS[n % 1000]),
                "redis-py": lambda n: loads(r.get(raw_keys[n % 1000])),
            }),
            Case("incr", {
                "sharedstate": lambda n: state.incr(COUNTERS[n % 64]),
                "redis-py": lambda n: r.incr(raw_counters[n % 64]),
            }),
            Case("nested", {
                "sharedstate": lambda n: state.set_in(("cfg", "db", "port"), n),
                "redis-py": raw_nested,
            }),
            Case("locked", {"sharedstate": ss_locked, "redis-py": raw_locked}),
            Case("async get", {"sharedstate": aio_get, "redis-py": aredis_get}, is_async=True),
            Case("async incr", {"sharedstate": aio_incr, "redis-py": aredis_incr}, is_async=True),
        ]  # fmt: skip

    # -- measuring ---------------------------------------------------------------------------

    def _server_cpu(self) -> float:
        with open(f"/proc/{self.server_pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _commands(self) -> dict[str, int]:
        stats = self.meter.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(each["calls"]) for name, each in stats.items()}

    def time_slice(self, name: str, side: str, seconds: float) -> list[float]:
        """Call one side of a case for ``seconds``: [calls, seconds, client CPU s,
        redis-server CPU s]."""
        case = next(case for case in self.cases if case.name == name)
        call = case.sides[side]
        cpu, server_cpu, clock = time.process_time(), self._server_cpu(), time.perf_counter
        started = clock()
        if case.is_async:
            done = self.runner.run(_async_loop(call, started + seconds))
        else:
            done = _sync_loop(call, started + seconds)
        elapsed = clock() - started
        self.calls[name, side] = self.calls.get((name, side), 0) + done
        return [done, elapsed, time.process_time() - cpu, self._server_cpu() - server_cpu]

    def commands_per_call(self, calls: int = 200) -> dict[str, dict[str, dict[str, float]]]:
        """The commands Redis ran per call, by name (a script's own included, as Redis
        counts them), from INFO commandstats before and after ``calls`` calls."""
        counted: dict[str, dict[str, dict[str, float]]] = {}
        for case in self.cases:
            counted[case.name] = {}
            for side in case.sides:
                before = self._commands()
                if case.is_async:
                    self.runner.run(_async_calls(case.sides[side], calls))
                else:
                    for n in range(calls):
                        case.sides[side](n)
                self.calls[case.name, side] = self.calls.get((case.name, side), 0) + calls
                after = self._commands()
                counted[case.name][side] = {
                    name: (after[name] - before.get(name, 0)) / calls
                    for name in sorted(after)
                    if name != "info" and after[name] != before.get(name, 0)
                }
        return counted

    def profile(self, name: str, calls: int) -> dict[str, Any]:
        """cProfile of ``calls`` calls of one case, each side: µs per call (under the
        profiler) by whose code it was spent in, and sharedstate's top functions."""
        case = next(case for case in self.cases if case.name == name)
        found: dict[str, Any] = {}
        for side, call in case.sides.items():
            profiler = cProfile.Profile()
            profiler.enable()
            if case.is_async:
                self.runner.run(_async_calls(call, calls))
            else:
                for n in range(calls):
                    call(n)
            profiler.disable()
            self.calls[name, side] = self.calls.get((name, side), 0) + calls
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            found[side] = {name: total / calls * 1e6 for name, total in _spent_in(stats).items()}
            if side == "sharedstate":
                stats.sort_stats("tottime").print_stats(20)
                found["top"] = _strip_paths(out.getvalue())
        return found

    def checks(self) -> dict[str, str]:
        """Counts that must add up: increments and locked updates against the calls made."""
        raw, r = self.raw, self.redis
        found = {
            ("incr", "sharedstate"): sum(self.state.get_many(COUNTERS).values()),
            ("incr", "redis-py"): sum(int(v) for v in r.mget([raw + n for n in COUNTERS])),
            ("locked", "sharedstate"): self.state.get("total"),
            ("locked", "redis-py"): pickle.loads(r.get(raw + "total")),
            ("async incr", "sharedstate"): sum(
                self.state.get_many(["a" + n for n in COUNTERS]).values()
            ),
            ("async incr", "redis-py"): sum(
                int(v) for v in r.mget([raw + "a" + n for n in COUNTERS])
            ),
        }
        return {
            f"{case} ({side})": "right"
            if found[case, side] == self.calls.get((case, side), 0)
            else f"WRONG: {found[case, side]:,} counted, {self.calls.get((case, side), 0):,} made"
            for case, side in found
        }

    def close(self) -> None:
        self.runner.run(self.aio.aclose())
        self.runner.run(self.aredis.aclose())
        self.runner.close()
        self.state.clear()
        self.redis.close()
        self.meter.close()


def _sync_loop(call: Call, deadline: float) -> int:
    done, clock = 0, time.perf_counter
    while clock() < deadline:
        call(done)
        done += 1
    return done


async def _async_loop(call: AsyncCall, deadline: float) -> int:
    done, clock = 0, time.perf_counter
    while clock() < deadline:
        await call(done)
        done += 1
    return done


async def _async_calls(call: AsyncCall, calls: int) -> None:
    for n in range(calls):
        await call(n)


def _spent_in(stats: pstats.Stats) -> dict[str, float]:
    """Own time (s) of the profiled functions, by where they live."""
    spent: dict[str, float] = {}
    for (filename, _, function), row in stats.stats.items():  # type: ignore[attr-defined]
        if "sharedstate/" in filename:
            where = "sharedstate"
        elif "/redis/" in filename:
            where = "redis-py"
        elif function in ("<method 'sendall' of '_socket.socket' objects>",
                          "<method 'recv' of '_socket.socket' objects>",
                          "<method 'recv_into' of '_socket.socket' objects>"):  # fmt: skip
            where = "socket send/recv"
        elif "pickle" in function or "bench/" in filename:
            where = "pickle, the bench's loop"
        else:
            where = "other (builtins, stdlib)"
        spent[where] = spent.get(where, 0.0) + row[2]
    spent["total"] = sum(spent.values())
    return spent


def _strip_paths(text: str) -> str:
    """Name files in profile lines from their package (…/site-packages/redis/x.py -> redis/x.py)."""
    text = re.sub(r"/\S*/(site-packages|lib/python3\.\d+)/", "", text)
    return text.replace(REPO + "/", "")


def serve(url: str, raw_prefix: str, server_pid: int) -> None:
    """Answer the parent's commands, one JSON line in, one line out, until stdin closes."""
    worker = Worker(url, raw_prefix, server_pid)
    reply({"hiredis": worker.hiredis, "cases": [case.name for case in worker.cases]})
    for line in sys.stdin:
        command = json.loads(line)
        what = command["do"]
        if what == "slice":
            reply(worker.time_slice(command["case"], command["side"], command["seconds"]))
        elif what == "commands":
            reply(worker.commands_per_call())
        elif what == "profile":
            reply(worker.profile(command["case"], command["calls"]))
        elif what == "checks":
            reply(worker.checks())
    worker.close()


def reply(payload: Any) -> None:
    sys.stdout.write(PREFIX_PRINTED + json.dumps(payload) + "\n")
    sys.stdout.flush()
