"""python -m bench.redis: sharedstate on a Redis address against raw redis-py, same server.

    python -m bench.redis [--quick] [--rounds 9] [--seconds 1] [--unix] [--out bench/results]

Starts its own redis-server (loopback TCP port, ``requirepass``, no persistence) in a
private temporary directory and stops it at the end, also on Ctrl-C or an error. One
client process per redis-py parser (hiredis when it is installed, and the pure-Python
parser with hiredis hidden) times, one call after another, each case's two sides:

- ``get`` of a 100 B value: ``state.get(k)`` against ``pickle.loads(r.get(prefix + k))``
  (values stored pickled on both sides, as sharedstate stores them). Target: at least 0.8 times.
- ``incr``: ``state.incr(k)`` against ``r.incr(k)``. Target: at least 0.9 times.
- ``nested``: ``state.set_in(("cfg", "db", "port"), n)`` against redis-py's optimistic
  transaction (WATCH, GET, unpickle, change, pickle, MULTI, SET, EXEC, retried on a
  WatchError).
- ``locked``: ``with state.lock.hold():`` get then set, against ``r.lock(name,
  timeout=10)`` around the same get and set.
- ``async get`` / ``async incr``: ``sharedstate.aio`` against ``redis.asyncio``, 1 task.

Within a round, the (parser, side) pairs of a case take turns every 50 ms, so all meet
the same load on a shared machine; the order of cases alternates between rounds. Every
figure is a median of the rounds. Also counted: the CPU each call costs the client and
redis-server, the Redis commands each call sends, and counters that must add up. A
missed target's sharedstate side is profiled (cProfile) into the report. Prints a
markdown report and writes it to ``--out``/redis.md. Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.redis_cases import PREFIX_PRINTED, hide_hiredis, serve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = {"get": 0.8, "incr": 0.9}
SIDES = ("sharedstate", "redis-py")
PROFILE_CALLS = 20_000
SLICE = 0.05  # s: how often the measured (parser, side) pairs take turns
URL_VARIABLE = "BENCH_REDIS_URL"  # how a worker learns the server's address

Timing = dict[str, float]  # rate, client_us, server_us
Round = dict[str, dict[str, Timing]]  # case -> side -> timing


class WorkerProcess:
    """A ``bench.redis --worker`` child, spoken to one JSON line at a time."""

    def __init__(self, parser: str, url: str, server_pid: int) -> None:
        self.parser = parser
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHAREDSTATE_")}
        env["SHAREDSTATE_PREFIX"] = f"bench-ss-{parser}:"
        env[URL_VARIABLE] = url  # not in argv, where any process listing shows the password
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.redis", "--worker", "--parser", parser,
             "--raw-prefix", f"bench-raw-{parser}:", "--server-pid", str(server_pid)],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.hello = self._read()

    def ask(self, **command: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def _read(self) -> Any:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(PREFIX_PRINTED):
                return json.loads(line[len(PREFIX_PRINTED) :])
            sys.stderr.write(line)
        raise RuntimeError(f"the {self.parser} worker exited ({self.process.wait(30)})")

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # the worker cleans up and exits
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)


class Results:
    def __init__(self, parsers: list[str]) -> None:
        self.rounds: dict[str, list[Round]] = {parser: [] for parser in parsers}

    def cases(self) -> list[str]:
        first = next(iter(self.rounds.values()))[0]
        order = ["get", "incr", "nested", "locked", "async get", "async incr"]
        return [case for case in order if case in first]

    def values(self, parser: str, case: str, side: str, what: str = "rate") -> list[float]:
        return [each[case][side][what] for each in self.rounds[parser]]

    def median(self, parser: str, case: str, side: str, what: str = "rate") -> float:
        return statistics.median(self.values(parser, case, side, what))

    def ratio(self, parser: str, case: str) -> tuple[float, float]:
        """sharedstate / redis-py: of the medians, and the median of per-round ratios."""
        ours, theirs = self.values(parser, case, SIDES[0]), self.values(parser, case, SIDES[1])
        per_round = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
        return statistics.median(ours) / statistics.median(theirs), per_round

    def met(self, parser: str, case: str) -> bool:
        return min(self.ratio(parser, case)) >= TARGETS[case]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 0.3 s")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=1.0, help="per side, case and round")
    parser.add_argument("--unix", action="store_true", help="Redis's Unix socket, not TCP")
    parser.add_argument("--no-hiredis", action="store_true", help="the pure-Python parser only")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parser", help=argparse.SUPPRESS)
    parser.add_argument("--raw-prefix", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        if options.parser == "python":
            hide_hiredis()
        serve(os.environ[URL_VARIABLE], options.raw_prefix, options.server_pid)
        return
    if options.quick:
        options.rounds, options.seconds = 2, 0.3
    report = run(options)
    print(report)
    os.makedirs(options.out, exist_ok=True)
    with open(os.path.join(options.out, "redis.md"), "w") as file:
        file.write(report)


def run(options: argparse.Namespace) -> str:
    sys.path.insert(0, REPO)  # tests.support, when run from elsewhere
    from tests.support.redis_servers import RedisServer, why_no_redis_server

    if why := why_no_redis_server():
        raise SystemExit(why)
    parsers = ["python"]
    if not options.no_hiredis and importlib.util.find_spec("hiredis") is not None:
        parsers.append("hiredis")
    started, load_before = time.time(), os.getloadavg()[0]
    workdir = tempfile.mkdtemp(prefix="ss-bench-redis-", dir="/tmp")
    server = RedisServer(os.path.join(workdir, "redis"))
    workers: list[WorkerProcess] = []
    try:
        server.start()
        assert server.process is not None
        for name in parsers:
            url = server.unix_url() if options.unix else server.url()
            workers.append(WorkerProcess(name, url, server.process.pid))
        results = Results(parsers)
        cases = workers[0].hello["cases"]
        one_round(workers, cases, 0, 0.2)  # warm up: connections, scripts, caches
        for index in range(options.rounds):
            for parser, found in one_round(workers, cases, index, options.seconds).items():
                results.rounds[parser].append(found)
            print(f"  round {index + 1}/{options.rounds}: " + "; ".join(
                f"{parser} get {each[-1]['get']['sharedstate']['rate']:,.0f}"
                f" vs {each[-1]['get']['redis-py']['rate']:,.0f}/s"
                for parser, each in results.rounds.items()), flush=True)  # fmt: skip
        commands = {worker.parser: worker.ask(do="commands") for worker in workers}
        profiles: dict[str, Any] = {}
        for case in TARGETS:  # profile a miss on the parser `sharedstate[redis]` installs
            if not results.met("python", case):
                profiles[case] = workers[0].ask(do="profile", case=case, calls=PROFILE_CALLS)
        checks = {worker.parser: worker.ask(do="checks") for worker in workers}
        versions = _versions(server.url())
        hellos = {worker.parser: worker.hello for worker in workers}
    finally:
        for worker in workers:
            worker.stop()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    header = _header(options, started, load_before, versions, hellos)
    return render(results, commands, checks, profiles, header)


def one_round(
    workers: list[WorkerProcess], cases: list[str], index: int, seconds: float
) -> dict[str, Round]:
    """Every case for ``seconds`` per side and parser. The (parser, side) pairs take
    turns in slices of SLICE s, starting with a different one each turn and reversing
    every other turn, so all meet the same moments of the machine's load."""
    turns = max(1, round(seconds / SLICE))
    pairs = [(worker, side) for worker in workers for side in SIDES]
    found: dict[str, Round] = {worker.parser: {} for worker in workers}
    for case in cases if index % 2 == 0 else cases[::-1]:
        sums = {(worker.parser, side): [0.0] * 4 for worker, side in pairs}
        for turn in range(turns):
            start = turn % len(pairs)
            order = pairs[start:] + pairs[:start]
            for worker, side in order if (index + turn) % 2 == 0 else order[::-1]:
                got = worker.ask(do="slice", case=case, side=side, seconds=seconds / turns)
                total = sums[worker.parser, side]
                sums[worker.parser, side] = [a + b for a, b in zip(total, got, strict=True)]
        for (parser, side), (done, elapsed, client, server) in sums.items():
            found[parser].setdefault(case, {})[side] = {
                "rate": done / elapsed,
                "client_us": client / done * 1e6,
                "server_us": server / done * 1e6,
            }
    return found


