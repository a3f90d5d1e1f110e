"""The CLI's contract that needs no server: usage errors, help, settings output."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sharedstate import __version__
from sharedstate.cli import cli
from sharedstate.config import settings_table_markdown
from sharedstate.statustext import status_lines

from .support.processes import run_cli


def test_usage_errors_exit_2() -> None:
    result = CliRunner().invoke(cli, ["serve", "--no-such-flag"])
    assert result.exit_code == 2
    assert "No such option" in result.output


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_config_shows_values_and_their_sources(address: str) -> None:
    result = CliRunner().invoke(cli, ["config", "--log-level", "debug"])
    assert result.exit_code == 0
    assert f"SHAREDSTATE_ADDRESS={address}    # SHAREDSTATE_ADDRESS (environment)" in result.output
    assert "SHAREDSTATE_LOG_LEVEL=DEBUG    # --log-level" in result.output


def test_config_never_prints_the_key() -> None:
    result = CliRunner(env={"SHAREDSTATE_AUTHKEY": "s3cret-s3cret-s3cret"}).invoke(cli, ["config"])
    assert "s3cret" not in result.output
    assert "SHAREDSTATE_AUTHKEY=(set)" in result.output


def test_config_markdown_is_the_settings_table() -> None:
    result = CliRunner().invoke(cli, ["config", "--markdown"])
    assert result.output == settings_table_markdown()


def test_a_bad_setting_is_one_line_on_stderr_with_exit_1() -> None:
    result = run_cli("status", "--address", "host:notaport")
    assert result.returncode == 1
    assert result.stderr.startswith("error: --address: ")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--address", "/tmp/given.sock", "config"],
        ["config", "--address", "/tmp/given.sock"],
        ["--address", "/tmp/ignored.sock", "config", "--address", "/tmp/given.sock"],
    ],
    ids=["before-the-command", "after-the-command", "after-wins"],
)
def test_connection_flags_go_before_or_after_the_command_name(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "SHAREDSTATE_ADDRESS=/tmp/given.sock    # --address" in result.output


def test_server_flags_belong_to_the_commands_that_use_them() -> None:
    result = CliRunner().invoke(cli, ["--fsync", "always", "config"])
    assert result.exit_code == 2
    assert "No such option" in result.output


def test_config_markdown_needs_no_valid_settings() -> None:
    result = CliRunner(env={"SHAREDSTATE_FSYNC": "sometimes"}).invoke(cli, ["config", "--markdown"])
    assert result.exit_code == 0
    assert result.output == settings_table_markdown()


def test_a_usage_error_is_reported_before_a_bad_setting() -> None:
    result = CliRunner().invoke(cli, ["set", "k", "not json", "--address", "host:notaport"])
    assert result.exit_code == 2
    assert "--raw" in result.output


def test_config_shows_the_key_and_log_files_in_use(address: str) -> None:
    result = run_cli("config")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"SHAREDSTATE_AUTHKEY_FILE={address}.key    # default: beside the address" in lines
    assert any(
        line.startswith(f"SHAREDSTATE_LOG_FILE={address}.log    # default: ") for line in lines
    )
    given = run_cli("config", "--authkey-file", "/tmp/k", "--log-file", "/tmp/l").stdout
    assert "SHAREDSTATE_AUTHKEY_FILE=/tmp/k    # --authkey-file\n" in given
    assert "SHAREDSTATE_LOG_FILE=/tmp/l    # --log-file\n" in given
    keyed = run_cli("config", env={"SHAREDSTATE_AUTHKEY": "s3cret-s3cret-s3cret"}).stdout
    assert "SHAREDSTATE_AUTHKEY_FILE=    # default\n" in keyed  # the key is given: no file


def test_serve_help_shows_types_and_defaults() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # the help is wrapped to the terminal's width
    assert "--fsync [always|everysec|no]" in text
    assert "--log-level [debug|info|warning|error|critical]" in text
    assert "--snapshot-interval FLOAT RANGE" in text
    assert "--max-clients INTEGER RANGE" in text
    assert "--snapshot FILE" in text
    assert "--address PATH|HOST:PORT" in text
    assert "[env: SHAREDSTATE_FSYNC; default: everysec]" in text
    assert "[env: SHAREDSTATE_MAX_CLIENTS; default: 1000]" in text
    assert "--max-memory SIZE" in text
    assert "[env: SHAREDSTATE_MAX_MEMORY; default: unset (no bound)]" in text
    assert "--eviction [noeviction|allkeys-lru|volatile-lru|volatile-ttl]" in text
    assert "[env: SHAREDSTATE_EVICTION; default: noeviction]" in text


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--fsync", "sometimes"), ("--max-clients", "0"), ("--snapshot-interval", "soon"),
     ("--eviction", "lru"), ("--max-memory", "0"), ("--max-memory", "lots")],
)  # fmt: skip
def test_a_bad_server_flag_is_a_usage_error(flag: str, value: str) -> None:
    result = run_cli("serve", flag, value)
    assert result.returncode == 2
    assert f"Invalid value for '{flag}'" in result.stderr


def test_a_bad_max_memory_flag_says_what_to_write() -> None:
    result = CliRunner().invoke(cli, ["serve", "--max-memory", "lots"])
    assert result.exit_code == 2
    assert "'lots' is not a positive size; write bytes, or e.g. 512M or 4G" in result.output


def test_config_shows_max_memory_and_eviction_and_their_sources() -> None:
    result = CliRunner(env={"SHAREDSTATE_EVICTION": "allkeys-lru"}).invoke(
        cli, ["config", "--max-memory", "512M"]
    )
    assert result.exit_code == 0, result.output
    assert "SHAREDSTATE_MAX_MEMORY=536870912    # --max-memory" in result.output
    assert (
        "SHAREDSTATE_EVICTION=allkeys-lru    # SHAREDSTATE_EVICTION (environment)" in result.output
    )


STATUS_OF_AN_EXPIRY_SERVER = {
    "address": "/run/app/state.sock",
    "pid": 4242,
    "version": "1.0",
    "uptime": 3725.0,
    "clients": [{"id": 1}, {"id": 2}],
    "waiting": 0,
    "persistence": None,
    "memory_bytes": 84 << 20,
    "keys": 1204,
    "expiring_keys": 310,
    "expired": 52,
    "evicted": 0,
    "hits": 9510,
    "misses": 490,
    "memory_used": int(12.3 * (1 << 20)),
    "max_memory": 512 << 20,
    "eviction": "allkeys-lru",
}


def test_status_shows_expiry_eviction_memory_and_reads() -> None:
    assert status_lines(STATUS_OF_AN_EXPIRY_SERVER) == [
        "running at /run/app/state.sock",
        "pid:      4242",
        "version:  1.0",
        "uptime:   1h 2m",
        "keys:     1,204 (310 with a TTL; 52 expired, 0 evicted since start)",
        "clients:  2 (0 waiting for the lock or an edit)",
        "memory:   12.3 MiB of 512 MiB (allkeys-lru); server process 84 MiB",
        "reads:    95.1% hits (9,510 of 10,000)",
        "persistence: off (state lives in memory only)",
    ]


def test_status_of_a_server_with_no_memory_bound_and_no_reads_yet() -> None:
    info = {**STATUS_OF_AN_EXPIRY_SERVER, "max_memory": None, "eviction": "noeviction",
            "hits": 0, "misses": 0, "memory_used": 900, "memory_bytes": 3 << 30}  # fmt: skip
    lines = status_lines(info)
    assert "memory:   900 B (no bound); server process 3 GiB" in lines
    assert "reads:    none by key yet" in lines


def test_status_of_an_older_server_shows_what_it_has() -> None:
    new = ("expiring_keys", "expired", "evicted", "hits", "misses", "memory_used",
           "max_memory", "eviction")  # fmt: skip
    older = {name: value for name, value in STATUS_OF_AN_EXPIRY_SERVER.items() if name not in new}
    lines = status_lines(older)
    assert "keys:     1,204" in lines
    assert "memory:   84 MiB (the server process)" in lines
    assert not any(line.startswith("reads:") for line in lines)
    assert not status_lines({**older, "memory_bytes": None})[-2].startswith("memory:")
    partial = status_lines({**older, "expired": 3})
    assert "keys:     1,204 (3 expired since start)" in partial


@pytest.mark.parametrize(
    "args",
    [["set", "k", "1", "--ttl", "0"], ["set", "k", "1", "--ttl", "-1"],
     ["set", "k", "1", "--ttl", "soon"], ["set", "k", "1", "--ttl", "inf"],
     ["expire", "k", "0"], ["expire", "k", "-5"], ["expire", "k", "nan"], ["expire", "k"]],
)  # fmt: skip
def test_seconds_to_live_must_be_a_positive_number(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)  # no server: a usage error is found before connecting
    assert result.exit_code == 2, result.output
    if len(args) > 2 and args[-1] != "k":
        assert f"{args[-1]!r} is not a positive number of seconds" in result.output
