"""Validators of settings: each turns a given value into the value the code uses.

A value comes as text (from a flag, the environment or ``.env``) or as a Python value
(an argument of ``get_shared_state()``). A validator returns what the code uses, or raises
:class:`~sharedstate.errors.ConfigError` saying what is wrong. None never reaches one:
an unset setting takes its default (:mod:`sharedstate.config`).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence
from typing import Any

from .errors import ConfigError
from .permissions import MIN_KEY_BYTES
from .protocol import MAX_REQUEST_BYTES


def _either(choices: Sequence[str]) -> str:
    """``"a, b or c"``."""
    return f"{', '.join(choices[:-1])} or {choices[-1]}"


def validate_user(value: Any) -> int:
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise ConfigError(f"{value!r} is neither a user name nor a uid on this machine") from None


def validate_key(value: Any) -> bytes:
    key = value if isinstance(value, bytes) else str(value).encode()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the key is {len(key)} bytes; use at least {MIN_KEY_BYTES} random bytes, e.g. "
            "the output of: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return key


def validate_path(value: Any) -> str:
    return os.path.abspath(os.path.expanduser(str(value)))


def validate_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{value!r} is not a yes/no value; use 1/0, true/false, yes/no or on/off")


def validate_interval(value: Any) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0.1 <= seconds <= 86_400:
        raise ConfigError(f"{value!r} is not a number of seconds from 0.1 to 86400")
    return seconds


def validate_pid(value: Any) -> int:
    try:
        pid = int(value)
    except ValueError:
        pid = 0
    if pid <= 0:
        raise ConfigError(f"{value!r} is not a process id")
    return pid


WHEN_OWNER_DIES = ("stay", "stop")


def validate_when_owner_dies(value: Any) -> str:
    choice = str(value).strip().lower()
    if choice not in WHEN_OWNER_DIES:
        raise ConfigError(f"{value!r} is neither stay nor stop")
    return choice


def validate_max_clients(value: Any) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(f"{value!r} is not a number of clients (a whole number from 1)")
    return count


def validate_call_timeout(value: Any) -> float | None:
    """Seconds, or ``None`` for 0: wait forever."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ConfigError(f"{value!r} is not a number of seconds (0 waits forever)")
    return seconds or None


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _parse_size(value: Any) -> int:
    """Bytes written ``65536``, ``64K``, ``64M``, ``1G``, ``1.5G`` (``64MB``, ``64MiB``
    too); 0 for what is not a size, so callers refuse it with their own range."""
    text = str(value).strip().lower().removesuffix("b").removesuffix("i")
    number, unit = (text[:-1], text[-1]) if text[-1:] in _SIZE_UNITS else (text, "")
    try:
        return int(float(number) * _SIZE_UNITS[unit])
    except (ValueError, OverflowError):  # OverflowError: "inf"
        return 0


def validate_size(value: Any) -> int:
    """A number of bytes from 1 to :data:`MAX_REQUEST_BYTES`, written ``65536``, ``64K``,
    ``64M``, ``1G`` (``64MB``, ``64MiB`` too)."""
    size = _parse_size(value)
    if not 1 <= size <= MAX_REQUEST_BYTES:
        raise ConfigError(
            f"{value!r} is not a size from 1 byte to 1 GiB; write bytes, or e.g. 64M or 1G"
        )
    return size


def validate_memory_size(value: Any) -> int:
    """A positive number of bytes, in :func:`validate_size`'s syntax but with no 1 GiB cap
    (a bound on the whole store, not on one message): ``512M``, ``4G``."""
    size = _parse_size(value)
    if size < 1:
        raise ConfigError(f"{value!r} is not a positive size; write bytes, or e.g. 512M or 4G")
    return size


FSYNC_POLICIES = ("always", "everysec", "no")


def validate_fsync(value: Any) -> str:
    policy = str(value).strip().lower()
    if policy not in FSYNC_POLICIES:
        raise ConfigError(f"{value!r} is not an fsync policy; use {_either(FSYNC_POLICIES)}")
    return policy


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def validate_log_level(value: Any) -> str:
    level = str(value).strip().upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{value!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
    return level


EVICTION_POLICIES = ("noeviction", "allkeys-lru", "volatile-lru", "volatile-ttl")


def validate_eviction(value: Any) -> str:
    policy = str(value).strip().lower()
    if policy not in EVICTION_POLICIES:
        raise ConfigError(f"{value!r} is not an eviction policy; use {_either(EVICTION_POLICIES)}")
    return policy


def validate_prefix(value: Any) -> str:
    text = str(value)
    if not text or len(text) > 200 or any(c.isspace() or not c.isprintable() for c in text):
        raise ConfigError(
            f"prefix {text!r}: give 1 to 200 printable characters without spaces, "
            "e.g. myapp: (the names of this app's keys in Redis start with it)"
        )
    return text
