"""What redis-py's errors mean for the caller: the same :mod:`sharedstate.errors` classes
the local server's clients raise, with a message that says what to do.

No message ever holds the password: addresses are shown redacted, and redis-py's own
messages name only the host and port (or socket).
"""

from __future__ import annotations

from redis import exceptions

from ...address import Address
from ...errors import (
    AuthenticationFailed,
    ConnectionLost,
    MemoryLimitReached,
    ServerError,
    ServerNotRunning,
    SharedStateError,
    Timeout,
    WrongType,
)


def never_sent(error: exceptions.RedisError) -> bool:
    """Whether a connection error came before the command left (so it had no effect)."""
    return isinstance(error, exceptions.ConnectionError) and "connecting to" in str(error)


def worth_resending(error: exceptions.RedisError) -> bool:
    """Whether a read that failed with ``error`` may go once more, on a new connection:
    the connection dropped after the command left (not a refusal, not a timeout)."""
    return (
        isinstance(error, exceptions.ConnectionError)
        and not isinstance(error, exceptions.AuthenticationError)
        and not never_sent(error)
    )


def translated(
    error: exceptions.RedisError, address: Address, method: str, timeout: float | None
) -> SharedStateError:
    text = str(error)
    if isinstance(error, exceptions.AuthenticationError) or text.startswith(
        ("WRONGPASS", "NOAUTH", "invalid password", "NOPERM")
    ):
        return AuthenticationFailed(
            f"Redis at {address} refused us ({text}); check the password (and user) in "
            "SHAREDSTATE_ADDRESS: redis://[USER]:PASSWORD@HOST:PORT/DB",
            address=str(address),
        )
    if isinstance(error, exceptions.BusyLoadingError):
        return ServerNotRunning(
            f"Redis at {address} is still loading its data; try again in a moment",
            address=str(address),
        )
    if isinstance(error, exceptions.TimeoutError):
        return Timeout(
            f"Redis at {address} did not answer {method} within {timeout} s "
            "(SHAREDSTATE_CALL_TIMEOUT); a write may or may not have taken effect",
            address=str(address),
        )
    if isinstance(error, exceptions.ConnectionError):
        if never_sent(error):
            return ServerNotRunning(
                f"no Redis server answers at {address} ({text}); start it, or check "
                "SHAREDSTATE_ADDRESS",
                address=str(address),
            )
        return ConnectionLost(
            f"the connection to Redis at {address} dropped during {method} ({text}); "
            "it may or may not have taken effect: check before doing it again",
            address=str(address),
        )
    if text.startswith("OOM"):
        return MemoryLimitReached(
            f"Redis at {address} refused {method}: it is at its maxmemory and its policy "
            "evicts nothing (noeviction); raise maxmemory, or set maxmemory-policy",
            address=str(address),
        )
    if text.startswith("WRONGTYPE"):
        return WrongType(
            f"a key under this app's prefix in Redis at {address} is not one sharedstate "
            f"wrote ({text}); another program uses the same prefix: set SHAREDSTATE_PREFIX",
            address=str(address),
        )
    if text.startswith("READONLY"):
        return ServerError(
            f"Redis at {address} is a read-only replica; point SHAREDSTATE_ADDRESS at the "
            "primary (or use Sentinel)",
            address=str(address),
        )
    return ServerError(f"Redis at {address} answered {method} with an error: {text}")
