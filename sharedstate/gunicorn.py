"""gunicorn hooks: one import in ``gunicorn.conf.py`` and every worker shares the state.

::

    # gunicorn.conf.py
    from sharedstate.gunicorn import child_exit, on_exit, on_starting, post_fork

What each hook does, and the gunicorn trap it avoids:

- ``on_starting`` (master): starts the server in the background, or attaches to a
  running one, with the usual settings (environment, ``.env``). A server started by
  this gunicorn (here, or by a ``--preload`` app during start-up, or later by a worker)
  belongs to it: the master's pid travels to the server as ``SHAREDSTATE_OWNER_PID``.
  The server is never a child of the master, so gunicorn's reaping of children, and
  multiprocessing's exit handlers in workers ("can only join a child process",
  gunicorn #1391), never see it. The master keeps no connection open (gh-101320).
- ``post_fork`` (worker): drops anything inherited from the master, so each worker
  opens its own connections on first use.
- ``child_exit`` (master): asks the server to release the lock and edits held by the
  worker that just died (it also does so when the worker's connections drop; this
  covers a worker killed by SIGKILL or the OOM killer, where ``worker_exit`` never runs).
- ``on_exit`` (master): stops the server this gunicorn owns, after its final snapshot,
  unless ``SHAREDSTATE_STOP_WITH_GUNICORN=0``. If the master dies without ``on_exit``,
  the server notices and stays up or stops as ``SHAREDSTATE_WHEN_OWNER_DIES`` says.

gunicorn re-reads its config file on HUP; these hooks keep no state that matters
across that, and the server keeps running. To combine them with hooks of your own::

    from sharedstate import gunicorn as shared

    def my_post_fork(server, worker): ...

    post_fork = shared.chain(shared.post_fork, my_post_fork)
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from .backends import connect_sync
from .client.launcher import call_server_function, connect_or_start, stop_server
from .client.state import reset_after_fork
from .config import Settings, load_settings
from .errors import SharedStateError

OWNER_ENV = "SHAREDSTATE_OWNER_PID"
TIMEOUT = 30.0  # a server with a large snapshot may take a while to start or stop

Hook = Callable[..., Any]


def on_starting(server: Any) -> None:
    """Start the sharedstate server, or attach to the running one."""
    os.environ[OWNER_ENV] = str(os.getpid())  # servers started from here on belong to us
    try:
        settings = load_settings()
        if settings.address.is_redis:
            _check_redis(settings)
            server.log.info("sharedstate: the state is in Redis at %s", settings.address)
            return
        connect_or_start(settings, start=True, timeout=TIMEOUT).conn.close()
        info = call_server_function(settings, "server_info", TIMEOUT)
        # Ours to own: started a moment ago by this master's --preload app (before this
        # hook), or left behind by a gunicorn master that died without stopping it.
        orphan = info.get("former_owner_pid")
        if info["owner_pid"] is None and (info["started_by"] == os.getpid() or orphan):
            call_server_function(
                settings, "set_owner", TIMEOUT, (os.getpid(), settings.when_owner_dies)
            )
            info["owner_pid"] = os.getpid()
    except SharedStateError as error:
        # gunicorn prints a RuntimeError from a hook as one line ("Error: ...") and exits 1;
        # anything else comes with its whole traceback.
        raise RuntimeError(f"sharedstate: {error}") from None
    address, pid = settings.address, info["pid"]
    if info["owner_pid"] != os.getpid():
        owner = info["owner_pid"]
        whose = f"owned by process {owner}" if owner else "started outside gunicorn"
        server.log.info(
            "sharedstate server at %s (pid %s) already running, %s: this gunicorn won't "
            "stop it when it exits",
            address,
            pid,
            whose,
        )
    elif orphan:
        server.log.info(
            "sharedstate server at %s (pid %s) adopted: its gunicorn (pid %s) died without "
            "stopping it; this one stops it when it exits",
            address,
            pid,
            orphan,
        )
    else:
        server.log.info(
            "sharedstate server at %s (pid %s), started for this gunicorn", address, pid
        )


def post_fork(server: Any, worker: Any) -> None:
    """Give the new worker its own connections."""
    reset_after_fork()


def child_exit(server: Any, worker: Any) -> None:
    """Free the lock and edits of a worker that died, however it died.

    On Redis they are freed when their lease runs out (SHAREDSTATE_REDIS_LEASE).
    """
    try:
        settings = load_settings()
        if settings.address.is_redis:
            return
        released = call_server_function(settings, "release_pid", 5.0, (worker.pid,))
    except SharedStateError as error:  # never let a hook take the master down
        server.log.warning("sharedstate: could not release worker %s: %s", worker.pid, error)
        return
    if released:
        server.log.info(
            "sharedstate: released %s of dead worker %s", ", ".join(released), worker.pid
        )


def on_exit(server: Any) -> None:
    """Stop the server this gunicorn owns (unless told to keep it running)."""
    settings = load_settings()
    if not settings.stop_with_gunicorn or settings.address.is_redis:
        return
    try:
        info = call_server_function(settings, "server_info", 5.0)
        if info["owner_pid"] != os.getpid():
            return  # not ours: it was running before this gunicorn started
        stop_server(settings, TIMEOUT)
    except SharedStateError as error:
        server.log.warning("sharedstate: could not stop the server: %s", error)
        return
    server.log.info("sharedstate: stopped the server at %s", settings.address)


def _check_redis(settings: Settings) -> None:
    """Fail the start now, with the reason, if the workers could not reach Redis."""
    transport = connect_sync(settings, start=False, timeout=TIMEOUT)
    try:
        transport.connect()
    finally:
        transport.close()


def chain(*hooks: Hook) -> Hook:
    """One hook that calls ``hooks`` in order with the same arguments::

        post_fork = sharedstate.gunicorn.chain(sharedstate.gunicorn.post_fork, my_post_fork)

    gunicorn checks a hook's number of arguments, so the chained hook takes as many as
    the hooks do (which must agree).
    """
    if not hooks:
        raise TypeError("chain() needs at least one hook")
    signatures = [inspect.signature(hook) for hook in hooks]
    counts = {_positional_count(signature) for signature in signatures}
    if len(counts) != 1:
        names = ", ".join(getattr(hook, "__name__", repr(hook)) for hook in hooks)
        raise TypeError(f"chain() needs hooks that take the same arguments; got {names}")

    def chained(*args: Any) -> None:
        for hook in hooks:
            hook(*args)

    chained.__signature__ = signatures[0]  # type: ignore[attr-defined]
    return chained


def _positional_count(signature: inspect.Signature) -> int:
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(param.kind in positional for param in signature.parameters.values())