def _versions(url: str) -> dict[str, str]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        server_version = str(client.info("server")["redis_version"])
    finally:
        client.close()
    spec = importlib.util.find_spec("hiredis")
    hiredis = "not installed"
    if spec is not None:
        from importlib.metadata import version

        hiredis = version("hiredis")
    return {"redis-server": server_version, "redis-py": redis.__version__, "hiredis": hiredis}


def _header(
    options: argparse.Namespace,
    started: float,
    load_before: float,
    versions: dict[str, str],
    hellos: dict[str, Any],
) -> str:
    import sharedstate

    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    seen = ", ".join(f"{parser}: hiredis {'on' if hello['hiredis'] else 'off'}"
                     for parser, hello in hellos.items())  # fmt: skip
    return "\n".join([
        "# sharedstate on Redis, against raw redis-py on the same server",
        "",
        f"`python -m bench.redis {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, sharedstate {sharedstate.__version__} "
        f"(commit {commit or '?'}), redis-server {versions['redis-server']}, redis-py "
        f"{versions['redis-py']}, hiredis {versions['hiredis']} (workers: {seen}); took "
        f"{(time.time() - started) / 60:.1f} min. Load average (1 min) {load_before:.1f} at "
        f"the start, {os.getloadavg()[0]:.1f} at the end.",
        "",
        f"One client process, one call after another, over "
        f"{'a Unix socket' if options.unix else 'loopback TCP'} with a password. "
        f"Each figure is the median of {options.rounds} rounds of {options.seconds:g} s per "
        "side and parser; within a round the (parser, side) pairs of a case take turns "
        "every 50 ms, in a rotating order. A ratio is sharedstate / "
        "redis-py: of the medians, and in brackets the median of the per-round ratios.",
        "",
    ])  # fmt: skip


