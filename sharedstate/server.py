"""The server: a ``multiprocessing.managers.Server`` serving one store.

What we change from the stock Server, and why:

- the listener is bound by us (after checking for a stale socket) with a larger backlog,
  so 16+ workers starting at once are not refused;
- the handshake runs with a timeout, failures are logged, and a wrong key never
  disturbs other clients;
- authenticated connections are served by one event-loop thread
  (:mod:`sharedstate.loop`) instead of a thread each;
- each connection is a :class:`~sharedstate.loop.Client` that owns the locks and edits it
  takes; when the connection drops, for whatever reason, they are released;
- store methods receive that client as their first argument;
- stopping is an event the main thread waits on, so SIGTERM and ``shutdown`` both end
  in the same clean-up.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import socket
import threading
import time
from multiprocessing import AuthenticationError, process
from multiprocessing.connection import (
    Connection,
    Listener,
    answer_challenge,
    deliver_challenge,
)
from multiprocessing.managers import Server
from traceback import format_exc
from typing import Any, ClassVar

from . import __version__
from .codec import PROTOCOL
from .config import DEFAULT_MAX_CLIENTS, MAX_REQUEST_BYTES
from .errors import PersistenceError, SharedStateError, TooManyClients
from .loop import Client, ClientLoop, load_request
from .manager import STORE_IDENT, SharedStateManager, serve_store
from .persistence import Persistence
from .sockets import describe_peer, io_timeout, peer_pid
from .store import Store

logger = logging.getLogger("sharedstate")

HANDSHAKE_TIMEOUT = 10.0
# New connections authenticated at once, a thread each. More wait in the listen backlog,
# so a flood of connections that never finish their handshake can't spawn threads
# without end (each holds a slot for at most HANDSHAKE_TIMEOUT).
MAX_HANDSHAKES = 64


class StateServer(Server):
    """A manager Server hosting one :class:`Store` under :data:`STORE_IDENT`."""

    # The functions a new connection may call first: Server's, plus server_info.
    public: ClassVar[list[str]] = [
        "shutdown", "create", "accept_connection", "get_methods", "debug_info",
        "number_of_objects", "dummy", "incref", "decref", "server_info", "snapshot_now",
        "release_pid", "set_owner",
    ]  # fmt: skip

    def __init__(
        self,
        store: Store,
        listener: Listener,
        authkey: bytes,
        address: str,
        persistence: Persistence | None = None,
        started_by: int | None = None,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        # Server.__init__ would bind its own listener; set the same attributes instead.
        self.registry = SharedStateManager._registry  # type: ignore[attr-defined]
        self.authkey = process.AuthenticationString(authkey)  # type: ignore[attr-defined]
        self.listener = listener
        self.address = listener.address
        self.id_to_obj: dict[str, Any] = {"0": (None, ())}
        self.id_to_refcount: dict[str, int] = {}
        self.id_to_local_proxy_obj: dict[str, Any] = {}
        self.mutex = threading.Lock()

        self.store = store
        self.persistence = persistence
        self.started_by = started_by  # the process that ran `serve --detach`, if any
        self.owner_pid: int | None = None
        self.when_owner_dies = "stay"
        serve_store(store)
        self.id_to_obj[STORE_IDENT] = (store, Store.EXPOSED, None)
        self.id_to_refcount[STORE_IDENT] = 1  # never released
        self.display_address = address
        self.stop_event = threading.Event()
        self.started_at = time.time()
        self.clients: dict[int, Client] = {}
        self.max_clients = max_clients
        self._handshake_slots = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self._clients_lock = threading.Lock()
        self._client_ids = itertools.count(1)
        self.loop = ClientLoop(
            self.id_to_obj,
            release=store.release_all,
            take_pending_sync=persistence.take_pending_sync if persistence else None,
            on_departure=self._forget,
        )
        store.call_when_freed(self.loop.something_freed)

    # -- accepting and authenticating --------------------------------------------------

    def serve_until_stopped(self) -> None:
        """Accept clients until :meth:`stop` (a signal handler, or ``shutdown``)."""
        accepter = threading.Thread(target=self.accepter, name="accepter", daemon=True)
        accepter.start()
        loop = threading.Thread(target=self.loop.run, name="clients", daemon=True)
        loop.start()
        while not self.stop_event.wait(0.5):
            pass
        self.loop.stop()
        self.listener.close()  # also removes the socket file

    def stop(self) -> None:
        self.stop_event.set()

    def accepter(self) -> None:
        while not self.stop_event.is_set():
            self._handshake_slots.acquire()  # released by handle_request
            try:
                conn = self.listener.accept()
            except OSError:
                self._handshake_slots.release()
                continue
            threading.Thread(target=self.handle_request, args=(conn,), daemon=True).start()

    def handle_request(self, conn: Connection) -> None:
        """Authenticate a new connection, then answer its first request."""
        try:
            if not self._authenticate(conn):
                return
            message = conn.recv_bytes(MAX_REQUEST_BYTES)
            try:
                ignore, funcname, args, kwds = load_request(message)
            except Exception as error:
                logger.warning(
                    "refused a connection from %s: malformed request (%r)",
                    describe_peer(conn),
                    error,
                )
                return
            if funcname not in self.public:
                conn.send_bytes(_dumps(("#TRACEBACK", f"{funcname!r} is not a server function")))
                return
            if funcname == "accept_connection":
                self._accept_client(conn, args[0] if args else "")
                return
            try:
                reply = ("#RETURN", getattr(self, funcname)(conn, *args, **kwds))
            except SharedStateError as error:
                reply = ("#ERROR", error)
            except Exception:
                reply = ("#TRACEBACK", format_exc())
            conn.send_bytes(_dumps(reply))
        except (EOFError, OSError):
            pass  # the client went away; nothing to answer
        except Exception:
            logger.exception("unexpected error on a new connection from %s", describe_peer(conn))
        finally:
            conn.close()
            self._handshake_slots.release()

    def _authenticate(self, conn: Connection) -> bool:
        try:
            with io_timeout(conn, HANDSHAKE_TIMEOUT):
                deliver_challenge(conn, self.authkey)
                answer_challenge(conn, self.authkey)
        except AuthenticationError:
            logger.warning("refused a connection from %s: it used a wrong key", describe_peer(conn))
            return False
        except (EOFError, OSError, AssertionError, ValueError) as error:
            logger.warning(
                "refused a connection from %s: bad handshake (%s)",
                describe_peer(conn),
                error.__class__.__name__,
            )
            return False
        return True

    # -- serving one client --------------------------------------------------------------

    def _accept_client(self, conn: Connection, name: str) -> None:
        """Hand an authenticated connection to the event loop, if there is room."""
        pid = peer_pid(conn) or _announced_pid(name)
        with self._clients_lock:
            if len(self.clients) >= self.max_clients:
                client = None
            else:
                sock = socket.socket(fileno=os.dup(conn.fileno()))  # conn is closed after
                client = Client(next(self._client_ids), sock, pid)
                self.clients[client.id] = client
        if client is None:
            logger.warning(
                "refused a client%s: already serving %d clients (max_clients)",
                f" (pid {pid})" if pid else "",
                self.max_clients,
            )
            error = TooManyClients(
                f"the server at {self.display_address} already serves {self.max_clients} "
                "connections (one per thread of each worker process); raise its "
                "SHAREDSTATE_MAX_CLIENTS (--max-clients), or use fewer threads or workers",
                address=self.display_address,
            )
            conn.send_bytes(_dumps(("#ERROR", error)))
            return
        try:
            conn.send_bytes(_dumps(("#RETURN", None)))
        except BaseException:
            self._forget(client)
            client.sock.close()
            raise
        logger.debug("%s connected", client)
        self.loop.adopt(client)

    def _forget(self, client: Client) -> None:
        with self._clients_lock:
            self.clients.pop(client.id, None)

    # -- server functions (callable on a fresh connection) -----------------------------

    def shutdown(self, c: Connection) -> None:
        logger.info("stop requested by %s", describe_peer(c))
        self.stop()

    def snapshot_now(self, c: Connection) -> dict[str, Any]:
        """Write a snapshot now (``sharedstate snapshot``)."""
        if self.persistence is None:
            raise PersistenceError(
                "this server keeps its state in memory only; start it with --snapshot PATH "
                "(or SHAREDSTATE_SNAPSHOT) to save it"
            )
        return self.persistence.snapshot_now()

    def set_owner(self, c: Connection, pid: int, when_owner_dies: str) -> None:
        """Server function: tie this server to process ``pid`` (a gunicorn master)."""
        self.watch_owner(pid, when_owner_dies)

    def watch_owner(self, pid: int, when_owner_dies: str) -> None:
        """Watch ``pid``; when it dies, stay up or stop, as ``when_owner_dies`` says."""
        first = self.owner_pid is None
        self.owner_pid = pid
        self.when_owner_dies = when_owner_dies
        logger.info("owned by process %d (if it dies: %s)", pid, when_owner_dies)
        if first:
            threading.Thread(target=self._watch_owner, name="owner-watch", daemon=True).start()

    def _watch_owner(self) -> None:
        while not self.stop_event.wait(0.5):
            pid = self.owner_pid
            if pid is None or is_running(pid):
                continue
            if self.when_owner_dies == "stop":
                logger.warning("the owner of this server (pid %d) is gone; stopping", pid)
                self.stop()
            else:
                logger.warning("the owner of this server (pid %d) is gone; staying up", pid)
            return

    def release_pid(self, c: Connection, pid: int) -> list[str]:
        """Free what the connections of process ``pid`` hold and hang them up.

        gunicorn's ``child_exit`` calls this for a dead worker: a belt to the release
        that happens anyway when its connections drop.
        """
        with self._clients_lock:
            victims = [client for client in self.clients.values() if client.pid == pid]
        released = []
        for client in victims:
            released += self.store.release_all(client)
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_RDWR)  # the loop sees it leave
        if released:
            logger.info("process %d is gone; released %s", pid, ", ".join(released))
        return released

    def server_info(self, c: Connection) -> dict[str, Any]:
        """What ``sharedstate status`` shows."""
        with self._clients_lock:
            clients = [
                {
                    "id": client.id,
                    "pid": client.pid,
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
            "started_by": self.started_by,
            "memory_bytes": _rss_bytes(),
            **self.store.stats(),
        }


def is_running(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as file:
                return file.read().rsplit(b")", 1)[1].split()[0] != b"Z"
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's process
    return True


def _announced_pid(name: str) -> int | None:
    prefix, _, pid = name.partition("-")
    return int(pid) if prefix == "client" and pid.isdigit() else None


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _dumps(message: Any) -> bytes:
    return pickle.dumps(message, protocol=PROTOCOL)
