"""What a new connection goes through before the server serves it.

Steps, all run by the event loop (:mod:`sharedstate.server.loop`) as bytes arrive:

1. the server greets it with a fresh nonce (:mod:`sharedstate.handshake`);
2. the client proves it knows the key, and the server proves it back; a wrong proof
   gets FAILURE and the connection is closed;
3. its first request is either ``accept_connection`` (it becomes a store client, if
   ``max_clients`` allows) or one server function (``server_info``, ``shutdown``...),
   answered on that connection, which is then closed.

Nothing is unpickled before step 2 succeeds, and until then a peer may send only a few
hundred bytes. A connection that is not through all steps within :data:`TIMEOUT`
seconds is dropped.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from traceback import format_exc
from typing import Any, Protocol

from .. import handshake
from ..errors import SharedStateError, TooManyClients
from ..protocol import (
    ACCEPT_CONNECTION,
    ERROR,
    RETURN,
    SESSION_ID_BYTES,
    TRACEBACK,
    Reply,
    load_request,
)
from ..sockets import peer_credentials
from .loop import AUTHENTICATED, GREETING, Client, ClientLoop
from .sessions import Sessions

logger = logging.getLogger("sharedstate")

TIMEOUT = 10.0
# TCP keepalive for store clients: a peer whose network vanished is noticed (and what it
# held released) after about IDLE + INTERVAL * COUNT seconds.
KEEPALIVE = {"TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 6}


class ServerFunctions(Protocol):
    """The server's side of the functions a fresh connection may call."""

    clients: dict[int, Client]
    max_clients: int
    display_address: str

    def function(self, name: str) -> tuple[Callable[..., Any], str] | None:
        """The function called ``name`` and how it runs (``"now"``, ``"slow"``,
        ``"at_stop"``), or None if there is none."""
        ...


class Reception:
    """Greets, authenticates and admits new connections."""

    timeout = TIMEOUT
    max_message = handshake.MAX_MESSAGE_BYTES * 16  # the handshake, or a first request

    def __init__(self, key: bytes, instance: bytes, server: ServerFunctions) -> None:
        self._key = key
        self.instance = instance
        self._server = server
        self.sessions = Sessions()
        self.set_aside: list[Client] = []  # asked the server to stop; answered after

    def new_client(self, id: int, sock: socket.socket) -> Client:
        uid = pid = None
        credentials = peer_credentials(sock)
        if credentials is not None:
            pid, uid, _ = credentials
        return Client(id, sock, uid, pid or None)

    def describe(self, client: Client) -> str:
        """Who is at the other end, for logs: ``pid 1234`` or ``host:port``."""
        if client.pid:
            return f"pid {client.pid}"
        try:
            peer = client.sock.getpeername()
        except OSError:
            return "an unknown peer"
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "a local process"

    def greet(self, loop: ClientLoop, client: Client) -> None:
        client.nonce, message = handshake.hello()
        loop.send_frame(client, message)

    def receive(self, loop: ClientLoop, client: Client, message: bytes) -> None:
        if client.stage == GREETING:
            self._check_proof(loop, client, message)
        elif client.stage == AUTHENTICATED:
            self._first_request(loop, client, message)

    def _check_proof(self, loop: ClientLoop, client: Client, message: bytes) -> None:
        client_nonce = handshake.check_auth(self._key, client.nonce, message)
        if client_nonce is None:
            wrong_key = message.startswith(handshake.AUTH)
            logger.warning(
                "refused a connection from %s: %s",
                self.describe(client),
                "it used a wrong key" if wrong_key else "bad handshake",
            )
            loop.send_frame(client, handshake.FAILURE, then_close=True)
            return
        client.stage = AUTHENTICATED
        loop.send_frame(
            client, handshake.welcome(self._key, client.nonce, client_nonce, self.instance)
        )

    def _first_request(self, loop: ClientLoop, client: Client, message: bytes) -> None:
        try:
            _, name, args, _ = load_request(message)
        except Exception as error:
            logger.warning(
                "refused a connection from %s: malformed request (%r)", self.describe(client), error
            )
            loop.hang_up(client)
            return
        if name == ACCEPT_CONNECTION:
            self._admit(loop, client, args)
            return
        found = self._server.function(name) if isinstance(name, str) else None
        if found is None:
            loop.send_reply(
                client, (TRACEBACK, f"{name!r} is not a server function"), then_close=True
            )
            return
        function, how = found
        if how == "at_stop":
            loop.set_aside(client)
            self.set_aside.append(client)
            _answer(function, client, args)  # the answer comes when the server has stopped
        elif how == "slow":
            loop.hand_off(client, lambda: _answer(function, client, args))
            client.closing = True
        else:
            loop.send_reply(client, _answer(function, client, args), then_close=True)

    def _admit(self, loop: ClientLoop, client: Client, args: tuple[Any, ...]) -> None:
        """``accept_connection(name, session id, resume)``: serve its store calls."""
        server = self._server
        if len(server.clients) >= server.max_clients:
            logger.warning(
                "refused a client (%s): already serving %d clients (max_clients)",
                self.describe(client),
                server.max_clients,
            )
            error = TooManyClients(
                f"the server at {server.display_address} already serves {server.max_clients} "
                "connections (one per thread of each worker process); raise its "
                "SHAREDSTATE_MAX_CLIENTS (--max-clients), or use fewer threads or workers",
                address=server.display_address,
            )
            loop.send_reply(client, (ERROR, error), then_close=True)
            return
        name, session_id, resume = (*args, b"", False)[:3]
        client.announced = name if isinstance(name, str) else ""
        if type(session_id) is not bytes or len(session_id) != SESSION_ID_BYTES:
            session_id = os.urandom(SESSION_ID_BYTES)  # a client that won't retry
        client.session, known = self.sessions.attach(session_id, resume=bool(resume))
        server.clients[client.id] = client
        loop.promote(client)
        if client.sock.family == socket.AF_INET:
            _keep_alive(client.sock)
        logger.debug("%s connected", client)
        loop.send_reply(client, (RETURN, {"session_known": known}))

    def departed(self, client: Client) -> None:
        if client.session is not None:
            self.sessions.detach(client.session)
            client.session = None


def _answer(function: Callable[..., Any], client: Client, args: tuple[Any, ...]) -> Reply:
    try:
        return (RETURN, function(client, *args))
    except SharedStateError as error:
        return (ERROR, error)
    except Exception:
        logger.exception("error in a server function")
        return (TRACEBACK, format_exc())


def _keep_alive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in KEEPALIVE.items():
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
