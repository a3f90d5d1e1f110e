"""Where a server listens, and the private files that go with each address.

An address is either a Unix socket path (the default: a per-user path, reachable by
that user only) or a TCP ``host:port``. Each address has companion files beside it:
the generated key (``.key``), the lock that says a server is alive (``.lock``) and the
log of a server started in the background (``.log``). For a Unix socket they sit next
to the socket; for TCP they live in the per-user runtime directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError

# sun_path is 108 bytes on Linux and 104 on the BSDs, both including the final NUL.
MAX_SOCKET_PATH_BYTES = 107 if sys.platform.startswith("linux") else 103

DEFAULT_SOCKET_NAME = "state.sock"

# Addresses of a Redis (or Valkey) server, which holds the state instead of sharedstate's
# own (sharedstate.backends.redis); passed to redis-py as they are.
REDIS_SCHEMES = ("redis", "rediss", "redis+unix", "valkey", "valkeys")

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# A bare name a user most likely meant as a host: dotted labels ending in a word that is
# not a socket file's usual suffix (``example.com``, not ``state.sock``).
_HOST_NAME = re.compile(r"^(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}$")
_SOCKET_SUFFIXES = ("sock", "socket")


def runtime_dir() -> str:
    """The per-user directory for sockets and keys.

    ``$XDG_RUNTIME_DIR/sharedstate`` when the session has one (systemd creates it
    owner-only and removes it at logout), otherwise ``sharedstate-<uid>`` in the
    temp directory. The caller creates it owner-only if it is missing.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        return os.path.join(xdg, "sharedstate")
    return os.path.join(tempfile.gettempdir(), f"sharedstate-{os.getuid()}")


@dataclass(frozen=True)
class Address:
    """A Unix socket ``path``, a TCP ``host`` and ``port``, or a Redis ``url``."""

    path: str | None = None
    host: str | None = None
    port: int | None = None
    url: str | None = field(default=None, repr=False)  # may hold a password

    @property
    def is_redis(self) -> bool:
        """Whether the state lives in a Redis (or Valkey) server at :attr:`url`."""
        return self.url is not None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    @property
    def target(self) -> str | tuple[str, int]:
        """The address in the form ``multiprocessing.connection`` expects."""
        if self.path is not None:
            return self.path
        assert self.host is not None
        assert self.port is not None
        return (self.host, self.port)

    @property
    def is_loopback(self) -> bool:
        """True for Unix sockets and for TCP hosts that only this machine can reach."""
        if self.is_unix:
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host or "").is_loopback
        except ValueError:
            return False

    @property
    def _files_prefix(self) -> str:
        if self.path is not None:
            return self.path
        return os.path.join(runtime_dir(), f"tcp-{self.host}-{self.port}")

    @property
    def files_dir(self) -> str:
        """The directory holding the socket (if any) and the companion files."""
        return os.path.dirname(self._files_prefix)

    @property
    def key_path(self) -> str:
        return self._files_prefix + ".key"

    @property
    def lock_path(self) -> str:
        return self._files_prefix + ".lock"

    @property
    def log_path(self) -> str:
        return self._files_prefix + ".log"

    def __str__(self) -> str:
        if self.url is not None:
            return redacted_url(self.url)
        if self.path is not None:
            return self.path
        return f"{self.host}:{self.port}"


def default_address() -> Address:
    """The per-user Unix socket used when no address is configured."""
    return Address(path=os.path.join(runtime_dir(), DEFAULT_SOCKET_NAME))


