"""Under real gunicorn, real HTTP over loopback: the example config and app, as users run them."""

from __future__ import annotations

import contextlib
import http.client
import os
import pathlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sharedstate import get_shared_state

from .support.clients import fresh_state
from .support.gunicorns import Gunicorn, StartGunicorn, concurrent_gets
from .support.persisted import snapshot_in
from .support.processes import wait_until
from .support.procfs import is_dead, server_pids
from .support.servers import ServerProcess, server_info


@pytest.fixture
def gunicorn(workdir: str) -> Iterator[StartGunicorn]:
    started: list[Gunicorn] = []

    def start(*args: str) -> Gunicorn:
        server = Gunicorn(workdir, *args).start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait(30)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("worker_class", "preload"),
    [("sync", False), ("sync", True), ("gthread", False), ("gthread", True)],
)
def test_100_concurrent_requests_get_1_to_100_each_once(
    gunicorn: StartGunicorn, worker_class: str, preload: bool
) -> None:
    args = ["-w", "4", "-k", worker_class]
    args += ["--threads", "4"] if worker_class == "gthread" else []
    args += ["--preload"] if preload else []
    server = gunicorn(*args)
    responses = concurrent_gets(server, "/count", 100)
    assert {status for status, _ in responses} == {200}
    assert sorted(int(body) for _, body in responses) == list(range(1, 101))
    wait_until(lambda: len(server.worker_pids()) == 4)


def test_nested_data_and_locked_updates_from_all_workers(gunicorn: StartGunicorn) -> None:
    server = gunicorn()
    for page in ["home", "about", "home"] * 10:
        assert server.get(f"/visits/{page}", "POST")[0] == 200
    assert get_shared_state(start=False)["stats"] == {"pages": {"home": 20, "about": 10}}
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(lambda _: server.get("/log", "POST"), range(40)))
    assert {status for status, _ in responses} == {200}
    assert len(get_shared_state(start=False)["log"]) == 5


@pytest.mark.timeout(120)
def test_a_killed_worker_is_replaced_and_its_lock_released(gunicorn: StartGunicorn) -> None:
    server = gunicorn("-w", "4")
    holder_request = threading.Thread(target=lambda: _ignore_errors(server.get, "/hold-lock"))
    holder_request.start()
    wait_until(lambda: server_info()["lock_holder"] is not None)
    info = server_info()
    [holder] = [c["pid"] for c in info["clients"] if c["id"] == info["lock_holder"]]
    assert holder in server.worker_pids()

    with ThreadPoolExecutor(max_workers=10) as pool:
        counting = pool.map(lambda _: server.get("/count"), range(60))
        os.kill(holder, signal.SIGKILL)
        responses = list(counting)
    holder_request.join(30)
    assert {status for status, _ in responses} == {200}
    assert sorted(int(body) for _, body in responses) == list(range(1, 61))

    wait_until(lambda: holder not in server.worker_pids() and len(server.worker_pids()) == 4)
    state = get_shared_state(start=False)
    assert state.lock.acquire(timeout=10), "the dead worker's lock was not released"
    state.lock.release()
    assert server.get("/count") == (200, "61"), "the new worker sees the same state"


@pytest.mark.timeout(120)
def test_hup_reload_keeps_state_and_serves_without_errors(gunicorn: StartGunicorn) -> None:
    server = gunicorn("-w", "4")
    get_shared_state(start=False)["before"] = "reload"
    old_workers = server.worker_pids()
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def keep_counting() -> None:
        while not stop.is_set():
            results.append(server.get("/count"))

    clients = [threading.Thread(target=keep_counting) for _ in range(4)]
    for client in clients:
        client.start()
    wait_until(lambda: len(results) > 50)
    server.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    wait_until(lambda: len(server.worker_pids()) == 4 and not server.worker_pids() & old_workers)
    served = len(results)
    wait_until(lambda: len(results) > served + 50)  # the new workers serve too
    stop.set()
    for client in clients:
        client.join(30)
    assert {status for status, _ in results} == {200}
    assert sorted(int(body) for _, body in results) == list(range(1, len(results) + 1))
    assert get_shared_state(start=False)["before"] == "reload"


