"""The ``sharedstate`` command: serve, stop, status, config.

Options that are settings come from their single definition in :mod:`sharedstate.config`,
so every command spells them, documents them and resolves them the same way. Exit
codes: 0 ok, 1 error, 2 usage error, 3 no server running.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import click

from . import __version__
from .config import SETTINGS, load_settings, settings_table_markdown
from .dumpfile import FORMATS, read_dump, write_dump
from .errors import PersistenceError, ServerNotRunning, SharedStateError
from .launcher import call_server_function
from .pidlock import is_held, read_pid
from .state import connect_state

EXIT_ERROR = 1
EXIT_NOT_RUNNING = 3

_SPECS = {spec.name: spec for spec in SETTINGS}


class _Commands(click.Group):
    """Turns our errors into one line on stderr and the documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ServerNotRunning as error:
            click.echo(f"not running: {error}", err=True)
            ctx.exit(EXIT_NOT_RUNNING)
        except SharedStateError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(EXIT_ERROR)


def setting_options(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the CLI flags of the named settings (default: all that have one) to a command."""
    names = names or tuple(spec.name for spec in SETTINGS if spec.flag)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(names):
            spec = _SPECS[name]
            assert spec.flag is not None
            help_text = f"{spec.help} [env: {spec.env}]"
            # A bare switch is a flag; "--x/--no-x" is one by its form; others take values.
            is_flag = True if spec.is_switch and "/" not in spec.flag else None
            option = click.option(spec.flag, name, is_flag=is_flag, default=None, help=help_text)
            command = option(command)
        return command

    return decorate


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="sharedstate")
def cli() -> None:
    """State shared by all the worker processes of a Python app."""


@cli.command()
@setting_options()
@click.option("--detach", is_flag=True, help="Run in the background; return once it serves.")
@click.option(
    "--salvage",
    is_flag=True,
    help="Start even if the snapshot or journal is damaged: keep what precedes the "
    "damage and move the damaged file aside as <file>.damaged-<time>.",
)
@click.option("--lock-fd", type=int, hidden=True)
def serve(detach: bool, salvage: bool, lock_fd: int | None, **overrides: Any) -> None:
    """Run the server (in the foreground unless --detach) until SIGTERM or `stop`."""
    from .runner import run_server  # the server's imports are not needed by other commands

    run_server(load_settings(overrides), background=detach, lock_fd=lock_fd, salvage=salvage)


@cli.command()
@setting_options("address", "authkey_file")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait.")
def stop(timeout: float, **overrides: Any) -> None:
    """Stop the running server and wait until it has exited."""
    settings = load_settings(overrides)
    lock_path = settings.address.lock_path
    pid = read_pid(lock_path)
    call_server_function(settings, "shutdown", timeout)
    deadline = time.monotonic() + timeout
    while is_held(lock_path):
        if time.monotonic() > deadline:
            raise SharedStateError(f"the server (pid {pid}) did not exit within {timeout:g} s")
        time.sleep(0.05)
    click.echo(f"stopped the server at {settings.address} (pid {pid})")


@cli.command()
@setting_options("address", "authkey_file")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait.")
def status(as_json: bool, timeout: float, **overrides: Any) -> None:
    """Say whether a server is running, where, and as which pid (exit 3 if none)."""
    settings = load_settings(overrides)
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
    click.echo(f"running at {info['address']}")
    click.echo(f"pid:      {info['pid']}")
    click.echo(f"version:  {info['version']}")
    click.echo(f"uptime:   {_duration(info['uptime'])}")
    click.echo(f"keys:     {info['keys']}")
    click.echo(f"clients:  {len(info['clients'])}")
    click.echo(f"persistence: {_persistence_summary(info['persistence'])}")


def _persistence_summary(persistence: dict[str, Any] | None) -> str:
    if persistence is None:
        return "off (state lives in memory only)"
    journal = f"journal fsync={persistence['fsync']}" if persistence["journal"] else "no journal"
    health = "ok" if persistence["healthy"] else "UNHEALTHY: " + "; ".join(persistence["problems"])
    last = persistence["last_snapshot"]
    when = f", last snapshot {_duration(time.time() - last['at'])} ago" if last else ""
    return f"{health} ({persistence['snapshot']}, {journal}{when})"


@cli.command()
@setting_options("address", "authkey_file")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait.")
def snapshot(timeout: float, **overrides: Any) -> None:
    """Write a snapshot now (the server needs --snapshot)."""
    info = call_server_function(load_settings(overrides), "snapshot_now", timeout)
    click.echo(
        f"wrote {info['path']}: {info['keys']} keys, {info['bytes']} bytes in "
        f"{info['seconds']:.2f} s"
    )


@cli.command()
@setting_options("address", "authkey_file")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="pickle", show_default=True,
    help="pickle keeps every value exactly; json is for plain data and refuses the rest.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
def dump(file: str, fmt: str, force: bool, **overrides: Any) -> None:
    """Write the whole state (dict and namespace) to FILE (- for standard output)."""
    state = connect_state(load_settings(overrides), start=False, timeout=10.0)
    try:
        contents = state.export()
    finally:
        state.close()
    size = write_dump(file, contents, fmt, force=force)
    if file != "-":
        click.echo(
            f"wrote {file}: {len(contents.data)} keys, {len(contents.namespace)} namespace "
            f"attributes, {size} bytes"
        )


@cli.command()
@setting_options("address", "authkey_file")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--replace", "mode", flag_value="replace", help="Replace the whole state with FILE.")
@click.option("--merge", "mode", flag_value="merge", help="Set the keys of FILE, keep the others.")
@click.option(
    "--format", "fmt", type=click.Choice(("auto", *FORMATS)), default="auto", show_default=True
)
def restore(file: str, mode: str | None, fmt: str, **overrides: Any) -> None:
    """Load a dump into the running server and save it (--replace or --merge)."""
    if mode is None:
        raise click.UsageError("say what to do with the current state: --replace or --merge")
    settings = load_settings(overrides)
    contents = read_dump(file, fmt)
    state = connect_state(settings, start=False, timeout=10.0)
    try:
        state.restore(contents, replace=mode == "replace")
    finally:
        state.close()
    click.echo(
        f"restored {len(contents.data)} keys and {len(contents.namespace)} namespace "
        f"attributes from {file} ({mode}d)"
    )
    try:
        info = call_server_function(settings, "snapshot_now", 600.0)
    except PersistenceError:
        click.echo("note: the server has no snapshot file, so this state lives in memory only")
        return
    click.echo(f"saved in {info['path']}")


@cli.command()
@setting_options()
@click.option("--markdown", is_flag=True, help="Print the table of all settings instead.")
def config(markdown: bool, **overrides: Any) -> None:
    """Show the effective settings and where each one came from."""
    if markdown:
        click.echo(settings_table_markdown(), nl=False)
        return
    settings = load_settings(overrides)
    for spec in SETTINGS:
        value = getattr(settings, spec.name)
        if spec.secret and value is not None:
            value = "(set)"
        click.echo(
            f"{spec.env}={'' if value is None else value}    # {settings.sources[spec.name]}"
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{amount}{unit}" for amount, unit in parts if amount] or ["0s"]
    return " ".join(shown[:2])


def main() -> None:
    """Entry point of the ``sharedstate`` console script and ``python -m sharedstate``."""
    cli(prog_name="sharedstate")
