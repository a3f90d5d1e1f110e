"""End to end: gunicorn with 4 sync workers serving a Flask counter, under load.

Each backend of ``bench/e2e_app.py`` serves ``GET /count`` for a fixed time, driven by
``wrk`` (or a small Python load generator when wrk is missing). The count is right if
the counter ends at the number of answered requests (plus at most the requests still
in flight when the load stopped).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOOKS = os.path.join(REPO, "examples", "gunicorn", "gunicorn.conf.py")
CONNECTIONS = 16
LAST: float | None = None  # sharedstate's rate over redis-py's, for the targets table


@dataclass
class Outcome:
    backend: str
    requests_per_second: float
    answered: int
    errors: int
    final_count: int | None
    note: str = ""

    @property
    def right(self) -> str:
        if self.note:
            return self.note
        if self.final_count is None:
            return "?"
        ok = self.errors == 0 and self.answered <= self.final_count <= self.answered + CONNECTIONS
        return (
            "yes" if ok else f"**no**: {self.final_count:,} counted for {self.answered:,} answers"
        )


def run(workdir: str, seconds: float) -> str:
    global LAST
    outcomes = []
    skipped = []
    for backend in ("global", "redis", "seed", "stash", "sharedstate", "sharedstate-flask"):
        why_not = _unavailable(backend)
        if why_not:
            skipped.append(f"- {backend}: not measured, {why_not}")
            continue
        outcomes.append(_measure(backend, workdir, seconds))
    rates = {outcome.backend: outcome.requests_per_second for outcome in outcomes}
    if "sharedstate" in rates and rates.get("redis"):
        LAST = rates["sharedstate"] / rates["redis"]
    tool = "wrk" if shutil.which("wrk") else "a Python load generator (wrk not found)"
    lines = [
        "## End to end: gunicorn, 4 sync workers, a Flask counter",
        "",
        f"{tool}, {CONNECTIONS} connections, {seconds:g} s per backend, on the same machine.",
        "",
        "| backend | requests/s | × redis-py | count right |",
        "|---|---|---|---|",
    ]
    for outcome in outcomes:
        rate = outcome.requests_per_second
        versus = f"{rate / rates['redis']:.2f}" if rates.get("redis") else ""
        lines.append(f"| {outcome.backend} | {rate:,.0f} | {versus} | {outcome.right} |")
    return "\n".join([*lines, "", *skipped]) + "\n"


def _unavailable(backend: str) -> str:
    if backend == "redis":
        if shutil.which("redis-server") is None:
            return "redis-server not found"
        try:
            import redis  # noqa: F401
        except ImportError:
            return "redis-py not installed"
    if backend == "stash":
        try:
            from gunicorn.dirty import stash  # noqa: F401
        except ImportError:
            return "this gunicorn has no dirty stash (it came in 25.1)"
    return ""


def _measure(backend: str, workdir: str, seconds: float) -> Outcome:
    directory = os.path.join(workdir, f"e2e-{backend}")
    os.makedirs(directory)
    env = dict(
        os.environ,
        BENCH_BACKEND=backend,
        BENCH_REDIS_SOCKET=os.path.join(directory, "redis.sock"),
        BENCH_SEED_SOCKET=os.path.join(directory, "seed.sock"),
        SHAREDSTATE_ADDRESS=os.path.join(directory, "ss", "state.sock"),
        PYTHONPATH=REPO,
    )
    redis = None
    if backend == "redis":
        redis = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", env["BENCH_REDIS_SOCKET"],
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
    port = _free_port()
    argv = [sys.executable, "-m", "gunicorn", "-w", "4", "-k", "sync", "-b", f"127.0.0.1:{port}",
            "--chdir", REPO, "--log-level", "warning"]  # fmt: skip
    if backend.startswith("sharedstate"):
        argv += ["-c", HOOKS]
    if backend == "stash":
        argv += ["--dirty-workers", "1", "--dirty-app", "bench.e2e_app:StashHolder"]
    if "--no-control-socket" in _gunicorn_help():
        argv.append("--no-control-socket")
    log = open(os.path.join(directory, "gunicorn.log"), "wb")  # noqa: SIM115 - closed below
    gunicorn = subprocess.Popen([*argv, "bench.e2e_app:app"], env=env, stdout=log, stderr=log)
    try:
        _wait_ready(port, gunicorn)
        rate, answered, errors = _load(port, seconds)
        time.sleep(0.5)  # let requests still in flight finish
        final = int(_get(port, "/value")[1]) if backend != "global" else None
        note = "no: each worker counts alone" if backend == "global" else ""
        return Outcome(backend, rate, answered, errors, final, note)
    finally:
        gunicorn.send_signal(signal.SIGTERM)
        gunicorn.wait(60)
        log.close()
        if redis is not None:
            redis.terminate()
            redis.wait(10)


def _load(port: int, seconds: float) -> tuple[float, int, int]:
    """Requests per second, requests answered, error answers."""
    if shutil.which("wrk"):
        result = subprocess.run(
            ["wrk", "-t", "2", "-c", str(CONNECTIONS), "-d", f"{seconds:g}s",
             f"http://127.0.0.1:{port}/count"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        answered = re.search(r"(\d+) requests in", result.stdout)
        rate = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
        assert answered, result.stdout
        assert rate, result.stdout
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
        # Sync workers close every connection, which wrk reports as socket read errors
        # while it reconnects; only non-2xx answers are failed requests.
        return float(rate.group(1)), int(answered.group(1)), int(errors.group(1)) if errors else 0
    return _python_load(port, seconds)


def _python_load(port: int, seconds: float) -> tuple[float, int, int]:
    counts = [0, 0]  # answered, errors
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def hammer() -> None:
        while time.monotonic() < deadline:
            status, _ = _get(port, "/count")
            with lock:
                counts[0] += 1
                counts[1] += status != 200

    started = time.monotonic()
    threads = [threading.Thread(target=hammer) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts[0] / (time.monotonic() - started), counts[0], counts[1]


def _get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def _wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}")
        try:
            if _get(port, "/value")[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("gunicorn did not answer")
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _gunicorn_help() -> str:
    return subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True, check=False
    ).stdout