@pytest.mark.timeout(120)
def test_the_counter_continues_after_gunicorn_restarts_with_a_snapshot(
    gunicorn: StartGunicorn, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHAREDSTATE_SNAPSHOT", snapshot_in(workdir, "var"))
    first = gunicorn("-w", "4")
    concurrent_gets(first, "/count", 25)
    assert first.stop() == 0
    # The server frees its lock (what gunicorn waits for) just before its process ends.
    wait_until(lambda: server_pids(workdir) == [])  # gunicorn stopped the server it started
    second = gunicorn("-w", "4")
    assert second.get("/count") == (200, "26")


def test_a_server_running_before_gunicorn_keeps_running_after_it(
    gunicorn: StartGunicorn, server: ServerProcess
) -> None:
    first = gunicorn("-w", "2")
    assert first.get("/count") == (200, "1")
    first.stop()
    assert server.process is not None
    assert server.process.poll() is None
    assert fresh_state()["hits"] == 1


def test_stop_with_gunicorn_off_keeps_the_server(
    gunicorn: StartGunicorn, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHAREDSTATE_STOP_WITH_GUNICORN", "0")
    first = gunicorn("-w", "2")
    first.get("/count")
    first.stop()
    assert len(server_pids(workdir)) == 1
    assert fresh_state()["hits"] == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when_owner_dies", ["stay", "stop"])
def test_the_server_notices_a_crashed_master(
    gunicorn: StartGunicorn, workdir: str, monkeypatch: pytest.MonkeyPatch, when_owner_dies: str
) -> None:
    monkeypatch.setenv("SHAREDSTATE_WHEN_OWNER_DIES", when_owner_dies)
    first = gunicorn("-w", "2")
    first.get("/count")
    workers = first.worker_pids()
    [server_pid] = server_pids(workdir)
    assert server_info()["owner_pid"] == first.pid
    first.stop(signal.SIGKILL)  # no on_exit
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    if when_owner_dies == "stop":
        wait_until(lambda: is_dead(server_pid))
    else:
        log = pathlib.Path(workdir, "run", "state.sock.log")
        wait_until(lambda: "staying up" in log.read_text())
        assert fresh_state()["hits"] == 1


def test_a_bad_setting_stops_gunicorn_with_one_line_and_no_traceback(
    workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHAREDSTATE_FSYNC", "sometimes")
    master = Gunicorn(workdir, "-w", "1")
    result = subprocess.run(master.argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "sharedstate" in line]
    assert "'sometimes'" in line, line
    assert "always" in line, line  # says what to write instead
    assert server_pids(workdir) == []


@pytest.mark.timeout(120)
def test_the_next_gunicorn_adopts_a_server_whose_master_crashed(
    gunicorn: StartGunicorn, workdir: str
) -> None:
    first = gunicorn("-w", "2")
    first.get("/count")
    workers = first.worker_pids()
    [server_pid] = server_pids(workdir)
    first.stop(signal.SIGKILL)  # no on_exit: the server stays up, owned by nobody alive
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    log = pathlib.Path(workdir, "run", "state.sock.log")
    wait_until(lambda: "staying up" in log.read_text())
    assert server_info()["former_owner_pid"] == first.pid

    second = gunicorn("-w", "2")
    assert second.get("/count") == (200, "2"), "the same server, with its state"
    assert server_info()["owner_pid"] == second.pid
    assert "adopted" in second.log()
    assert second.stop() == 0
    wait_until(lambda: is_dead(server_pid))  # the adopter stopped it, as if it had started it


def test_a_gunicorn_that_attaches_says_it_will_not_stop_the_server(
    gunicorn: StartGunicorn, server: ServerProcess
) -> None:
    first = gunicorn("-w", "1")
    assert "started outside gunicorn: this gunicorn won't stop it" in first.log()


def test_a_preload_app_that_starts_the_server_makes_it_gunicorns(
    gunicorn: StartGunicorn, workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_TOUCH_STATE_AT_IMPORT", "1")
    first = gunicorn("-w", "2", "--preload")
    assert server_info()["owner_pid"] == first.pid
    assert first.get("/count") == (200, "1")
    first.stop()
    wait_until(lambda: server_pids(workdir) == [])  # it stopped the server with it


def _ignore_errors(call: Any, *args: Any) -> None:
    with contextlib.suppress(OSError, http.client.HTTPException):
        call(*args)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_no_server_outlives_a_gunicorn_stopped_under_load(
    gunicorn: StartGunicorn, workdir: str, worker_class: str
) -> None:
    # Workers serve requests until the master stops them; none may start a new server
    # after the master's on_exit stopped the one it owns.
    first = gunicorn("-w", "4", "-k", worker_class, "--threads", "4")
    stopping = threading.Event()

    def keep_requesting() -> None:
        while not stopping.is_set():
            _ignore_errors(first.get, "/count", "GET", 5)

    load = [threading.Thread(target=keep_requesting) for _ in range(8)]
    for thread in load:
        thread.start()
    try:
        wait_until(lambda: fresh_state().get("hits", 0) >= 50)
        assert first.stop() == 0
    finally:
        stopping.set()
        for thread in load:
            thread.join(30)
    wait_until(lambda: server_pids(workdir) == [])
    time.sleep(1.0)  # a worker that outlived the master would have started one by now
    assert server_pids(workdir) == [], first.log()
    assert not os.path.exists(os.path.join(workdir, "run", "state.sock"))


def test_a_hook_of_your_own_chained_with_sharedstates_runs_in_every_worker(
    gunicorn: StartGunicorn, workdir: str
) -> None:
    marks = pathlib.Path(workdir, "forked")
    config = pathlib.Path(workdir, "chained.conf.py")
    config.write_text(
        "from sharedstate.gunicorn import chain, child_exit, on_exit, on_starting\n"
        "from sharedstate.gunicorn import post_fork as shared_post_fork\n\n"
        "def my_post_fork(server, worker):\n"
        f"    with open({str(marks)!r}, 'a') as file:\n"
        "        file.write(f'{worker.pid}\\n')\n\n"
        "post_fork = chain(shared_post_fork, my_post_fork)\n"
    )
    server = gunicorn("-w", "2", "-c", str(config))  # the last -c wins
    assert concurrent_gets(server, "/count", 20)[-1][0] == 200

    def each_worker_marked() -> bool:
        # A worker may still be in its post_fork: the requests may all have gone to one.
        return sorted(map(int, marks.read_text().split())) == sorted(server.worker_pids())

    wait_until(each_worker_marked, timeout=15)
    assert server_info()["owner_pid"] == server.pid, "sharedstate's hooks ran too"


def test_chain_refuses_hooks_that_take_different_arguments() -> None:
    from sharedstate.gunicorn import chain, on_exit, post_fork

    with pytest.raises(TypeError, match="same arguments"):
        chain(post_fork, on_exit)
