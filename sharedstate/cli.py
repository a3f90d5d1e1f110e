"""The ``sharedstate`` command: serve, stop, status, config, and the operator's data commands.

Options that are settings come from their single definition in :mod:`sharedstate.config`,
so every command spells them, documents them and resolves them the same way. The flags
that reach the server (``--address``, ``--authkey-file``) belong to the group and every
command accepts them after its name too: ``sharedstate status --address X`` and
``sharedstate --address X status`` are the same. Exit codes: 0 ok, 1 error, 2 usage
error, 3 no server running. A reader that stops early (``sharedstate keys | head``) ends
a command quietly with exit 1, as Python's own recipe for SIGPIPE does: no message.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import fnmatch
import functools
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import click

from . import __version__
from .client.launcher import call_server_function, stop_server
from .client.state import SharedState, connect_state
from .codec import where_text
from .config import (
    SETTINGS,
    Settings,
    SettingSpec,
    Validator,
    load_settings,
    settings_table_markdown,
)
from .errors import ConfigError, KeyNotFound, ServerNotRunning, SharedStateError
from .persistence.dumpfile import FORMATS, read_dump, write_dump
from .show import FORMATS as GET_FORMATS
from .show import show, show_loaded
from .statustext import status_lines
from .validators import (
    EVICTION_POLICIES,
    FSYNC_POLICIES,
    LOG_LEVELS,
    validate_eviction,
    validate_fsync,
    validate_interval,
    validate_log_level,
    validate_max_clients,
    validate_memory_size,
    validate_path,
)

EXIT_ERROR = 1
EXIT_NOT_RUNNING = 3

_SPECS = {spec.name: spec for spec in SETTINGS}

# What every command needs to reach the server.
CONNECTION_SETTINGS = ("address", "authkey_file")
FLAGGED_SETTINGS = tuple(spec.name for spec in SETTINGS if spec.flag)


class SettingFlags:
    """The context object: the settings flags of one command line, and what they resolve to.

    Each settings option records its value here instead of passing it to the command
    (the shared-options pattern of pallets/click#108). Flags given before the command's
    name are recorded first, so those after it win.
    """

    def __init__(self) -> None:
        self.given: dict[str, Any] = {}

    @functools.cached_property
    def settings(self) -> Settings:
        """The flags, then the environment, ``.env`` and the defaults; resolved on first use,
        so a command that needs no settings (``config --markdown``) never fails on them."""
        return load_settings(self.given)


pass_flags = click.make_pass_decorator(SettingFlags, ensure=True)


def _remember_flag(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is not None and param.name is not None:  # None: the flag was not given
        ctx.ensure_object(SettingFlags).given[param.name] = value


class _CheckedBy(click.ParamType[Any]):
    """A flag checked by its setting's own validator, for settings click has no type for,
    so a bad value is a usage error (exit 2) like any other bad flag. The value passes on
    as given; config validates it again, as it does every flag."""

    def __init__(self, name: str, validate: Validator) -> None:
        self.name = name
        self.validate = validate

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            self.validate(value)
        except ConfigError as error:
            self.fail(str(error), param, ctx)
        return value


# How the CLI checks a setting's flag (and --help shows it); config's validator still runs.
_CLICK_TYPES: dict[Any, click.ParamType[Any]] = {
    validate_interval: click.FloatRange(0.1, 86_400),
    validate_max_clients: click.IntRange(min=1),
    validate_fsync: click.Choice(FSYNC_POLICIES, case_sensitive=False),
    validate_log_level: click.Choice(LOG_LEVELS, case_sensitive=False),
    validate_eviction: click.Choice(EVICTION_POLICIES, case_sensitive=False),
    validate_memory_size: _CheckedBy("size", validate_memory_size),
    validate_path: click.Path(dir_okay=False),
}


def _shown_default(spec: SettingSpec) -> str:
    """The default as the docs show it (the flag's own default is None: not given)."""
    return "" if spec.default_doc == "unset" else f"; default: {spec.default_doc.replace('`', '')}"


def setting_params(names: Iterable[str]) -> list[click.Parameter]:
    """The CLI flags of the named settings; their values go to :class:`SettingFlags`."""
    options: list[click.Parameter] = []
    for name in names:
        spec = _SPECS[name]
        assert spec.flag is not None
        options.append(
            click.Option(
                [spec.flag, name],
                # A bare switch is a flag; "--x/--no-x" is one by its form; others take values.
                is_flag=True if spec.is_switch and "/" not in spec.flag else None,
                type=_CLICK_TYPES.get(spec.validate),
                metavar="PATH|HOST:PORT" if name == "address" else None,
                default=None,  # None: not given, so the environment and .env still count
                expose_value=False,
                callback=_remember_flag,
                help=f"{spec.help} [env: {spec.env}{_shown_default(spec)}]",
            )
        )
    return options


class _Commands(click.Group):
    """The command group: shares its settings flags, and reports our errors in one line.

    Every command also accepts the group's settings flags after its name, as
    ``sharedstate serve --address X`` always has.
    """

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        taken = {param.name for param in cmd.params}
        shared = [
            param.name
            for param in self.params
            if param.callback is _remember_flag and param.name and param.name not in taken
        ]
        cmd.params[:0] = setting_params(shared)  # first, where the help has always shown them
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # the reader stopped early (| head): not an error to report
            _quiet_on_closed_pipe()
            ctx.exit(EXIT_ERROR)
        except ServerNotRunning as error:
            if _is_redis(ctx):  # Redis is the operator's to run: its own words say so
                click.echo(f"error: {error}", err=True)
                ctx.exit(EXIT_NOT_RUNNING)
            # One line, and the next step at a shell (the error's own text may suggest
            # get_shared_state(), which is for code).
            address = getattr(error, "address", None) or "this address"
            if ctx.invoked_subcommand == "stop":
                next_step = "nothing to stop (or point --address at the one that runs)"
            else:
                next_step = (
                    "start one with `sharedstate serve` (or point --address at the one "
                    "that runs)"
                )
            click.echo(f"no sharedstate server is running at {address}; {next_step}", err=True)
            ctx.exit(EXIT_NOT_RUNNING)
        except SharedStateError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(EXIT_ERROR)
        except OSError as error:  # a file the operator named can't be read or written
            click.echo(
                f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), err=True
            )
            ctx.exit(EXIT_ERROR)


def _is_redis(ctx: click.Context) -> bool:
    flags = ctx.find_object(SettingFlags)
    try:
        settings = flags.settings if flags is not None else load_settings()
    except SharedStateError:
        return False
    return settings.address.is_redis


@click.group(cls=_Commands, params=setting_params(CONNECTION_SETTINGS))
@click.version_option(__version__, prog_name="sharedstate")
def cli() -> None:
    """State shared by all the worker processes of a Python app."""


@cli.command(params=setting_params(FLAGGED_SETTINGS))
@click.option("--detach", is_flag=True, help="Run in the background; return once it serves.")
@click.option(
    "--salvage",
    is_flag=True,
    help="Start even if the snapshot or journal is damaged: keep what precedes the "
    "damage and move the damaged file aside as <file>.damaged-<time>.",
)
@click.option("--lock-fd", type=int, hidden=True)
@pass_flags
def serve(flags: SettingFlags, detach: bool, salvage: bool, lock_fd: int | None) -> None:
    """Run the server (in the foreground unless --detach) until SIGTERM or `stop`."""
    from .server.runner import run_server  # the server's imports are not needed by other commands

    settings = flags.settings
    logged = _StartFailureLogged()
    server_logger = logging.getLogger("sharedstate")
    server_logger.addFilter(logged)
    try:
        run_server(settings, background=detach, lock_fd=lock_fd, salvage=salvage)
    except (SharedStateError, OSError):
        if logged.seen and not detach and settings.log_file is None:
            # The log is this terminal's stderr and has just said why: once is enough.
            raise click.exceptions.Exit(EXIT_ERROR) from None
        raise
    finally:
        server_logger.removeFilter(logged)


class _StartFailureLogged(logging.Filter):
    """Notes that the server logged why it could not start (the record is kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith("could not start"):
            self.seen = True
        return True


@cli.command()
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait.")
@pass_flags
def stop(flags: SettingFlags, timeout: float) -> None:
    """Stop the running server and wait until it has exited."""
    settings = flags.settings
    pid = stop_server(settings, timeout)
    click.echo(f"stopped the server at {settings.address} (pid {pid})")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait.")
@pass_flags
def status(flags: SettingFlags, as_json: bool, timeout: float) -> None:
    """Say whether a server is running, where, and as which pid (exit 3 if none)."""
    settings = flags.settings
    if settings.address.is_redis:
        _redis_status(settings, as_json)
        return
    try:
        info = call_server_function(settings, "server_info", timeout)
    except ServerNotRunning:
        if as_json:
            click.echo(json.dumps({"running": False, "address": str(settings.address)}))
            raise click.exceptions.Exit(EXIT_NOT_RUNNING) from None
        raise
    if as_json:
        click.echo(json.dumps({"running": True, **info}, indent=2))
        return
    click.echo("\n".join(status_lines(info)))


def _redis_status(settings: Settings, as_json: bool) -> None:
    """What an operator can know of the state in Redis: that it answers, and its size."""
    with _connected(settings) as state:
        keys, attributes = len(state), len(state.namespace.to_dict())
    info = {
        "address": str(settings.address),
        "prefix": settings.prefix,
        "keys": keys,
        "namespace_attributes": attributes,
    }
    if as_json:
        click.echo(json.dumps({"running": True, "backend": "redis", **info}, indent=2))
        return
    click.echo(
        f"the state is in Redis at {info['address']}, under {settings.prefix!r}: {keys} "
        f"keys, {attributes} namespace attributes (for Redis itself: redis-cli INFO)"
    )


# dump, restore and keys of a large store may take the server longer than the default
# call timeout, which is sized for web requests; an operator can still press Ctrl-C.
OPERATOR_CALL_TIMEOUT = 600.0


@contextlib.contextmanager
def _connected(settings: Settings) -> Iterator[SharedState]:
    if settings.sources.get("call_timeout") == "default":
        settings = dataclasses.replace(settings, call_timeout=OPERATOR_CALL_TIMEOUT)
    state = connect_state(settings, start=False, timeout=10.0)
    try:
        yield state
    finally:
        state.close()


@cli.command("get")
@click.argument("key")
@click.option("--raw", is_flag=True, help="Print a str value as it is, not as JSON.")
@click.option(
    "--format", "fmt", type=click.Choice(GET_FORMATS), default="auto", show_default=True,
    help="auto: JSON when it holds the value exactly, else Python's notation. repr: "
    "Python's notation, with stand-ins for classes this command can't import. type: the "
    "type and size only. pickle: the stored bytes, to a file or a pipe.",
)  # fmt: skip
@pass_flags
def get_command(flags: SettingFlags, key: str, raw: bool, fmt: str) -> None:
    """Print the value of KEY (as JSON when it can be)."""
    if fmt == "pickle" and sys.stdout.isatty():
        raise click.UsageError(
            "refusing to write a binary pickle to the terminal; redirect it to a file or a pipe"
        )
    with _connected(flags.settings) as state:
        data = state.pickled(key)
    if fmt == "pickle":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    text, note = show(data, where_text((key,)), fmt, raw=raw)
    click.echo(text)
    if note:
        click.echo(note, err=True)


class _Seconds(click.ParamType[float]):
    """A time to live: a positive, finite number of seconds (``click.FloatRange`` would
    let ``inf`` and ``nan`` through)."""

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = math.nan
        if not 0 < seconds < math.inf:
            self.fail(f"{value!r} is not a positive number of seconds", param, ctx)
        return seconds


SECONDS = _Seconds()


@cli.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--raw", is_flag=True, help="Store VALUE as a plain string.")
@click.option("--ttl", type=SECONDS, help="Delete KEY after this many seconds.")
@pass_flags
def set_command(flags: SettingFlags, key: str, value: str, raw: bool, ttl: float | None) -> None:
    """Set KEY to VALUE, read as JSON (or a plain string with --raw)."""
    if raw:
        parsed: Any = value
    else:
        try:
            parsed = json.loads(value)
        except ValueError:
            raise click.BadParameter(
                f"{value!r} is not JSON; write strings as JSON ('\"text\"') or pass --raw",
                param_hint="VALUE",
            ) from None
    with _connected(flags.settings) as state:
        if ttl is None:
            state[key] = parsed
        else:
            state.set(key, parsed, ttl=ttl)


# For "expire k -5": a usage error saying why, not "no such option -5".
@cli.command("expire", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("seconds", type=SECONDS)
@pass_flags
def expire_command(flags: SettingFlags, key: str, seconds: float) -> None:
    """Delete KEY after SECONDS (replacing any time it had); exit 1 if there is no such key."""
    with _connected(flags.settings) as state:
        if not state.expire(key, seconds):
            raise KeyNotFound(key)


@cli.command("ttl")
@click.argument("key")
@pass_flags
def ttl_command(flags: SettingFlags, key: str) -> None:
    """Print the seconds KEY has left, or `none` if it doesn't expire (exit 1 if no such key)."""
    with _connected(flags.settings) as state:
        left = state.ttl(key)
    click.echo("none" if left is None else _seconds_text(left))


def _seconds_text(seconds: float) -> str:
    """``59.8``, ``60``, ``0.001``: at most 3 decimals, no trailing zeros."""
    return f"{max(seconds, 0.0):.3f}".rstrip("0").rstrip(".")


@cli.command("persist")
@click.argument("key")
@pass_flags
def persist_command(flags: SettingFlags, key: str) -> None:
    """Make KEY never expire (exit 1 if there is no such key)."""
    with _connected(flags.settings) as state:
        if state.persist(key):
            return
        if key not in state:
            raise KeyNotFound(key)
    click.echo(f"key {key!r} had no expiry; nothing changed", err=True)


@cli.command("del")
@click.argument("key")
@pass_flags
def del_command(flags: SettingFlags, key: str) -> None:
    """Delete KEY (exit 1 if there is no such key)."""
    with _connected(flags.settings) as state:
        del state[key]


@cli.command("keys")
@click.argument("pattern", default="*")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_flags
def keys_command(flags: SettingFlags, pattern: str, as_json: bool) -> None:
    """List the keys matching PATTERN (shell-style: * ? [abc]), sorted, one a line.

    \b
    A str key is printed as it is; a key of another type in Python notation
    (7, ('user', 7)). A str key that would read as one of those, or that is
    empty, has a line break or spaces at its ends, is quoted: '7' is the str,
    7 the int. PATTERN matches the str itself, or the notation of another key.
    With --json, str, int, float, bool and None keys are JSON's own types, a
    tuple is a list, and another key is {"python": "<its notation>"}.
    """
    with _connected(flags.settings) as state:
        keys = list(state)
    matching = sorted(
        (
            key
            for key in keys
            if fnmatch.fnmatchcase(key if isinstance(key, str) else repr(key), pattern)
        ),
        key=_key_line,
    )
    if as_json:
        click.echo(json.dumps([_json_key(key) for key in matching], ensure_ascii=False))
    elif matching:
        click.echo("\n".join(_key_line(key) for key in matching))


def _key_line(key: Any) -> str:
    """How ``keys`` prints a key: one line, telling a str from any other type."""
    if not isinstance(key, str):
        return repr(key)
    if key and key.strip() == key and key.isprintable() and not _reads_as_literal(key):
        return key
    return repr(key)


def _reads_as_literal(text: str) -> bool:
    try:
        ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _json_key(key: Any) -> Any:
    """A key for ``keys --json``: JSON's own type where it has one (a list can't be a key,
    so a list is a tuple); otherwise an object holding its Python notation."""
    if key is None or type(key) in (str, int, bool):
        return key
    if type(key) is float and math.isfinite(key):
        return key
    if type(key) is tuple:
        return [_json_key(item) for item in key]
    return {"python": repr(key)}


@cli.command("incr", context_settings={"ignore_unknown_options": True})  # for "incr k -2"
@click.argument("key")
@click.argument("amount", default="1")
@pass_flags
def incr_command(flags: SettingFlags, key: str, amount: str) -> None:
    """Add AMOUNT (default 1, may be negative or decimal) to KEY; print the result."""
    try:
        number: int | float = int(amount)
    except ValueError:
        try:
            number = float(amount)
        except ValueError:
            raise click.BadParameter(f"{amount!r} is not a number", param_hint="AMOUNT") from None
    with _connected(flags.settings) as state:
        click.echo(show_loaded(state.incr(key, number)))


@cli.command()
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait.")
@pass_flags
def snapshot(flags: SettingFlags, timeout: float) -> None:
    """Write a snapshot now (the server needs --snapshot)."""
    info = call_server_function(flags.settings, "snapshot_now", timeout)
    click.echo(
        f"wrote {info['path']}: {info['keys']} keys, {info['bytes']} bytes in "
        f"{info['seconds']:.2f} s"
    )


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="pickle", show_default=True,
    help="pickle keeps every value exactly; json is for plain data and refuses the rest.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@pass_flags
def dump(flags: SettingFlags, file: str, fmt: str, force: bool) -> None:
    """Write the whole state (dict and namespace) to FILE (- for standard output)."""
    if file == "-" and fmt == "pickle" and sys.stdout.isatty():
        raise click.UsageError(
            "refusing to write a binary pickle dump to the terminal; redirect it to a file "
            "or a pipe (dump - > FILE), or pass --format json"
        )
    with _connected(flags.settings) as state:
        contents = state.export()
    size = write_dump(file, contents, fmt, force=force)
    if file != "-":
        click.echo(
            f"wrote {file}: {len(contents.data)} keys, {len(contents.namespace)} namespace "
            f"attributes, {size} bytes"
        )


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--replace", is_flag=True, help="Replace the whole state with FILE.")
@click.option("--merge", is_flag=True, help="Set the keys of FILE, keep the others.")
@click.option(
    "--format", "fmt", type=click.Choice(("auto", *FORMATS)), default="auto", show_default=True
)
@pass_flags
def restore(flags: SettingFlags, file: str, replace: bool, merge: bool, fmt: str) -> None:
    """Load a dump into the running server and save it (--replace or --merge)."""
    if replace == merge:
        # Both would be a guess at which one was meant, and --replace wipes every other key.
        raise click.UsageError(
            "say what to do with the current state: either --replace or --merge"
            + (", not both" if replace else "")
        )
    mode = "replace" if replace else "merge"
    settings = flags.settings
    contents = read_dump(file, fmt)
    with _connected(settings) as state:
        state.restore(contents, replace=mode == "replace")
    click.echo(
        f"restored {len(contents.data)} keys and {len(contents.namespace)} namespace "
        f"attributes from {file} ({mode}d)"
    )
    if settings.address.is_redis:
        click.echo("note: Redis keeps it as its own persistence settings say (appendonly, save)")
        return
    if call_server_function(settings, "server_info", 10.0)["persistence"] is None:
        click.echo("note: the server has no snapshot file, so this state lives in memory only")
        return
    # A failure here (disk full...) is an error: the restore is applied, but not saved.
    info = call_server_function(settings, "snapshot_now", 600.0)
    click.echo(f"saved in {info['path']}")


@cli.command(params=setting_params(FLAGGED_SETTINGS))
@click.option("--markdown", is_flag=True, help="Print the table of all settings instead.")
@pass_flags
def config(flags: SettingFlags, markdown: bool) -> None:
    """Show the effective settings and where each one came from."""
    if markdown:
        click.echo(settings_table_markdown(), nl=False)
        return
    settings = flags.settings
    for spec in SETTINGS:
        value = getattr(settings, spec.name)
        source = settings.sources[spec.name]
        if spec.secret and value is not None:
            value = "(set)"
        elif settings.address.is_redis and spec.name in _NOT_FOR_REDIS:
            source = f"{source}: not used with Redis"
        elif value is None and spec.name == "authkey_file" and settings.authkey is None:
            # Unset, these files are found beside the address: show the one in use.
            value, source = settings.address.key_path, f"{source}: beside the address"
        elif value is None and spec.name == "log_file":
            value = settings.address.log_path
            source = f"{source}: beside the address for serve --detach; stderr in the foreground"
        click.echo(f"{spec.env}={'' if value is None else value}    # {source}")


# What only sharedstate's own server (and its clients) read.
_NOT_FOR_REDIS = frozenset(
    {"authkey", "authkey_file", "server_user", "allow_remote", "log_level", "log_file",
     "snapshot", "create_snapshot_dir", "snapshot_interval", "fsync", "journal",
     "owner_pid", "when_owner_dies", "stop_with_gunicorn", "max_clients", "max_memory",
     "eviction"}
)  # fmt: skip


def _quiet_on_closed_pipe() -> None:
    """Point standard output at /dev/null: the reader has gone, and the interpreter's
    final flush of what is still buffered must not report a broken pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main() -> None:
    """Entry point of the ``sharedstate`` console script and ``python -m sharedstate``."""
    try:
        cli(prog_name="sharedstate")
    except BrokenPipeError:  # outside a command's invoke (--help, --version): as inside it
        _quiet_on_closed_pipe()
        sys.exit(EXIT_ERROR)
