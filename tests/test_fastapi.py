"""FastAPI with the asyncio client, under real ``uvicorn --workers 4`` and gunicorn with
uvicorn's worker: the example app (examples/fastapi/), real HTTP over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI

from sharedstate import ConfigError, get_shared_state
from sharedstate.aio import AsyncSharedState
from sharedstate.starlette import shared_state, shared_state_lifespan

from .support.gunicorns import Gunicorn
from .support.processes import REPO_ROOT, kill_and_wait, wait_until
from .support.procfs import is_dead, server_pids
from .support.servers import ServerProcess, server_info
from .support.uvicorns import (
    APP,
    StartUvicorn,
    Uvicorn,
    concurrent_posts,
    wait_for_connected_workers,
)

GUNICORN_CONFIG = os.path.join(REPO_ROOT, "examples", "fastapi", "gunicorn.conf.py")
State = Annotated[AsyncSharedState, Depends(shared_state)]
# "sharedstate.errors.ConnectionLost: the connection...", not "INFO:     127.0.0.1..."
TRACEBACK_END = re.compile(r"^(?!INFO|ERROR|WARNING|DEBUG|CRITICAL)[A-Za-z_][\w.]*: .*$", re.M)


def _stop_sharedstate_servers(workdir: str) -> None:
    """The server a worker started outlives uvicorn, by design: the test stops it."""
    for pid in server_pids(workdir):
        kill_and_wait(pid)


@pytest.fixture
def uvicorn(workdir: str) -> Iterator[StartUvicorn]:
    started: list[Uvicorn] = []

    def start(*args: str) -> Uvicorn:
        master = Uvicorn(workdir, *args)
        started.append(master)
        return master.start()

    try:
        yield start
    finally:
        for master in started:
            master.stop()
        _stop_sharedstate_servers(workdir)


@pytest.fixture
def gunicorn_uvicorn(workdir: str) -> Iterator[Gunicorn]:
    """gunicorn with 4 uvicorn workers and sharedstate's hooks (examples/fastapi's config)."""
    master = Gunicorn(workdir, app=APP, config=GUNICORN_CONFIG)
    try:
        yield master
    finally:
        if master.process is not None and master.process.poll() is None:
            workers = master.worker_pids()
            master.process.kill()
            master.process.wait(30)
            for pid in workers:
                if not is_dead(pid):
                    kill_and_wait(pid)
        _stop_sharedstate_servers(workdir)


def _hits_were_1_to(count: int, responses: list[httpx.Response], log: str) -> None:
    statuses = [response.status_code for response in responses]
    assert statuses == [200] * count, _last_error(log)
    assert sorted(response.json() for response in responses) == list(range(1, count + 1))
    workers = {response.headers["X-Worker-Pid"] for response in responses}
    assert len(workers) > 1, "several workers answered"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])  # uvicorn's two event loops
def test_200_concurrent_hits_on_4_uvicorn_workers_get_1_to_200_each_once(
    uvicorn: StartUvicorn, loop: str
) -> None:
    pytest.importorskip(loop)
    server = uvicorn("--loop", loop)
    _hits_were_1_to(200, concurrent_posts(server.url, "/hits", 200), server.log())
    assert httpx.get(f"{server.url}/hits").json() == 200


@pytest.mark.timeout(120)
def test_exactly_one_server_for_4_uvicorn_workers_that_start_at_once(
    uvicorn: StartUvicorn, workdir: str
) -> None:
    server = uvicorn()
    servers = server_pids(workdir)
    assert len(servers) == 1, f"servers started: {servers}"
    [server_pid] = servers
    info = server_info()
    workers = server.worker_pids()
    assert info["pid"] == server_pid
    assert info["started_by"] in workers, "one of the workers started it"
    assert workers <= {client["pid"] for client in info["clients"]}, "all use that one"
    concurrent_posts(server.url, "/hits", 40)
    assert server_pids(workdir) == [server_pid]


@pytest.mark.timeout(120)
def test_a_worker_killed_while_holding_the_lock_frees_it(uvicorn: StartUvicorn) -> None:
    server = uvicorn()
    holding = threading.Thread(target=_post_ignoring_errors, args=(server, "/hold?seconds=120"))
    holding.start()
    try:
        wait_until(lambda: server_info()["lock_holder"] is not None)
        info = server_info()
        [holder] = {c["pid"] for c in info["clients"] if c["id"] == info["lock_holder"]}
        assert holder in server.worker_pids()

        kill_and_wait(holder)
        started = time.monotonic()
        taken = httpx.post(f"{server.url}/hold?seconds=0&timeout=10", timeout=30)
        assert taken.status_code == 200, taken.text
        assert taken.json()["pid"] != holder
        assert time.monotonic() - started < 5, "the lock was freed when its holder died"
    finally:
        holding.join(30)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_the_server_outlives_the_worker_that_started_it(
    uvicorn: StartUvicorn, workdir: str, signum: signal.Signals
) -> None:
    server = uvicorn()
    _hits_were_1_to(20, concurrent_posts(server.url, "/hits", 20), server.log())
    info = server_info()
    starter, server_pid = info["started_by"], info["pid"]
    assert starter in server.worker_pids()

    os.kill(starter, signum)  # SIGTERM: the worker runs the lifespan's shutdown first
    wait_until(lambda: is_dead(starter))
    replaced = server.wait_for_workers()  # uvicorn starts a new worker, which connects
    assert starter not in replaced
    assert server_pids(workdir) == [server_pid], "the same server, and only it"
    responses = concurrent_posts(server.url, "/hits", 20)
    assert sorted(response.json() for response in responses) == list(range(21, 41))


@pytest.mark.timeout(120)
def test_200_concurrent_hits_on_gunicorn_with_4_uvicorn_workers_get_1_to_200_each_once(
    gunicorn_uvicorn: Gunicorn, workdir: str
) -> None:
    master = gunicorn_uvicorn.start()
    workers = wait_for_connected_workers(master.worker_pids, 4)
    info = server_info()
    assert info["owner_pid"] == master.pid, "the master's on_starting started it"
    assert info["started_by"] not in workers
    url = f"http://127.0.0.1:{master.port}"
    _hits_were_1_to(200, concurrent_posts(url, "/hits", 200), master.log())
    assert len(server_pids(workdir)) == 1

    assert master.stop() == 0
    wait_until(lambda: server_pids(workdir) == [])  # on_exit stopped it with gunicorn


def test_the_sync_client_and_the_workers_async_clients_see_each_others_writes(
    uvicorn: StartUvicorn,
) -> None:
    server = uvicorn()
    state = get_shared_state(start=False)  # the sync client, in this process
    assert state["config"]["db"]["port"] == 5432  # written by the first worker's setup
    state["config"]["db"]["port"] = 6543
    assert httpx.get(f"{server.url}/config/db/port").json() == 6543
    assert httpx.put(f"{server.url}/config/db/host", json="x").status_code == 200
    assert state["config"]["db"] == {"host": "x", "port": 6543}

    for _ in range(3):
        state.incr("hits")
    assert httpx.post(f"{server.url}/hits").json() == 4
    assert state["hits"] == 4

    with state.lock:  # one lock for both clients
        refused = httpx.post(f"{server.url}/hold?seconds=0&timeout=0.5", timeout=30)
        assert refused.status_code == 503
    assert httpx.post(f"{server.url}/hold?seconds=0&timeout=5", timeout=30).status_code == 200


@pytest.mark.timeout(120)
def test_requests_behind_one_that_waits_for_an_edit_are_all_answered(
    uvicorn: StartUvicorn,
) -> None:
    # A worker's tasks share a few connections. While another client edits "config",
    # PUT /config waits on the server; the hits sent meanwhile must not fail or stall.
    server = uvicorn()
    state = get_shared_state(start=False)
    with ThreadPoolExecutor(max_workers=17) as pool:
        with state.edit("config"):
            puts = [
                pool.submit(httpx.put, f"{server.url}/config/db/port", json=port, timeout=60)
                for port in range(16)  # 4 a worker: as many as its connections
            ]
            wait_until(lambda: server_info()["waiting"] > 0)  # a PUT is waiting
            time.sleep(0.2)  # for the others to arrive
            hits = pool.submit(concurrent_posts, server.url, "/hits", 100)
            time.sleep(1.0)  # hits sent while the PUTs wait (or waiting for a connection)
        statuses = [put.result().status_code for put in puts]
        _hits_were_1_to(100, hits.result(), server.log())
    assert statuses == [200] * 16, _last_error(server.log())


def test_the_lifespan_opens_the_state_around_the_apps_own_lifespan(
    server: ServerProcess,
) -> None:
    seen: list[object] = []

    @contextlib.asynccontextmanager
    async def own_lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        seen.append(await app.state.shared.incr("starts"))  # already connected
        yield {"greeting": "hello"}  # Starlette's lifespan state: passed on
        seen.append(await app.state.shared.get("starts"))  # not closed yet

    app = FastAPI(lifespan=shared_state_lifespan(own_lifespan))

    @app.get("/")
    async def index(state: State) -> int:
        return int(await state.incr("starts"))

    async def serve_one_request() -> None:
        async with app.router.lifespan_context(app) as lifespan_state:
            assert lifespan_state == {"greeting": "hello"}
            assert (await _get_in_process(app, "/")).json() == 2
        assert not hasattr(app.state, "shared"), "the lifespan took it off at shutdown"

    asyncio.run(serve_one_request())
    assert seen == [1, 2]
    assert get_shared_state(start=False)["starts"] == 2


def test_the_dependency_without_the_lifespan_says_how_to_set_it_up(server: ServerProcess) -> None:
    app = FastAPI()

    @app.get("/")
    async def index(state: State) -> int:
        return int(await state.incr("hits"))

    with pytest.raises(ConfigError, match="lifespan="):
        asyncio.run(_get_in_process(app, "/"))


async def _get_in_process(app: FastAPI, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        return await client.get(path)


def _last_error(log: str) -> str:
    """The last traceback's last line in a server's log: why a request got a 500."""
    errors = TRACEBACK_END.findall(log)
    return errors[-1] if errors else "no traceback in the log"


def _post_ignoring_errors(server: Uvicorn, path: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{server.url}{path}", timeout=150)
