"""Every error sharedstate raises on purpose.

All of them derive from :class:`SharedStateError`, and each also derives from the
builtin exception it resembles, so ``except KeyError`` or ``except ConnectionError``
keeps working for callers who don't know about sharedstate.

They travel from the server to the client pickled, so every class must survive
``pickle.loads(pickle.dumps(error))``: the message is the only positional argument and
the context (address, key, file...) lives in the instance ``__dict__``, which pickle
carries along.
"""

from __future__ import annotations

import reprlib
import typing
from typing import Any


class SharedStateError(Exception):
    """Base class of all sharedstate errors.

    Keyword arguments become attributes, so handlers can read the context::

        try:
            state = get_shared_state(start=False)
        except ServerNotRunning as error:
            print(error.address)
    """

    def __init__(self, message: str = "", **context: Any) -> None:
        super().__init__(message)
        self.__dict__.update(context)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(SharedStateError, ValueError):
    """A setting (address, key, log level...) has a value we can't use."""


class InsecurePermissions(SharedStateError, PermissionError):
    """A file or directory could be read or replaced by other users, so we refuse it."""


class ServerNotRunning(SharedStateError, ConnectionError):
    """Nothing is listening at the address and we were told not to start a server."""


class ConnectionLost(SharedStateError, ConnectionError):
    """The connection to the server broke during a call.

    The call may or may not have taken effect on the server. Later calls reconnect.
    """


class AuthenticationFailed(SharedStateError, PermissionError):
    """Client and server don't share the same key."""


class ServerStartError(SharedStateError, RuntimeError):
    """A server could not be started (address taken, bad files, crash at start)."""


class AlreadyRunning(ServerStartError):
    """Another sharedstate server already serves this address."""


class SnapshotInUse(AlreadyRunning):
    """Another sharedstate server (at another address) already uses this snapshot file.

    ``pid`` and ``holder`` (its address) say which, when it recorded them.
    """


class Timeout(SharedStateError, TimeoutError):
    """Waiting for the server, the lock or an edit took longer than allowed."""


class InvalidKey(SharedStateError, TypeError):
    """A key (or a step of a nested path) has a type the store does not accept."""


class ValueNotPicklable(SharedStateError, ValueError):
    """A value could not be pickled, so it could not be sent to the server."""


class ValueNotLoadable(SharedStateError, ValueError):
    """A pickled value could not be loaded (typically: its class can't be imported)."""


class WrongType(SharedStateError, TypeError):
    """An operation met a value of the wrong type (``incr`` on a str, a path into an int)."""


class LockError(SharedStateError, RuntimeError):
    """The lock or an edit was used out of order (release without acquire, nesting)."""


class LeaseExpired(LockError):
    """``state.lock.release()`` came after the lock's lease ran out.

    The server had already freed the lock, so another holder may have overlapped with
    the work done under it.
    """


class LockLost(LockError):
    """The lock or an edit this thread held was lost with its connection to the server.

    The connection dropped (the server restarted, a call timed out or was interrupted,
    the network broke), so the server freed what the thread held, and another process may
    hold it now. Every call of the thread raises this until it leaves the ``with`` block
    (or calls ``release()``), so it never goes on as if it still held it.
    """


class PersistenceError(SharedStateError, OSError):
    """A write could not be recorded or made durable, so it was refused (disk full...)."""


class CorruptFile(SharedStateError, ValueError):
    """A snapshot, journal or dump file is damaged or of an unknown format.

    ``path`` and ``offset`` say where; nothing was changed in the file.
    """


class TooManyClients(SharedStateError, ConnectionError):
    """The server already serves as many connections as ``max_clients`` allows."""


class ServerStopping(SharedStateError, ConnectionError):
    """The server is shutting down and no longer accepts writes."""


class ServerError(SharedStateError, RuntimeError):
    """The server failed in a way it did not expect; the message has its traceback."""


class KeyNotFound(SharedStateError, KeyError):
    """A key is missing, at the top level or inside a nested container.

    Like ``KeyError``, ``error.args[0]`` is the missing key; ``error.where`` names the
    container it was looked up in (``"state"`` or ``"state['cfg']"``).
    """

    def __init__(self, key: Any, where: str = "state") -> None:
        super().__init__(key)
        self.key = key
        self.where = where

    def __str__(self) -> str:
        try:
            key = repr(self.key)
        except RecursionError:  # a tuple key nested thousands deep
            key = reprlib.repr(self.key)
        return f"key {key} not found in {self.where}"


class AttributeNotFound(SharedStateError, AttributeError):
    """``state.namespace`` has no attribute of that name."""


class IndexOutOfRange(SharedStateError, IndexError):
    """A list index inside a nested value is out of range."""


class ValueTooLarge(SharedStateError, ValueError):
    """A value pickles to more bytes than ``max_value_bytes``; it was not sent."""


class MemoryLimitReached(SharedStateError, MemoryError):
    """A write would take the server past ``SHAREDSTATE_MAX_MEMORY`` and the eviction
    policy can't make room; nothing was written."""


class ValueNotFound(SharedStateError, ValueError):
    """``remove(x)`` on a nested list that does not contain ``x``."""


class InvalidArgument(SharedStateError, ValueError):
    """An argument of the right type that the operation can't use.

    A slice step of 0, a sequence of the wrong size for an extended slice, a list
    changed by its own sort key while ``sort()`` ran: what ``list`` raises ValueError for.
    """


class Conflict(SharedStateError, RuntimeError):
    """A write meant for a list position found something else there, so it was refused.

    Writes through a list index carry the element this process read there; when another
    process (or another view in this one) has moved or changed it since, the write
    would land on a different element, so nothing is written. Read the value again and
    retry. ``where`` names the place.
    """


class WrongEventLoop(SharedStateError, RuntimeError):
    """An asyncio state used in an event loop other than the one it was made in.

    Its connections belong to that loop. Call ``await get_shared_state()`` in each
    loop: it returns that loop's state.
    """


# ``from sharedstate.errors import *`` gives every error class above, and nothing it
# imported; derived, so a new error needs no list kept in step. (mypy reads only a
# literal ``__all__``; without one it exports the classes, the same.)
if not typing.TYPE_CHECKING:
    __all__ = [
        name
        for name, value in globals().items()
        if isinstance(value, type) and issubclass(value, SharedStateError)
    ]
