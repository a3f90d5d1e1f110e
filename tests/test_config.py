"""Settings: one definition each, flags > environment > .env > defaults."""

from __future__ import annotations

import os
import re

import pytest

from sharedstate.address import MAX_SOCKET_PATH_BYTES, Address, parse_address
from sharedstate.config import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_VALUE_BYTES,
    SETTINGS,
    Settings,
    load_settings,
    settings_table_markdown,
)
from sharedstate.errors import ConfigError

CONFIGURATION_DOC = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "docs", "configuration.md"
)


def test_flag_beats_environment_beats_dotenv_beats_default(
    workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHAREDSTATE_ADDRESS")
    with open(os.path.join(workdir, ".env"), "w") as file:
        file.write("SHAREDSTATE_ADDRESS=/tmp/from-dotenv.sock\nSHAREDSTATE_LOG_LEVEL=debug\n")
    assert load_settings().address == Address(path="/tmp/from-dotenv.sock")
    assert load_settings().log_level == "DEBUG"

    monkeypatch.setenv("SHAREDSTATE_ADDRESS", "/tmp/from-env.sock")
    settings = load_settings()
    assert settings.address == Address(path="/tmp/from-env.sock")
    assert settings.sources["address"] == "SHAREDSTATE_ADDRESS (environment)"
    assert settings.sources["log_level"].endswith(".env")

    settings = load_settings({"address": "/tmp/from-flag.sock"})
    assert settings.address == Address(path="/tmp/from-flag.sock")
    assert settings.sources["address"] == "--address"


def test_dotenv_never_changes_the_real_environment(workdir: str) -> None:
    with open(os.path.join(workdir, ".env"), "w") as file:
        file.write("SHAREDSTATE_LOG_LEVEL=ERROR\nOTHER_VARIABLE=1\n")
    assert load_settings().log_level == "ERROR"
    assert "SHAREDSTATE_LOG_LEVEL" not in os.environ
    assert "OTHER_VARIABLE" not in os.environ


def test_default_address_is_per_user(monkeypatch: pytest.MonkeyPatch, workdir: str) -> None:
    monkeypatch.delenv("SHAREDSTATE_ADDRESS")
    assert load_settings().address.path == os.path.join(workdir, "sharedstate", "state.sock")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    path = load_settings().address.path
    assert path is not None
    assert f"sharedstate-{os.getuid()}" in path


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("SHAREDSTATE_LOG_LEVEL", "loud", "not a log level"),
        ("SHAREDSTATE_ALLOW_REMOTE", "maybe", "yes/no"),
        ("SHAREDSTATE_AUTHKEY", "secret", "at least 16"),
        ("SHAREDSTATE_ADDRESS", "127.0.0.1:99999", "port"),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, complaint: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=complaint) as raised:
        load_settings()
    assert variable in str(raised.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/run/app/state.sock", Address(path="/run/app/state.sock")),
        ("unix:/run/x.sock", Address(path="/run/x.sock")),
        ("127.0.0.1:7000", Address(host="127.0.0.1", port=7000)),
        ("localhost:7000", Address(host="127.0.0.1", port=7000)),
        (("localhost", 7000), Address(host="127.0.0.1", port=7000)),
        (("127.0.0.1", 7000), Address(host="127.0.0.1", port=7000)),
    ],
)
def test_addresses(text: str | tuple[str, int], expected: Address) -> None:
    assert parse_address(text) == expected


def test_relative_socket_paths_become_absolute(workdir: str) -> None:
    assert parse_address("state.sock") == Address(path=os.path.join(workdir, "state.sock"))


@pytest.mark.parametrize("text", ["", "[::1]:7000", "::1", ":7000", "host:port", "host:0"])
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_address(text)


@pytest.mark.parametrize(
    ("text", "advice"),
    [
        ("tcp://127.0.0.1:7005", r"is a URL.*write HOST:PORT for TCP \(e\.g\. 127\.0\.0\.1:7005\)"),
        ("http://example.com:80/", "is a URL.*HOST:PORT"),
        ("unix:///run/x.sock", r"is a URL.*write its path \(/run/x\.sock\)"),
    ],
)
def test_a_url_is_refused_with_what_to_write_instead(text: str, advice: str) -> None:
    with pytest.raises(ConfigError, match=advice):
        parse_address(text)


@pytest.mark.parametrize(
    "text",
    [
        "redis://127.0.0.1:6379",
        "rediss://:pw@h:1/2",
        "redis+unix:///x.sock?db=1",
        "valkey://h:1",
        "REDIS://h:6379",
    ],
)
def test_redis_and_valkey_urls_name_a_redis_backend(text: str) -> None:
    address = parse_address(text)
    assert address.is_redis
    assert address.url == text
    assert "pw" not in str(address)
    assert "pw" not in repr(address)


@pytest.mark.parametrize(
    ("text", "advice"),
    [
        ("redis://", "names no host"),
        ("redis://:pw@h:port/0", "the port must be a number"),
        ("redis+unix://", "names no socket"),
    ],
)
def test_a_redis_url_missing_a_part_is_refused(text: str, advice: str) -> None:
    with pytest.raises(ConfigError, match=advice) as refused:
        parse_address(text)
    assert "pw" not in str(refused.value)


@pytest.mark.parametrize("text", ["127.0.0.1", "localhost", "example.com", "10.0.0.5"])
def test_a_host_without_a_port_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="no port; write HOST:PORT .* or ./"):
        parse_address(text)


@pytest.mark.parametrize("text", ["state", "state.sock", "app.socket", "./127.0.0.1"])
def test_bare_names_that_are_not_hosts_stay_socket_files(text: str) -> None:
    assert parse_address(text).is_unix


