"""How a new connection proves, both ways, that each end knows the key.

multiprocessing's handshake is symmetric: each side sends a random challenge and the
other answers with ``HMAC(key, challenge)``. So an impostor without the key, holding two
client connections, can hand one client's challenge to the other and relay the answer:
it passes as the server, and the client then loads the impostor's pickles, which run its
code. Ours binds each proof to its direction and to both nonces of the connection::

    server -> client   HELLO    "sharedstate-auth-1 hello " + server nonce
    client -> server   AUTH     "auth " + client nonce + HMAC(key, "client" | both nonces)
    server -> client   WELCOME  "welcome " + instance + HMAC(key, "server" | both nonces | instance)
                       or FAILURE

A client only ever computes the "client" proof, so no number of clients can give an
impostor the server's; and a proof is worth nothing on another connection, whose nonces
differ. ``instance`` names this run of the server (a restarted server has a new one),
so a client knows whether a call cut off by a dropped connection may be retried.

Messages travel in ``multiprocessing.connection``'s frames (a 4-byte length, then the
bytes), like everything after them. This module holds the messages and the proofs; the
client's side of the exchange is :class:`ClientProof` (which the sync and the asyncio
clients drive), the server's lives in its event loop (:mod:`sharedstate.server.reception`),
which must never block.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from multiprocessing.connection import Connection

NONCE_BYTES = 32
INSTANCE_BYTES = 16
_PROOF_BYTES = hashlib.sha256().digest_size

HELLO = b"sharedstate-auth-1 hello "
AUTH = b"auth "
WELCOME = b"welcome "
FAILURE = b"failure"
# Every handshake message is shorter: a peer announcing more is not one of ours.
MAX_MESSAGE_BYTES = 256

_CLIENT = b"sharedstate client\0"
_SERVER = b"sharedstate server\0"


class HandshakeFailed(Exception):
    """The other end is not a sharedstate peer holding the same key (the reason says why)."""

    def __init__(self, reason: str, *, wrong_key: bool = False) -> None:
        super().__init__(reason)
        self.wrong_key = wrong_key


def _proof(key: bytes, direction: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, direction + b"".join(parts), hashlib.sha256).digest()


# -- the server's side: pure functions its event loop calls ------------------------------


def hello() -> tuple[bytes, bytes]:
    """A fresh server nonce, and the HELLO message that carries it."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, HELLO + nonce


def check_auth(key: bytes, server_nonce: bytes, message: bytes) -> bytes | None:
    """The client's nonce if ``message`` is an AUTH with the right proof, else None."""
    if len(message) != len(AUTH) + NONCE_BYTES + _PROOF_BYTES or not message.startswith(AUTH):
        return None
    client_nonce = message[len(AUTH) : len(AUTH) + NONCE_BYTES]
    proof = message[len(AUTH) + NONCE_BYTES :]
    expected = _proof(key, _CLIENT, server_nonce, client_nonce)
    return client_nonce if hmac.compare_digest(proof, expected) else None


def welcome(key: bytes, server_nonce: bytes, client_nonce: bytes, instance: bytes) -> bytes:
    """The WELCOME message: the server's proof, for an authenticated client."""
    return WELCOME + instance + _proof(key, _SERVER, server_nonce, client_nonce, instance)


# -- the client's side ---------------------------------------------------------------------


def authenticate(conn: Connection, key: bytes) -> bytes:
    """Run the client's side on a fresh connection; return the server's instance id.

    Raises :class:`HandshakeFailed` unless the server proved it knows ``key``, before
    anything from the server is unpickled. Socket errors and timeouts propagate.
    """
    proving = ClientProof(key)
    conn.send_bytes(proving.answer(conn.recv_bytes(MAX_MESSAGE_BYTES)))
    return proving.check(conn.recv_bytes(MAX_MESSAGE_BYTES))


class ClientProof:
    """The client's side of the exchange, without I/O: for the sync and asyncio clients.

    :meth:`answer` takes the server's HELLO and gives the AUTH to send;
    :meth:`check` takes the server's answer and gives its instance id.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._server_nonce = b""
        self._client_nonce = os.urandom(NONCE_BYTES)

    def answer(self, greeting: bytes) -> bytes:
        if greeting.startswith(b"#CHALLENGE#"):
            raise HandshakeFailed(
                "it speaks multiprocessing's handshake: a sharedstate server older than this "
                "client (stop it, and start it again with this version), or another "
                "multiprocessing program"
            )
        if len(greeting) != len(HELLO) + NONCE_BYTES or not greeting.startswith(HELLO):
            raise HandshakeFailed(
                "it does not speak sharedstate's handshake (is another program using that "
                "address?)"
            )
        self._server_nonce = greeting[len(HELLO) :]
        nonces = (self._server_nonce, self._client_nonce)
        return AUTH + self._client_nonce + _proof(self._key, _CLIENT, *nonces)

    def check(self, answer: bytes) -> bytes:
        if answer == FAILURE:
            raise HandshakeFailed("it uses a different key", wrong_key=True)
        size = len(WELCOME) + INSTANCE_BYTES + _PROOF_BYTES
        if len(answer) != size or not answer.startswith(WELCOME):
            raise HandshakeFailed(
                "it does not speak sharedstate's handshake (is another program using that "
                "address?)"
            )
        instance = answer[len(WELCOME) : len(WELCOME) + INSTANCE_BYTES]
        proof = answer[len(WELCOME) + INSTANCE_BYTES :]
        nonces = (self._server_nonce, self._client_nonce)
        if not hmac.compare_digest(proof, _proof(self._key, _SERVER, *nonces, instance)):
            raise HandshakeFailed(
                "it could not prove that it knows the key (another user's program posing as "
                "your server, or a server with another key)"
            )
        return instance
