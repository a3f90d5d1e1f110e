"""What the sync and asyncio Redis drivers share: how to reach Redis, and what to check."""

from __future__ import annotations

import os
from typing import Any

from ...address import Address
from ...config import Settings
from ...errors import ServerError

# GETDEL, SET ... PXAT and KEEPTTL came in 6.2; Valkey reports a redis_version too.
OLDEST_REDIS = (6, 2)

# The calls that end a hold: they check what is held themselves.
ENDS_HOLD = frozenset({"lock_release", "edit_commit", "edit_abort"})
# The calls that take something for the caller: the lock, an edit.
TAKES = frozenset({"lock_acquire", "edit_begin"})

# Our schemes that redis-py spells otherwise.
_REDIS_PY_SCHEMES = {"valkey": "redis", "valkeys": "rediss", "redis+unix": "unix"}


def redis_py_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return _REDIS_PY_SCHEMES.get(scheme.lower(), scheme) + sep + rest


def pool_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of redis-py's ``ConnectionPool.from_url`` (sync or asyncio),
    besides the URL and ``retry``."""
    timeout = settings.call_timeout
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "client_name": "sharedstate",
        "decode_responses": False,
    }


def check_version(info: dict[str, Any], address: Address) -> None:
    version = str(info.get("redis_version", "0"))
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if numbers < OLDEST_REDIS:
        raise ServerError(
            f"Redis at {address} is version {version}; sharedstate needs Redis "
            f"{'.'.join(map(str, OLDEST_REDIS))} or later (or Valkey)",
            address=str(address),
        )


_pid = os.getpid()


def current_pid() -> int:
    """``os.getpid()`` without a system call on every store call."""
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)
