"""The wire protocol, defined once for the client, the server and journal replay.

After the handshake (:mod:`sharedstate.handshake`) every message is a *frame*: a length,
then that many bytes, the framing of :mod:`multiprocessing.connection`, so the client's
``Connection`` speaks it too::

    length (i32, big-endian) | payload             payloads under 2 GiB
    -1 (i32) | length (u64, big-endian) | payload   larger ones

A request's payload is the pickle of ``(object id, name, args, request number)``: the
object id is :data:`STORE` for the store's operations, None for a server function. A
reply's payload is the pickle of ``(kind, result)``, kind one of :data:`RETURN`,
:data:`ERROR` (result: a :class:`~sharedstate.errors.SharedStateError`),
:data:`TRACEBACK` (result: a server-side traceback as text) or :data:`UNSERIALIZABLE`
(the result could not be pickled; a traceback again).

Each store operation is in :data:`OPERATIONS` with what it may do:

- reads change nothing: a read cut off by a dropped connection is simply sent again;
- writes are numbered per client session and journaled: a write cut off in flight is
  sent again with its number, and the server applies it at most once
  (:mod:`sharedstate.server.sessions`);
- reservations take or free what a connection holds (the lock, an edit): when it drops,
  the server frees them, and the client's thread learns it lost them
  (:class:`~sharedstate.errors.LockLost`). They are never sent again.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from enum import Enum
from traceback import format_exc
from typing import Any

from .codec import PROTOCOL as PICKLE_PROTOCOL

# -- what a request is addressed to ------------------------------------------------------

STORE = "sharedstate-store"  # the object id of store operations
ACCEPT_CONNECTION = "accept_connection"  # the first request of a store client
# Server functions a fresh connection may call instead (answered, then it is closed).
SERVER_FUNCTIONS = frozenset(
    {"server_info", "release_pid", "set_owner", "snapshot_now", "shutdown"}
)
# One call's whole message, at most, on both sides of the wire.
MAX_REQUEST_BYTES = 1 << 30
# A client's session id: the server remembers its last write under it (retries).
SESSION_ID_BYTES = 16


class Kind(Enum):
    READ = "read"
    WRITE = "write"
    RESERVATION = "reservation"


@dataclass(frozen=True)
class Operation:
    """A store operation clients may call."""

    name: str
    kind: Kind
    may_wait: bool = False  # the server may hold the reply on purpose (a timeout given)

    @property
    def writes(self) -> bool:
        """Numbered per session, applied at most once, journaled."""
        return self.kind is Kind.WRITE


def _table(*operations: Operation) -> dict[str, Operation]:
    return {operation.name: operation for operation in operations}


OPERATIONS = _table(
    Operation("lookup", Kind.READ),
    Operation("get_many", Kind.READ),
    Operation("contains", Kind.READ),
    Operation("length", Kind.READ),
    Operation("keys", Kind.READ),
    Operation("items", Kind.READ),
    Operation("values", Kind.READ),
    Operation("copy", Kind.READ),
    Operation("export_all", Kind.READ),
    Operation("ns_lookup", Kind.READ),
    Operation("ns_items", Kind.READ),
    Operation("lock_locked", Kind.READ),
    Operation("ttl", Kind.READ),
    Operation("set", Kind.WRITE),
    Operation("delete", Kind.WRITE),
    Operation("setdefault", Kind.WRITE),
    Operation("pop", Kind.WRITE),
    Operation("update", Kind.WRITE),
    Operation("delete_many", Kind.WRITE),
    Operation("clear", Kind.WRITE),
    Operation("incr", Kind.WRITE),
    Operation("nested", Kind.WRITE),
    Operation("restore", Kind.WRITE),
    Operation("ns_set", Kind.WRITE),
    Operation("ns_delete", Kind.WRITE),
    Operation("add", Kind.WRITE),
    Operation("expire", Kind.WRITE),
    Operation("persist", Kind.WRITE),
    Operation("lock_acquire", Kind.RESERVATION, may_wait=True),
    Operation("lock_release", Kind.RESERVATION),
    Operation("edit_begin", Kind.RESERVATION, may_wait=True),
    Operation("edit_commit", Kind.RESERVATION),
    Operation("edit_abort", Kind.RESERVATION),
)
READS = frozenset(name for name, op in OPERATIONS.items() if op.kind is Kind.READ)

# -- requests ------------------------------------------------------------------------------

Request = tuple[Any, str, tuple[Any, ...], int]
_PROTO_OPCODE = pickle.PROTO[0]


def dump_request(target: str | None, name: str, args: tuple[Any, ...], number: int = 0) -> bytes:
    """The payload of a request (may raise what pickling ``args`` raises)."""
    return pickle.dumps((target, name, args, number), protocol=PICKLE_PROTOCOL)


def load_request(message: bytes) -> Request:
    """Unpickle a request: ``(object id, name, args, request number)``; ValueError if it isn't.

    Requests are pickles of protocol 2 or later, which start by saying so. Checking
    that first keeps stray bytes away from the unpickler, which takes some short inputs
    as orders to allocate gigabytes (a memo index of 2**31). Crafted pickles are another
    matter: whoever has the key may run code here anyway.
    """
    if len(message) < 2 or message[0] != _PROTO_OPCODE or not 2 <= message[1] <= PICKLE_PROTOCOL:
        raise ValueError("not a pickle")
    request = pickle.loads(message)
    if type(request) is not tuple or len(request) != 4 or type(request[2]) is not tuple:
        raise ValueError("not a request")
    return request


# -- replies -------------------------------------------------------------------------------

RETURN = "#RETURN"
ERROR = "#ERROR"
TRACEBACK = "#TRACEBACK"
UNSERIALIZABLE = "#UNSERIALIZABLE"
Reply = tuple[str, Any]


def dump_reply(reply: Reply) -> bytes:
    """The payload of ``reply``; if its result can't be pickled, an UNSERIALIZABLE one."""
    try:
        return pickle.dumps(reply, protocol=PICKLE_PROTOCOL)
    except Exception:
        return pickle.dumps((UNSERIALIZABLE, format_exc()), protocol=PICKLE_PROTOCOL)


def load_reply(payload: bytes) -> Reply:
    """A reply's ``(kind, result)`` (the server is trusted: it proved it has the key)."""
    kind, result = pickle.loads(payload)
    return kind, result


# -- framing -------------------------------------------------------------------------------

LENGTH = struct.Struct("!i")
LONG_LENGTH = struct.Struct("!Q")
_LONGEST_SHORT = 0x7FFFFFFF


def frame_header(size: int) -> bytes:
    """What goes before a payload of ``size`` bytes."""
    if size > _LONGEST_SHORT:
        return LENGTH.pack(-1) + LONG_LENGTH.pack(size)
    return LENGTH.pack(size)


def take_message(inbox: bytearray, limit: int) -> bytes | None:
    """Remove and return the first whole message in ``inbox``, if there is one.

    Raises ValueError for a length over ``limit``: garbage, or a peer that must not
    send that much.
    """
    if len(inbox) < LENGTH.size:
        return None
    (size,) = LENGTH.unpack_from(inbox)
    start = LENGTH.size
    if size == -1:
        if len(inbox) < LENGTH.size + LONG_LENGTH.size:
            return None
        (size,) = LONG_LENGTH.unpack_from(inbox, LENGTH.size)
        start += LONG_LENGTH.size
    if not 0 <= size <= limit:
        raise ValueError(f"bad message length {size}")
    end = start + size
    if len(inbox) < end:
        return None
    message = bytes(inbox[start:end])
    del inbox[:end]
    return message