def parse_address(value: str | tuple[str, int] | Address) -> Address:
    """Read an address from a setting.

    ``"/run/app/state.sock"`` (anything with a ``/``, or ``unix:`` in front) is a Unix
    socket; ``"127.0.0.1:7000"`` is TCP, and ``localhost`` means ``127.0.0.1`` (the key
    and lock files of a TCP address are named by its host, so both spellings must agree)::

        >>> parse_address("localhost:7000")
        Address(path=None, host='127.0.0.1', port=7000)

    URLs (``tcp://...``) and a host without a port (``127.0.0.1``, ``example.com``) raise
    :class:`ConfigError` rather than naming a socket file in the working directory.
    """
    if isinstance(value, Address):
        return value
    if isinstance(value, tuple):
        host, port_number = value
        return _tcp_address(str(host), str(port_number), f"{host}:{port_number}")
    text = value.strip()
    if not text:
        raise ConfigError("the address is empty: give a socket path or host:port")
    url = _URL.match(text)
    if url and url.group(1).lower() in REDIS_SCHEMES:
        return _redis_address(text, url.group(1).lower())
    if url:
        raise _url_refused(text, url.group(1))
    if text.startswith("unix:"):
        return _unix_address(text[len("unix:") :])
    if "/" in text:
        return _unix_address(text)
    if ":" not in text:
        if _looks_like_host(text):
            raise ConfigError(
                f"address {text!r} looks like a host but has no port; write HOST:PORT for "
                f"TCP (e.g. {text}:7000), or ./{text} if you meant a Unix socket file",
                address=text,
            )
        return _unix_address(text)
    if text.startswith("[") or text.count(":") > 1:
        raise ConfigError(
            f"address {text!r}: IPv6 is not supported by multiprocessing's TCP transport; "
            "use an IPv4 address such as 127.0.0.1:PORT, or a Unix socket path"
        )
    host, _, port = text.rpartition(":")
    return _tcp_address(host, port, text)


def redacted_url(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _redis_address(text: str, scheme: str) -> Address:
    parts = urlsplit(text)
    where = redacted_url(text)
    if scheme == "redis+unix":
        if not parts.path:
            raise ConfigError(
                f"address {where!r} names no socket: write redis+unix:///path/to/redis.sock",
                address=where,
            )
    elif not parts.hostname:
        raise ConfigError(
            f"address {where!r} names no host: write {scheme}://[:PASSWORD@]HOST:6379/0",
            address=where,
        )
    try:
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError:
        raise ConfigError(
            f"address {where!r}: the port must be a number from 1 to 65535", address=where
        ) from None
    return Address(url=text)


def _url_refused(text: str, scheme: str) -> ConfigError:
    rest = text[len(scheme) + 3 :]
    if scheme.lower() == "unix":
        return ConfigError(
            f"address {text!r} is a URL, which sharedstate does not take; for a Unix socket "
            f"write its path ({rest or '/run/app/state.sock'}), or unix:PATH (for Redis on "
            "a Unix socket: redis+unix:///PATH)",
            address=text,
        )
    rest = rest.rstrip("/")
    return ConfigError(
        f"address {text!r} is a URL, which sharedstate does not take; write HOST:PORT for "
        f"TCP (e.g. {rest or '127.0.0.1:7000'}) or a path for a Unix socket "
        "(e.g. /run/app/state.sock)",
        address=text,
    )


def _looks_like_host(text: str) -> bool:
    if text.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return True
    return bool(_HOST_NAME.match(text)) and text.rsplit(".", 1)[1].lower() not in _SOCKET_SUFFIXES


def _unix_address(path: str) -> Address:
    path = os.path.abspath(os.path.expanduser(path))
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"socket path {path!r} is {size} bytes long; this platform allows at most "
            f"{MAX_SOCKET_PATH_BYTES}. Choose a shorter path for SHAREDSTATE_ADDRESS.",
            address=path,
        )
    return Address(path=path)


def _tcp_address(host: str, port_text: str, original: str) -> Address:
    if not host:
        raise ConfigError(f"address {original!r} has no host; write HOST:PORT, e.g. 127.0.0.1:7000")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ConfigError(
            f"address {original!r}: the port must be a number from 1 to 65535",
            address=original,
        )
    if host.lower() == "localhost":
        # multiprocessing's TCP is IPv4, so localhost is 127.0.0.1 on the wire; one spelling
        # keeps one set of key and lock files, so a client finds the server either way.
        host = "127.0.0.1"
    return Address(host=host, port=port)