def render(
    results: Results,
    commands: dict[str, dict[str, dict[str, float]]],
    checks: dict[str, dict[str, str]],
    profiles: dict[str, Any],
    header: str,
) -> str:
    parsers = list(results.rounds)
    lines = [header, "## Targets", "",
             "Met: both ratios (of the medians, and the median per round) at or above "
             "the target.", "",
             "| case | parser | sharedstate ops/s | redis-py ops/s | ratio | target | met |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for case, target in TARGETS.items():
        for parser in parsers:
            of_medians, per_round = results.ratio(parser, case)
            met = "yes" if results.met(parser, case) else "**no**"
            lines.append(
                f"| `{case}` | {parser} | {results.median(parser, case, SIDES[0]):,.0f} | "
                f"{results.median(parser, case, SIDES[1]):,.0f} | {of_medians:.2f} × "
                f"({per_round:.2f}) | ≥ {target} × | {met} |"
            )
    lines += ["", "## Every case", "",
              "CPU per call: the client process's (all its threads), and redis-server's "
              "(from /proc, 10 ms ticks).", "",
              "| case | parser | sharedstate ops/s (range) | redis-py ops/s (range) | ratio | "
              "client CPU µs/call (ss / raw) | redis-server CPU µs/call (ss / raw) |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for case in results.cases():
        for parser in parsers:
            cells = []
            for side in SIDES:
                rates = results.values(parser, case, side)
                spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
                cells.append(f"{statistics.median(rates):,.0f} ({spread})")
            of_medians, per_round = results.ratio(parser, case)
            cpu = " / ".join(f"{results.median(parser, case, s, 'client_us'):.1f}" for s in SIDES)
            srv = " / ".join(f"{results.median(parser, case, s, 'server_us'):.1f}" for s in SIDES)
            lines.append(f"| `{case}` | {parser} | {cells[0]} | {cells[1]} | {of_medians:.2f} × "
                         f"({per_round:.2f}) | {cpu} | {srv} |")  # fmt: skip
    lines += ["", "## Redis commands per call", "",
              "What Redis ran per call (INFO commandstats over 200 calls; the commands a "
              "Lua script runs are counted too, so this is work, not round trips).", "",
              "| case | sharedstate | redis-py |", "|---|---|---|"]  # fmt: skip
    for case in results.cases():
        sent = [_commands_text(commands[parsers[0]][case][side]) for side in SIDES]
        lines.append(f"| `{case}` | {sent[0]} | {sent[1]} |")
    if "hiredis" in parsers:
        lines += ["", "## hiredis", "",
                  "ops/s with hiredis / ops/s with redis-py's pure-Python parser (of the "
                  "medians), each side on its own.", "",
                  "| case | sharedstate | redis-py |", "|---|---|---|"]  # fmt: skip
        for case in results.cases():
            gains = [results.median("hiredis", case, side) / results.median("python", case, side)
                     for side in SIDES]  # fmt: skip
            lines.append(f"| `{case}` | {gains[0]:.2f} × | {gains[1]:.2f} × |")
    lines += ["", "## Checks", "", "Counters after the run against the calls made:", ""]
    for parser, found in checks.items():
        lines.append(f"- {parser}: " + "; ".join(f"{what} {v}" for what, v in found.items()))
    for case, found in profiles.items():
        client, server = (
            [results.median("python", case, side, what) for side in SIDES]
            for what in ("client_us", "server_us")
        )
        lines += ["", f"## Profile: `{case}` (missed its target)", "",
                  f"Per call (pure-Python parser, medians above), sharedstate cost the client "
                  f"{client[0] - client[1]:+.1f} µs of CPU ({client[0]:.1f} against "
                  f"{client[1]:.1f}) and redis-server {server[0] - server[1]:+.1f} µs "
                  f"({server[0]:.1f} against {server[1]:.1f}); Redis ran "
                  f"{_commands_text(commands['python'][case]['sharedstate'])} against "
                  f"{_commands_text(commands['python'][case]['redis-py'])}.", "",
                  f"cProfile of {PROFILE_CALLS:,} calls of each side, pure-Python parser; "
                  "µs per call under the profiler (which inflates Python code more than "
                  "waiting), by whose code the time was spent in:", "",
                  "| where | sharedstate | redis-py |", "|---|---|---|"]  # fmt: skip
        for where in sorted(found["sharedstate"] | found["redis-py"], key=_last_total):
            cells = [f"{found[side].get(where, 0.0):.1f}" for side in SIDES]
            lines.append(f"| {where} | {cells[0]} | {cells[1]} |")
        lines += ["", "sharedstate's side, the top functions by own time:", "",
                  "```", found["top"].strip(), "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _last_total(where: str) -> tuple[bool, str]:
    return where == "total", where


def _commands_text(counts: dict[str, float]) -> str:
    return ", ".join(f"{name.upper()} {count:.3g}" for name, count in counts.items())


if __name__ == "__main__":
    main()
