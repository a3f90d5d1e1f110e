"""The server: one store, served to every connection by one event-loop thread.

It began as ``multiprocessing.managers.Server`` and keeps its request shape
(:mod:`sharedstate.protocol`), but not its handshake, which an impostor can reflect (see
:mod:`sharedstate.handshake`), nor its thread per connection:

- the listener and every connection are served by :class:`~sharedstate.server.loop.ClientLoop`,
  handshakes included (:mod:`sharedstate.server.reception`);
- each connection is a :class:`~sharedstate.server.loop.Client` that owns the locks and edits it
  takes; when the connection drops, for whatever reason, they are released;
- store methods receive that client as their first argument;
- the functions a fresh connection may call instead (``server_info``, ``shutdown``...)
  are methods here;
- stopping is an event the main thread waits on, so SIGTERM and ``shutdown`` both end
  in the same clean-up, and whoever asked for the stop hears how the final snapshot went.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..config import DEFAULT_MAX_CLIENTS
from ..errors import PersistenceError, ServerStopping, SharedStateError
from ..persistence.coordinator import Persistence
from ..pidlock import is_running
from ..protocol import RETURN, STORE, dump_reply, frame_header
from .loop import SERVING, Client, ClientLoop
from .reception import Reception
from .store import Store

logger = logging.getLogger("sharedstate")

_STOP_REPLY_TIMEOUT = 10.0
# The reaper of expired keys: keys per batch, seconds between batches while many have
# expired, between looks when none has, and after the journal refused a removal.
REAP_BATCH = 500
REAP_PAUSE = 0.001
REAP_INTERVAL = 0.1
REAP_RETRY = 5.0


class StateServer:
    """Serves one :class:`Store` at ``listener`` until :meth:`stop`."""

    def __init__(
        self,
        store: Store,
        listener: socket.socket,
        authkey: bytes,
        address: str,
        persistence: Persistence | None = None,
        started_by: int | None = None,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        self.store = store
        self.persistence = persistence
        self.started_by = started_by  # the process that ran `serve --detach`, if any
        self.owner_pid: int | None = None
        self.when_owner_dies = "stay"
        # The owner that died while the server stayed up: the next gunicorn may adopt it.
        self.former_owner_pid: int | None = None
        self._owner_lock = threading.Lock()
        self._watching_owner = False
        self.display_address = address
        self.stop_event = threading.Event()
        self.started_at = time.time()
        self.clients: dict[int, Client] = {}  # store clients, touched by the loop thread only
        self.max_clients = max_clients
        self.instance = os.urandom(16)  # this run of the server, for clients' retries
        self.final_snapshot_error: str | None = None
        self.reception = Reception(authkey, self.instance, self)
        self.loop = ClientLoop(
            listener,
            {STORE: (store, Store.EXPOSED, None)},
            self.reception,
            release=store.release_all,
            take_pending_sync=persistence.take_pending_sync if persistence else None,
            on_departure=self._forget,
        )
        store.call_when_freed(self.loop.something_freed)
        self._functions: dict[str, tuple[Callable[..., Any], str]] = {
            "server_info": (self.server_info, "now"),
            "release_pid": (self.release_pid, "now"),
            "set_owner": (self.set_owner, "now"),
            "snapshot_now": (self.snapshot_now, "slow"),
            "shutdown": (self.shutdown, "at_stop"),
        }

    # -- running -------------------------------------------------------------------------

    def serve_until_stopped(self, before_answering_stop: Callable[[], str | None]) -> None:
        """Serve until :meth:`stop`; then run ``before_answering_stop`` (the final
        snapshot: it returns an error message or None) and tell who asked for the stop."""
        loop = threading.Thread(target=self.loop.run, name="clients", daemon=True)
        loop.start()
        reaper = threading.Thread(target=self._remove_expired_keys, name="reaper", daemon=True)
        reaper.start()
        while not self.stop_event.wait(0.5):
            pass
        self.loop.stop()
        loop.join(10)
        self.final_snapshot_error = before_answering_stop()
        for client in self.reception.set_aside:
            self._answer_stop(client)

    def stop(self) -> None:
        self.stop_event.set()

    def _remove_expired_keys(self) -> None:
        """Give back the memory of expired keys nobody reads, soon after they expire.

        Keys go in batches, each one journaled write under the store's lock for about a
        millisecond, with a pause between batches so clients' calls get in: a million
        keys expiring at once take a few seconds to go, and no call waits long for them.
        """
        failing = False
        while not self.stop_event.is_set():
            try:
                removed = self.store.remove_expired(REAP_BATCH)
            except ServerStopping:
                return
            except (SharedStateError, OSError) as error:  # the journal refused: retry later
                if not failing:
                    logger.warning("could not remove expired keys (will retry): %s", error)
                failing = True
                self.stop_event.wait(REAP_RETRY)
                continue
            failing = False
            if removed < REAP_BATCH:
                self.stop_event.wait(REAP_INTERVAL)
            else:
                time.sleep(REAP_PAUSE)

    def function(self, name: str) -> tuple[Callable[..., Any], str] | None:
        return self._functions.get(name)

    def _forget(self, client: Client) -> None:
        self.clients.pop(client.id, None)
        self.reception.departed(client)

    def _answer_stop(self, client: Client) -> None:
        error = self.final_snapshot_error
        data = dump_reply((RETURN, {"final_snapshot_error": error}))
        with contextlib.suppress(OSError):
            client.sock.settimeout(_STOP_REPLY_TIMEOUT)
            client.sock.sendall(frame_header(len(data)) + data)
        client.sock.close()

    # -- server functions (callable on a fresh connection) -----------------------------

    def shutdown(self, caller: Client) -> None:
        logger.info("stop requested by %s", self.reception.describe(caller))
        self.stop()

    def snapshot_now(self, caller: Client) -> dict[str, Any]:
        """Write a snapshot now (``sharedstate snapshot``)."""
        if self.persistence is None:
            raise PersistenceError(
                "this server keeps its state in memory only; start it with --snapshot PATH "
                "(or SHAREDSTATE_SNAPSHOT) to save it"
            )
        return self.persistence.snapshot_now()

    def set_owner(self, caller: Client, pid: int, when_owner_dies: str) -> None:
        """Server function: tie this server to process ``pid`` (a gunicorn master)."""
        self.watch_owner(pid, when_owner_dies)

    def watch_owner(self, pid: int, when_owner_dies: str) -> None:
        """Watch ``pid``; when it dies, stay up or stop, as ``when_owner_dies`` says."""
        with self._owner_lock:
            adopted = self.former_owner_pid
            self.owner_pid = pid
            self.former_owner_pid = None
            self.when_owner_dies = when_owner_dies
            start = not self._watching_owner
            self._watching_owner = True
        if adopted is not None:
            logger.warning(
                "adopted by process %d (if it dies: %s); its former owner, process %d, died "
                "without stopping it",
                pid,
                when_owner_dies,
                adopted,
            )
        else:
            logger.info("owned by process %d (if it dies: %s)", pid, when_owner_dies)
        if start:
            threading.Thread(target=self._watch_owner, name="owner-watch", daemon=True).start()

    def _watch_owner(self) -> None:
        while not self.stop_event.wait(0.5):
            pid = self.owner_pid
            if pid is None or is_running(pid):
                continue
            with self._owner_lock:
                if self.owner_pid != pid:
                    continue  # a new owner took over meanwhile
                if self.when_owner_dies == "stop":
                    logger.warning("the owner of this server (pid %d) is gone; stopping", pid)
                    self.stop()
                else:
                    logger.warning(
                        "the owner of this server (pid %d) is gone; staying up. The next "
                        "gunicorn that attaches adopts it (and stops it when it exits); until "
                        "then nothing stops it but `sharedstate stop`",
                        pid,
                    )
                    self.owner_pid = None
                    self.former_owner_pid = pid
                self._watching_owner = False
            return

    def release_pid(self, caller: Client, pid: int) -> list[str]:
        """Free what the connections of process ``pid``, now dead, hold; hang them up.

        gunicorn's ``child_exit`` calls this for a dead worker: a belt to the release
        that happens anyway when its connections drop. Only connections the kernel says
        belong to ``pid`` (Unix sockets) count, and only if ``pid`` is no longer running:
        a pid a client announces proves nothing, and over TCP pids of other machines and
        containers repeat.
        """
        if type(pid) is not int or is_running(pid):
            return []
        victims = [c for c in self.clients.values() if c.pid == pid and c.stage == SERVING]
        released: list[str] = []
        for client in victims:
            released += self.store.release_all(client)
            self.loop.hang_up(client)
        if released:
            logger.info("process %d is gone; released %s", pid, ", ".join(released))
        return released

    def server_info(self, caller: Client) -> dict[str, Any]:
        """What ``sharedstate status`` shows."""
        clients = [
            {
                "id": client.id,
                "pid": client.pid,
                "uid": client.uid,
                "name": client.announced,
                "connected_at": client.connected_at,
                "requests": client.requests,
            }
            for client in self.clients.values()
        ]
        return {
            "address": self.display_address,
            "pid": os.getpid(),
            "version": __version__,
            "started_at": self.started_at,
            "uptime": time.time() - self.started_at,
            "clients": clients,
            "waiting": self.loop.waiting,
            "persistence": self.persistence.status() if self.persistence else None,
            "owner_pid": self.owner_pid,
            "former_owner_pid": self.former_owner_pid,
            "started_by": self.started_by,
            "memory_bytes": _rss_bytes(),
            **self.store.stats(),
        }


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