def test_a_socket_path_too_long_for_the_platform_is_refused() -> None:
    path = "/tmp/" + "x" * MAX_SOCKET_PATH_BYTES + ".sock"
    with pytest.raises(ConfigError, match="at most"):
        parse_address(path)


def test_loopback_detection() -> None:
    assert parse_address("127.0.0.1:1").is_loopback
    assert parse_address("localhost:1").is_loopback
    assert parse_address("/x.sock").is_loopback
    assert not parse_address("0.0.0.0:1").is_loopback
    assert not parse_address("example.com:1").is_loopback


def test_every_setting_has_an_environment_variable_and_help() -> None:
    for spec in SETTINGS:
        assert spec.env == "SHAREDSTATE_" + spec.name.upper()
        assert spec.help
        assert spec.default_doc


def test_nothing_configured_gives_the_defaults_of_the_definitions(workdir: str) -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert set(settings.sources.values()) == {"default"}
    assert (settings.fsync, settings.journal, settings.max_value_bytes) == (
        "everysec",
        True,
        64 << 20,
    )


def test_an_empty_value_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREDSTATE_LOG_LEVEL", "")
    assert load_settings({"max_clients": None}) == load_settings()
    assert load_settings().sources["log_level"] == "default"


def test_the_defaults_other_modules_import_are_those_of_the_settings() -> None:
    defaults = Settings()
    assert DEFAULT_MAX_CLIENTS == defaults.max_clients == 1000
    assert DEFAULT_CALL_TIMEOUT == defaults.call_timeout == 10.0
    assert DEFAULT_MAX_VALUE_BYTES == defaults.max_value_bytes == 64 << 20


def test_the_docs_show_each_plain_default_from_its_definition() -> None:
    shown = {
        "max_value_bytes": "`64M`",
        "snapshot_interval": "`60`",
        "call_timeout": "`10`",
        "redis_lease": "`10`",
    }
    for spec in SETTINGS:
        if isinstance(spec.default, bool):
            assert spec.default_doc.startswith("on" if spec.default else "off")
        elif spec.default is not None:
            assert spec.default_doc == shown.get(spec.name, f"`{spec.default}`")


def test_the_settings_table_in_the_docs_is_generated_from_the_definitions() -> None:
    with open(CONFIGURATION_DOC, encoding="utf-8") as file:
        doc = file.read()
    match = re.search(
        r"<!-- settings-table:start -->\n(.*?)<!-- settings-table:end -->", doc, re.DOTALL
    )
    assert match, "docs/configuration.md lacks the settings-table markers"
    assert match.group(1) == settings_table_markdown(), (
        "the settings table in docs/configuration.md is stale; "
        "regenerate it with: sharedstate config --markdown"
    )


def test_max_memory_and_eviction_are_unset_and_noeviction_by_default() -> None:
    settings = load_settings(environ={})
    assert settings.max_memory is None
    assert settings.eviction == "noeviction"


def test_max_memory_and_eviction_from_flag_environment_and_dotenv(
    workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(os.path.join(workdir, ".env"), "w") as file:
        file.write("SHAREDSTATE_MAX_MEMORY=64M\nSHAREDSTATE_EVICTION=volatile-ttl\n")
    settings = load_settings()
    assert (settings.max_memory, settings.eviction) == (64 << 20, "volatile-ttl")
    assert settings.sources["max_memory"].endswith(".env")

    monkeypatch.setenv("SHAREDSTATE_MAX_MEMORY", "512M")
    monkeypatch.setenv("SHAREDSTATE_EVICTION", "ALLKEYS-LRU")
    settings = load_settings()
    assert (settings.max_memory, settings.eviction) == (512 << 20, "allkeys-lru")
    assert settings.sources["eviction"] == "SHAREDSTATE_EVICTION (environment)"

    settings = load_settings({"max_memory": "1.5G", "eviction": "volatile-lru"})
    assert (settings.max_memory, settings.eviction) == (3 << 29, "volatile-lru")
    assert settings.sources["max_memory"] == "--max-memory"


@pytest.mark.parametrize(
    ("text", "size"),
    [("536870912", 512 << 20), ("512M", 512 << 20), ("512MB", 512 << 20),
     ("512MiB", 512 << 20), ("64k", 64 << 10), ("4G", 4 << 30), ("2T", 2 << 40)],
)  # fmt: skip
def test_max_memory_takes_the_size_syntax_of_max_value_bytes_without_its_1g_cap(
    text: str, size: int
) -> None:
    assert load_settings(environ={"SHAREDSTATE_MAX_MEMORY": text}).max_memory == size


@pytest.mark.parametrize("text", ["0", "-1", "-512M", "lots", "512X", "inf", "nan", "0.1"])
def test_a_max_memory_that_is_not_a_positive_size_is_refused_with_an_example(text: str) -> None:
    with pytest.raises(
        ConfigError, match="is not a positive size; write bytes, or e.g. 512M"
    ) as raised:
        load_settings(environ={"SHAREDSTATE_MAX_MEMORY": text})
    assert "SHAREDSTATE_MAX_MEMORY" in str(raised.value)


@pytest.mark.parametrize("text", ["lru", "allkeys", "volatile_lru", "none"])
def test_an_unknown_eviction_policy_is_refused_with_the_choices(text: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"SHAREDSTATE_EVICTION": text})
    assert str(raised.value) == (
        f"SHAREDSTATE_EVICTION (environment): {text!r} is not an eviction policy; "
        "use noeviction, allkeys-lru, volatile-lru or volatile-ttl"
    )


def test_an_infinite_max_value_bytes_is_a_config_error_not_a_crash() -> None:
    with pytest.raises(ConfigError, match="not a size from 1 byte to 1 GiB"):
        load_settings(environ={"SHAREDSTATE_MAX_VALUE_BYTES": "inf"})
