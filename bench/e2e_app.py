"""The end-to-end benchmark's app: one counter endpoint, backed by BENCH_BACKEND.

- ``global``: a module global (the ceiling; each worker counts alone, so it is wrong);
- ``redis``: redis-py ``INCR`` on BENCH_REDIS_SOCKET;
- ``seed``: the BaseManager recipe of ../shared/seeds/004 (lock + get + set);
- ``stash``: gunicorn's dirty stash (get + put: it has no atomic increment);
- ``sharedstate``: the README's quick start, word for word but for the URL: it calls
  ``get_shared_state()`` in every request, as users are told to;
- ``sharedstate-flask``: the Flask extension's ``shared_state().incr``.
"""

from __future__ import annotations

import os
import threading
from multiprocessing import Lock
from multiprocessing.managers import AcquirerProxy, BaseManager, DictProxy
from typing import Any, ClassVar

from flask import Flask

BACKEND = os.environ["BENCH_BACKEND"]
app = Flask(__name__)
_number = 0
_local = threading.local()


def _seed_state() -> tuple[Any, Any]:
    # The recipe, as the seed writes it (with module-level callables, which fork allows).
    state = getattr(_local, "seed", None)
    if state is None:
        shared_dict: dict[str, int] = {}
        shared_lock = Lock()
        manager = BaseManager(os.environ["BENCH_SEED_SOCKET"], b"bench-seed-key")
        manager.register("get_dict", lambda: shared_dict, DictProxy)
        manager.register("get_lock", lambda: shared_lock, AcquirerProxy)
        try:
            manager.get_server()
            manager.start()
        except OSError:  # address already in use: another worker started it
            manager.connect()
        state = _local.seed = (manager.get_dict(), manager.get_lock())  # type: ignore[attr-defined]
    return state


if BACKEND == "sharedstate":
    # README.md, "Quick start" (the route is /count here, like the other backends').
    from sharedstate import get_shared_state

    # fmt: off
    @app.route("/count")
    def counter():
        state = get_shared_state()         # connects, or starts the server exactly once
        return str(state.incr("hits"))     # atomic: 4 workers, 100 requests -> 1..100, each once
    # fmt: on

elif BACKEND == "sharedstate-flask":
    from sharedstate.flask import SharedStateExtension, shared_state

    SharedStateExtension(app)
elif BACKEND == "redis":
    import redis

    _redis = redis.Redis(unix_socket_path=os.environ["BENCH_REDIS_SOCKET"])


def count() -> str:
    global _number
    if BACKEND == "global":
        _number += 1
        return str(_number)
    if BACKEND == "sharedstate-flask":
        return str(shared_state().incr("hits"))
    if BACKEND == "redis":
        return str(_redis.incr("hits"))
    if BACKEND == "seed":
        shared, lock = _seed_state()
        with lock:
            shared["hits"] = value = shared.get("hits", 0) + 1
        return str(value)
    if BACKEND == "stash":
        from gunicorn.dirty import stash

        value = _stash_hits() + 1
        stash.put("bench", "hits", value)
        return str(value)
    raise ValueError(BACKEND)


if BACKEND != "sharedstate":
    app.add_url_rule("/count", view_func=count)


def _stash_hits() -> int:
    from gunicorn.dirty import stash

    # gunicorn 27.0.1's stash.get(table, key, default) raises a plain StashError for a
    # missing key instead of returning the default.
    try:
        return int(stash.get("bench", "hits", 0))
    except stash.StashError:
        return 0


@app.get("/value")
def value() -> str:
    if BACKEND == "global":
        return str(_number)
    if BACKEND == "sharedstate":
        return str(get_shared_state().get("hits", 0))
    if BACKEND == "sharedstate-flask":
        return str(shared_state().get("hits", 0))
    if BACKEND == "redis":
        return str(int(_redis.get("hits") or 0))
    if BACKEND == "seed":
        return str(_seed_state()[0].get("hits", 0))
    return str(_stash_hits())


try:
    from gunicorn.dirty.app import DirtyApp

    class StashHolder(DirtyApp):  # type: ignore[misc]
        """Declares the stash table; gunicorn needs a dirty app for the stash to exist."""

        stashes: ClassVar[list[str]] = ["bench"]

        def __call__(self, action: str, *args: Any, **kwargs: Any) -> None:
            return None

except ImportError:  # gunicorn < 25.1: no stash
    pass
