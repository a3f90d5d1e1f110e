"""The CLI's contract that needs no server: usage errors, help, settings output."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sharedstate import __version__
from sharedstate.cli import cli
from sharedstate.config import settings_table_markdown

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


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--fsync", "sometimes"), ("--max-clients", "0"), ("--snapshot-interval", "soon")],
)
def test_a_bad_server_flag_is_a_usage_error(flag: str, value: str) -> None:
    result = run_cli("serve", flag, value)
    assert result.returncode == 2
    assert f"Invalid value for '{flag}'" in result.stderr
