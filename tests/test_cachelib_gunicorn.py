"""Flask-Caching and Flask-Session on SharedStateCache under real gunicorn (4 workers):
examples/flask-cache-session, served as its README says, over loopback HTTP."""

from __future__ import annotations

import http.client
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from sharedstate import get_shared_state

from .support.gunicorns import Gunicorn
from .support.processes import REPO_ROOT, wait_until

EXAMPLE = os.path.join(REPO_ROOT, "examples", "flask-cache-session")
WORKERS = 4


class CacheAppGunicorn(Gunicorn):
    """gunicorn with the example's config, serving tests/support/flask_cache_app.py."""

    def __init__(self, workdir: str, *args: str) -> None:
        super().__init__(
            workdir,
            *args,
            app="tests.support.flask_cache_app:app",
            config=os.path.join(EXAMPLE, "gunicorn.conf.py"),
        )

    def request(
        self, method: str, path: str, cookie: str | None = None
    ) -> tuple[int, str, http.client.HTTPResponse]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, headers={"Cookie": cookie} if cookie else {})
            response = connection.getresponse()
            return response.status, response.read().decode(), response
        finally:
            connection.close()


@pytest.fixture
def example(workdir: str) -> Iterator[CacheAppGunicorn]:
    server = CacheAppGunicorn(workdir, "-w", str(WORKERS))
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait(30)


@pytest.mark.timeout(120)
def test_a_cached_view_is_computed_at_most_once_per_worker_then_served_from_the_cache(
    example: CacheAppGunicorn,
) -> None:
    # Flask-Caching's @cached is get, then compute, then set: requests that miss at
    # the same time each compute. A sync worker serves one request at a time and, once
    # it has set the entry, finds it: so at most one computation per worker.
    with ThreadPoolExecutor(max_workers=20) as pool:
        first = list(pool.map(lambda _: example.request("GET", "/report"), range(100)))
    assert {status for status, _, _ in first} == {200}
    runs = get_shared_state(start=False)["report_runs"]
    assert 1 <= runs <= WORKERS
    assert len({body for _, body, _ in first}) <= runs

    # From now on every request, whichever worker serves it, is a hit on one entry.
    with ThreadPoolExecutor(max_workers=20) as pool:
        later = list(pool.map(lambda _: example.request("GET", "/report"), range(100)))
    assert len({body for _, body, _ in later}) == 1
    served_by = {response.headers["X-Worker-Pid"] for _, _, response in later}
    assert len(served_by) > 1, "one worker served everything: the test proves nothing"
    assert get_shared_state(start=False)["report_runs"] == runs


@pytest.mark.timeout(120)
def test_a_login_in_one_worker_is_seen_by_every_worker(example: CacheAppGunicorn) -> None:
    status, body, response = example.request("POST", "/login/ann")
    assert (status, body) == (200, "logged in as ann\n")
    cookie = response.headers["Set-Cookie"].split(";")[0]
    logged_in_by = response.headers["X-Worker-Pid"]

    # Which worker accepts a connection is the kernel's choice: ask until each has answered.
    wait_until(lambda: len(example.worker_pids()) == WORKERS)  # all booted, not just some
    workers = {str(pid) for pid in example.worker_pids()}
    seen_by: set[str] = set()
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(max_workers=8) as pool:
        while seen_by != workers and time.monotonic() < deadline:
            for status, body, response in pool.map(
                lambda _: example.request("GET", "/me", cookie), range(40)
            ):
                assert status == 200
                assert body.startswith("ann (worker "), body
                seen_by.add(response.headers["X-Worker-Pid"])
    assert seen_by == workers, "every worker saw the login"
    assert seen_by - {logged_in_by}

    assert example.request("POST", "/logout", cookie)[:2] == (200, "logged out\n")
    assert example.request("GET", "/me", cookie)[1].startswith("nobody")
    assert example.request("GET", "/me")[1].startswith("nobody")  # no cookie: no session
