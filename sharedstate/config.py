"""Settings: each one defined once, read from flags, the environment, ``.env`` or defaults.

A setting is a field of :class:`Settings` whose metadata carries its CLI flag, default,
validator and help text. The CLI builds its options from these definitions,
``get_shared_state()`` loads them, and the settings table of docs/configuration.md is
generated from them (``sharedstate config --markdown``).

Precedence, highest first: command-line flags (or arguments of ``get_shared_state()``),
environment variables, a ``.env`` file in the working directory (never overriding the real
environment), the default.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dotenv import dotenv_values

from .address import Address, default_address, parse_address
from .errors import ConfigError, InsecurePermissions
from .permissions import load_or_create_key, read_key_file
from .validators import (
    LOG_LEVELS,
    _either,
    validate_bool,
    validate_call_timeout,
    validate_eviction,
    validate_fsync,
    validate_interval,
    validate_key,
    validate_log_level,
    validate_max_clients,
    validate_memory_size,
    validate_path,
    validate_pid,
    validate_prefix,
    validate_size,
    validate_user,
    validate_when_owner_dies,
)

ENV_PREFIX = "SHAREDSTATE_"

logger = logging.getLogger("sharedstate")

Validator = Callable[[Any], Any]


@dataclass(frozen=True)
class SettingSpec:
    """How one setting is spelled on the command line, defaulted, documented and checked.

    ``default`` is written as a user would write the setting (``"64M"``, ``60``; ``None``
    for unset) and goes through ``validate`` like any given value. ``default_doc`` is
    how the docs show it.
    """

    name: str
    flag: str | None
    default: Any
    validate: Validator
    help: str
    default_doc: str
    secret: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def is_switch(self) -> bool:
        """An on/off setting: a bare ``--flag`` (or ``--flag/--no-flag``) on the CLI."""
        return self.validate is validate_bool


def _setting(
    *,
    flag: str | None,
    validate: Validator,
    help: str,
    default: Any = None,
    default_factory: Callable[[], Any] | None = None,
    default_doc: str = "{default}",
    secret: bool = False,
) -> Any:
    """One field of :class:`Settings`: its default, and its definition as metadata.

    ``default_factory`` is for a default computed when the settings are loaded (the
    address depends on the environment); its ``default_doc`` says what it is.
    ``default_doc`` may add to the default: ``"{default} (no persistence)"``.
    """
    spec = {
        "flag": flag,
        "default": default,
        "validate": validate,
        "help": help,
        "default_doc": default_doc.format(default=_shown(default)),
        "secret": secret,
    }
    metadata = {"setting": spec}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=None if default is None else validate(default), metadata=metadata)


def _shown(default: Any) -> str:
    """A default as the docs show it."""
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, float):
        return f"`{default:g}`"
    return f"`{default}`"


@dataclass(frozen=True)
class Settings:
    """The effective configuration of a server or a client.

    Each field's default is its setting's default, validated: ``Settings()`` is what
    nothing configured means.
    """

    address: Address = _setting(
        flag="--address",
        default_factory=default_address,
        validate=parse_address,
        help="Unix socket path, or HOST:PORT for TCP (loopback unless --allow-remote); or "
        "a Redis or Valkey server to hold the state instead: `redis://[:PASSWORD@]HOST:PORT/DB`, "
        "`rediss://` (TLS), `redis+unix:///PATH?db=N`, `valkey://`.",
        default_doc="`$XDG_RUNTIME_DIR/sharedstate/state.sock`, else "
        "`$TMPDIR/sharedstate-$UID/state.sock`",
    )
    prefix: str = _setting(
        flag=None,
        default="sharedstate:",
        validate=validate_prefix,
        help="With a Redis address: what this app's key names in Redis start with, so "
        "several apps can share one Redis; clear(), keys(), len() and dump touch only them.",
    )
    redis_lease: float = _setting(
        flag=None,
        default=10.0,
        validate=validate_interval,
        help="With a Redis address: seconds the lock, or an edit, stays held after its "
        "holder died (Redis can't see a dead process; a living holder renews it).",
    )
    authkey: bytes | None = _setting(
        flag=None,
        validate=validate_key,
        help="The shared key (at least 16 bytes). Prefer a key file: environment "
        "variables leak into process listings of the same user and into crash reports.",
        secret=True,
    )
    authkey_file: str | None = _setting(
        flag="--authkey-file",
        validate=validate_path,
        help="File holding the shared key; must be readable by its owner only.",
        # Unset, Settings.key_path picks the file beside the socket.
        default_doc="`<address>.key`, created with a random key by the server",
    )
    server_user: int | None = _setting(
        flag=None,
        validate=validate_user,
        help="The user the server runs as, if not you or root (a name or uid). Clients "
        "refuse to talk to a server run by anyone else, since it could send them code.",
        default_doc="{default}: you, or root",
    )
    allow_remote: bool = _setting(
        flag="--allow-remote",
        default=False,
        validate=validate_bool,
        help="Let the server listen on a non-loopback TCP address (needs an explicit key).",
    )
    log_level: str = _setting(
        flag="--log-level",
        default="INFO",
        validate=validate_log_level,
        help=f"Server log level: {_either(LOG_LEVELS)}.",
    )
    snapshot: str | None = _setting(
        flag="--snapshot",
        validate=validate_path,
        help="Snapshot file; state is loaded from it at start and saved to it, so it "
        "survives restarts. Unset: state lives in memory only.",
        default_doc="{default} (no persistence)",
    )
    create_snapshot_dir: bool = _setting(
        flag="--create-snapshot-dir",
        default=False,
        validate=validate_bool,
        help="Create the snapshot's directory if it does not exist. Off, a missing "
        "directory is an error, so a mistyped path can't start a server with no data.",
    )
    snapshot_interval: float = _setting(
        flag="--snapshot-interval",
        default=60.0,
        validate=validate_interval,
        help="Seconds between snapshots, taken only when the state changed. Each "
        "snapshot also empties the journal.",
    )
    fsync: str = _setting(
        flag="--fsync",
        default="everysec",
        validate=validate_fsync,
        help="When journal writes reach the disk: `always` (before each write is "
        "acknowledged), `everysec` (once a second), or `no` (when the OS decides).",
    )
    journal: bool = _setting(
        flag="--journal/--no-journal",
        default=True,
        validate=validate_bool,
        help="Record every write in journal files (`<snapshot>.journal.*`) between "
        "snapshots. Without it, writes since the last snapshot are lost when the server dies.",
        default_doc="{default} (when a snapshot is set)",
    )
    owner_pid: int | None = _setting(
        flag=None,
        validate=validate_pid,
        help="The process that owns the server: the gunicorn master, set by "
        "`sharedstate.gunicorn`. The server watches it (see the next setting).",
    )
    when_owner_dies: str = _setting(
        flag=None,
        default="stay",
        validate=validate_when_owner_dies,
        help="If the owner dies without stopping the server (a crashed gunicorn "
        "master): `stay` up for the next gunicorn, or `stop` after a final snapshot.",
    )
    stop_with_gunicorn: bool = _setting(
        flag=None,
        default=True,
        validate=validate_bool,
        help="When gunicorn exits cleanly, stop the server it owns (after a final "
        "snapshot). Off: the server keeps running until `sharedstate stop`.",
    )
    max_clients: int = _setting(
        flag="--max-clients",
        default=1000,
        validate=validate_max_clients,
        help="Connections the server serves at once (each thread of each worker has "
        "one). Past it, new clients are refused with TooManyClients.",
    )
    call_timeout: float | None = _setting(
        flag=None,
        default=10.0,
        validate=validate_call_timeout,
        help="Seconds a worker waits for the server to answer a call (not counting "
        "waits it asked for, like a lock timeout) before raising Timeout. 0: forever.",
    )
    max_value_bytes: int = _setting(
        flag=None,
        default="64M",
        validate=validate_size,
        help="Largest value a worker sends, pickled (e.g. `64M`); larger ones raise "
        "ValueTooLarge before anything is sent. At most `1G`.",
    )
    max_memory: int | None = _setting(
        flag="--max-memory",
        validate=validate_memory_size,
        help="Most memory the stored data may use (values' pickled sizes plus a per-key "
        "overhead), e.g. 512M; unset: no bound. What happens at the bound: "
        "SHAREDSTATE_EVICTION.",
        default_doc="{default} (no bound)",
    )
    eviction: str = _setting(
        flag="--eviction",
        default="noeviction",
        validate=validate_eviction,
        help="What to do when a write would pass SHAREDSTATE_MAX_MEMORY: noeviction "
        "refuses the write; allkeys-lru removes the least recently used keys; volatile-lru "
        "the least recently used keys that have a TTL; volatile-ttl the keys with a TTL "
        "that expire soonest.",
    )
    log_file: str | None = _setting(
        flag="--log-file",
        validate=validate_path,
        help="Server log file.",
        # Unset, the server runner picks the log by how the server runs.
        default_doc="stderr; `<address>.log` for a server started in the background",
    )
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def has_explicit_key(self) -> bool:
        return self.authkey is not None or self.authkey_file is not None

    @property
    def trusted_uids(self) -> frozenset[int]:
        """Whose server a client agrees to talk to: its own user's, root's, or the named one."""
        named = {self.server_user} if self.server_user is not None else set()
        return frozenset({os.getuid(), 0, *named})

    @property
    def key_path(self) -> str:
        """The file the key is read from when no key is given directly."""
        return self.authkey_file or self.address.key_path

    def load_key(self, *, create: bool = False) -> bytes | None:
        """The key to authenticate with.

        With ``create=True`` (the server) a missing default key file is generated.
        Without it (a client) a missing default key file gives ``None``: no server has
        created one yet.
        """
        if self.authkey is not None:
            return self.authkey
        if self.authkey_file is not None:
            return read_key_file(self.authkey_file)
        if create:
            return load_or_create_key(self.address.key_path)
        if os.path.lexists(self.address.key_path):
            return read_key_file(self.address.key_path)
        return None


SETTINGS: tuple[SettingSpec, ...] = tuple(
    SettingSpec(name=setting.name, **setting.metadata["setting"])
    for setting in dataclasses.fields(Settings)
    if "setting" in setting.metadata
)


def _default(name: str) -> Any:
    """The value of setting ``name`` when nothing sets it."""
    return next(setting.default for setting in dataclasses.fields(Settings) if setting.name == name)


# Defaults that other modules size things by, as the definitions above set them.
DEFAULT_MAX_CLIENTS: int = _default("max_clients")
DEFAULT_CALL_TIMEOUT: float = _default("call_timeout")
DEFAULT_MAX_VALUE_BYTES: int = _default("max_value_bytes")


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    dotenv_dir: str | None = None,
    overrides_from: str = "flag",
) -> Settings:
    """Resolve every setting by precedence: ``overrides`` > environment > ``.env`` > default.

    ``overrides`` maps setting names to values from flags, function arguments or
    ``app.config`` (``overrides_from``: ``"flag"``, ``"argument"`` or ``"app.config"``,
    for messages); ``None`` values count as not given::

        settings = load_settings({"address": "/tmp/app/state.sock"})
    """
    environ = os.environ if environ is None else environ
    dotenv_path = os.path.join(dotenv_dir or os.getcwd(), ".env")
    from_dotenv = _read_dotenv(dotenv_path)
    _warn_unknown(environ, "the environment")
    _warn_unknown(from_dotenv, dotenv_path)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SETTINGS:
        raw, origin = _pick(
            spec, overrides or {}, overrides_from, environ, from_dotenv, dotenv_path
        )
        sources[spec.name] = origin
        if raw is None:
            continue  # the field's default
        try:
            values[spec.name] = spec.validate(raw)
        except ConfigError as error:
            raise ConfigError(f"{origin}: {error}", setting=spec.env) from None
    return Settings(**values, sources=sources)


def _pick(
    spec: SettingSpec,
    overrides: Mapping[str, Any],
    overrides_from: str,
    environ: Mapping[str, str],
    from_dotenv: Mapping[str, str],
    dotenv_path: str,
) -> tuple[Any, str]:
    if overrides.get(spec.name) is not None:
        origin = {
            "argument": f"get_shared_state({spec.name}=...)",
            "app.config": f"app.config[{spec.env!r}]",
        }.get(overrides_from, spec.flag or spec.name)
        return overrides[spec.name], origin
    if environ.get(spec.env):
        return environ[spec.env], f"{spec.env} (environment)"
    if from_dotenv.get(spec.env):
        return from_dotenv[spec.env], f"{spec.env} in {dotenv_path}"
    return None, "default"


def _read_dotenv(path: str) -> dict[str, str]:
    """The ``SHAREDSTATE_*`` lines of a ``.env`` file, if we may trust it.

    Settings decide which server a worker talks to and which key it uses, so a ``.env``
    that another user wrote, or could have, is refused as ssh refuses its files: it must
    belong to us (or root) and be writable by nobody else.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return {}
    with os.fdopen(fd, encoding="utf-8", errors="replace") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            return {}
        link = os.lstat(path)
        for owner, what in ((info.st_uid, path), (link.st_uid, f"the link {path}")):
            if owner not in (os.getuid(), 0):
                raise InsecurePermissions(
                    f"{what} belongs to uid {owner}, not to you (uid {os.getuid()}), and its "
                    "settings could send your workers to another user's server; refusing it. "
                    "Remove it, or run from a directory of your own",
                    path=path,
                )
        if info.st_mode & 0o022:
            raise InsecurePermissions(
                f"{path} can be changed by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"it decides which server your workers talk to. Run: chmod go-w {path}",
                path=path,
            )
        text = file.read()
    return {
        name: value
        for name, value in dotenv_values(stream=io.StringIO(text)).items()
        if name.startswith(ENV_PREFIX) and value is not None
    }


def _warn_unknown(variables: Mapping[str, str], where: str) -> None:
    known = {spec.env for spec in SETTINGS}
    for name in variables:
        if name.startswith(ENV_PREFIX) and name not in known:
            logger.warning("ignoring unknown setting %s in %s", name, where)


def settings_table_markdown() -> str:
    """The settings table of docs/configuration.md, generated from the definitions above."""
    rows = [
        "| Environment variable | CLI flag | Default | Meaning |",
        "|---|---|---|---|",
    ]
    for spec in SETTINGS:
        flag = f"`{spec.flag}`" if spec.flag else "(none)"
        rows.append(f"| `{spec.env}` | {flag} | {spec.default_doc} | {spec.help} |")
    return "\n".join(rows) + "\n"
