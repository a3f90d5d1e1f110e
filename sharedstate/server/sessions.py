"""Remembering each client's last write, so a write cut off in flight can be retried once.

When a connection drops between a write and its reply, the client can't know whether the
write happened. Each client thread therefore has a *session* (a random id it keeps across
reconnections) and numbers its writes; the server remembers, per session, the number of
the last write it applied and the reply it gave. A retried write with that number gets the
same reply again instead of being applied twice.

A session outlives its connection for :data:`KEEP_SECONDS` (a retry comes within a call
timeout or so), up to :data:`MAX_KEPT` sessions and :data:`MAX_KEPT_BYTES` of remembered
replies; past that the oldest are forgotten, and a client resuming a forgotten session is
told so: it then reports the cut-off write as "may or may not have happened" rather than
risk applying it twice. Nothing here survives a server restart: a new server has a new
instance id, and clients don't retry across it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

KEEP_SECONDS = 300.0
MAX_KEPT = 10_000
MAX_KEPT_BYTES = 64 << 20


class Session:
    """One client thread's write history, as far as retries need it."""

    __slots__ = ("connections", "durable", "id", "last_rid", "left_at", "reply")

    def __init__(self, id: bytes) -> None:
        self.id = id
        self.last_rid = 0  # the number of the last write applied
        self.reply: tuple[str, Any] | None = None  # what that write answered
        # Under fsync=always: what the reply must wait for (run again for a retry).
        self.durable: Callable[[], None] | None = None
        self.connections = 0
        self.left_at = 0.0

    def remember(
        self, rid: int, reply: tuple[str, Any], durable: Callable[[], None] | None
    ) -> None:
        self.last_rid = rid
        self.reply = reply
        self.durable = durable

    @property
    def reply_bytes(self) -> int:
        result = self.reply[1] if self.reply is not None else None
        return len(result) if isinstance(result, (bytes, bytearray)) else 0


class Sessions:
    """The sessions of connected clients, and of recently departed ones.

    Used from the server's event-loop thread only.
    """

    def __init__(self) -> None:
        self._sessions: dict[bytes, Session] = {}
        self._departed: OrderedDict[bytes, Session] = OrderedDict()  # oldest first
        self._departed_bytes = 0

    def attach(self, session_id: bytes, *, resume: bool) -> tuple[Session, bool]:
        """The session for a new connection; and, when resuming, whether it was known."""
        self._forget_old()
        session = self._sessions.get(session_id)
        if session is None:
            session = self._departed.pop(session_id, None)
            if session is not None:
                self._departed_bytes -= session.reply_bytes
                self._sessions[session_id] = session
        known = session is not None
        if session is None:
            session = Session(session_id)
            self._sessions[session_id] = session
        session.connections += 1
        return session, known or not resume

    def detach(self, session: Session) -> None:
        """A connection of ``session`` is gone; keep the session a while for its retry."""
        session.connections -= 1
        if session.connections > 0 or self._sessions.get(session.id) is not session:
            return
        del self._sessions[session.id]
        session.left_at = time.monotonic()
        self._departed[session.id] = session
        self._departed_bytes += session.reply_bytes
        self._forget_old()

    def _forget_old(self) -> None:
        limit = time.monotonic() - KEEP_SECONDS
        while self._departed:
            oldest = next(iter(self._departed.values()))
            too_many = len(self._departed) > MAX_KEPT or self._departed_bytes > MAX_KEPT_BYTES
            if not too_many and oldest.left_at > limit:
                return
            self._departed.popitem(last=False)
            self._departed_bytes -= oldest.reply_bytes

    def __len__(self) -> int:
        return len(self._sessions) + len(self._departed)
