"""Settings: environment variables, the TOML file, channel rules, and validation errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from triorelay.errors import SettingsError
from triorelay.settings import ChannelConfig, load_settings


@pytest.fixture(autouse=True)
def _no_relay_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep TRIORELAY_* variables of the shell running the tests out of these settings."""
    for name in [name for name in os.environ if name.startswith("TRIORELAY_")]:
        monkeypatch.delenv(name)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "triorelay.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    """With no environment and no file, the documented defaults apply."""
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.mode == "broadcast"
    assert settings.slow_consumer_policy == "disconnect"
    # Bytes first: small messages never reach the message cap before the byte bound.
    assert settings.consumer_buffer_messages == 16_384
    assert settings.consumer_buffer_bytes == 1024 * 1024
    assert settings.max_message_bytes == 1024 * 1024
    assert settings.channels == {}
    assert settings.publish_timeout_seconds == 10.0


def test_environment_variables_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """TRIORELAY_* variables set the matching settings, converted to their types."""
    monkeypatch.setenv("TRIORELAY_HOST", "0.0.0.0")
    monkeypatch.setenv("TRIORELAY_PORT", "9001")
    monkeypatch.setenv("TRIORELAY_MODE", "queue")
    monkeypatch.setenv("TRIORELAY_SLOW_CONSUMER_POLICY", "drop_oldest")
    monkeypatch.setenv("TRIORELAY_CONSUMER_BUFFER_MESSAGES", "16")
    monkeypatch.setenv("TRIORELAY_CONSUMER_BUFFER_BYTES", "65536")
    monkeypatch.setenv("TRIORELAY_MAX_MESSAGE_BYTES", "4096")
    monkeypatch.setenv("TRIORELAY_GRACEFUL_TIMEOUT_SECONDS", "5.5")
    monkeypatch.setenv("TRIORELAY_LOG_LEVEL", "DEBUG")
    settings = load_settings()
    assert settings.host == "0.0.0.0"
    assert settings.port == 9001
    assert settings.mode == "queue"
    assert settings.slow_consumer_policy == "drop_oldest"
    assert settings.consumer_buffer_messages == 16
    assert settings.consumer_buffer_bytes == 65536
    assert settings.max_message_bytes == 4096
    assert settings.graceful_timeout_seconds == 5.5
    assert settings.log_level == "DEBUG"


def test_keyword_overrides_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A keyword argument to load_settings wins over the environment variable."""
    monkeypatch.setenv("TRIORELAY_PORT", "9001")
    assert load_settings(port=9002).port == 9002


def test_channel_rules_from_environment_first_match_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """TRIORELAY_CHANNELS is JSON; the first matching glob wins and unset fields fall back."""
    rules = {
        "jobs.*": {"mode": "queue", "queue_buffer_messages": 8},
        "jobs.urgent": {"mode": "broadcast"},  # shadowed: "jobs.*" comes first
        "*.lossy": {"slow_consumer_policy": "drop_oldest", "consumer_buffer_messages": 4},
    }
    monkeypatch.setenv("TRIORELAY_CHANNELS", json.dumps(rules))
    monkeypatch.setenv("TRIORELAY_CONSUMER_BUFFER_MESSAGES", "32")
    settings = load_settings()

    defaults = ChannelConfig(
        mode="broadcast",
        slow_consumer_policy="disconnect",
        consumer_buffer_messages=32,
        consumer_buffer_bytes=1024 * 1024,
        queue_buffer_messages=1024,
        history_messages=1000,
        history_bytes=1024 * 1024,
        history_ttl_seconds=300.0,
    )
    assert settings.channel_config("jobs.mail") == defaults.model_copy(
        update={"mode": "queue", "queue_buffer_messages": 8}
    )
    assert settings.channel_config("jobs.urgent").mode == "queue"
    assert settings.channel_config("news.lossy") == defaults.model_copy(
        update={"slow_consumer_policy": "drop_oldest", "consumer_buffer_messages": 4}
    )
    # "jobs.*" is listed before "*.lossy", so it wins for a name both match.
    assert settings.channel_config("jobs.lossy").slow_consumer_policy == "disconnect"
    assert settings.channel_config("news") == defaults
    assert settings.channel_config("JOBS.mail") == defaults  # globs are case-sensitive


def test_channel_rule_order_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing the specific pattern first makes it win over a broader one."""
    rules = {"jobs.urgent": {"mode": "broadcast"}, "jobs.*": {"mode": "queue"}}
    monkeypatch.setenv("TRIORELAY_CHANNELS", json.dumps(rules))
    settings = load_settings()
    assert settings.channel_config("jobs.urgent").mode == "broadcast"
    assert settings.channel_config("jobs.mail").mode == "queue"


def test_config_file_is_read(tmp_path: Path) -> None:
    """load_settings(config_file=...) reads settings and channel rules from a TOML file."""
    path = write_toml(
        tmp_path,
        """
        port = 9100
        slow_consumer_policy = "block"
        consumer_buffer_messages = 64

        [channels."jobs.*"]
        mode = "queue"
        queue_buffer_messages = 10
        """.replace("\n        ", "\n"),
    )
    settings = load_settings(config_file=path)
    assert settings.port == 9100
    assert settings.slow_consumer_policy == "block"
    assert settings.consumer_buffer_messages == 64
    jobs = settings.channel_config("jobs.mail")
    assert (jobs.mode, jobs.queue_buffer_messages, jobs.consumer_buffer_messages) == (
        "queue",
        10,
        64,
    )


def test_environment_overrides_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment variable wins over the file; the file's other values still apply."""
    path = write_toml(tmp_path, 'port = 9100\nslow_consumer_policy = "block"\n')
    monkeypatch.setenv("TRIORELAY_PORT", "9200")
    settings = load_settings(config_file=path)
    assert settings.port == 9200
    assert settings.slow_consumer_policy == "block"


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TRIORELAY_CONFIG names the file when config_file is not given."""
    path = write_toml(tmp_path, "port = 9300\n")
    monkeypatch.setenv("TRIORELAY_CONFIG", str(path))
    assert load_settings().port == 9300


def test_config_file_applies_only_to_its_own_load(tmp_path: Path) -> None:
    """A file given to one load_settings call does not leak into the next."""
    path = write_toml(tmp_path, "port = 9100\n")
    assert load_settings(config_file=path).port == 9100
    assert load_settings().port == 8000


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"port": 70000}, ["port"]),
        ({"port": -1}, ["port"]),
        ({"consumer_buffer_messages": -1}, ["consumer_buffer_messages"]),
        ({"consumer_buffer_bytes": 0}, ["consumer_buffer_bytes"]),
        ({"queue_buffer_messages": 0}, ["queue_buffer_messages"]),
        ({"max_channels": 0}, ["max_channels"]),
        ({"redis_max_blocking_connections": 0}, ["redis_max_blocking_connections"]),
        ({"max_message_bytes": -5}, ["max_message_bytes"]),
        ({"mode": "fanout"}, ["mode"]),
        ({"slow_consumer_policy": "ignore"}, ["slow_consumer_policy"]),
        ({"log_level": "LOUD"}, ["log_level"]),
        ({"graceful_timeout_seconds": 0}, ["graceful_timeout_seconds"]),
        (
            {"consumer_buffer_bytes": 1000, "max_message_bytes": 2000},
            ["consumer_buffer_bytes", "max_message_bytes"],
        ),
        (
            {"max_message_bytes": 2000, "channels": {"small.*": {"consumer_buffer_bytes": 1000}}},
            ["consumer_buffer_bytes", "max_message_bytes"],
        ),
        (
            {"close_timeout_seconds": 2.0, "graceful_timeout_seconds": 2.0},
            ["close_timeout_seconds", "graceful_timeout_seconds"],
        ),
        (
            {"publish_rate_bytes_per_second": 1000, "max_message_bytes": 2000},
            ["publish_rate_bytes_per_second", "max_message_bytes"],
        ),
        ({"publish_rate_messages_per_second": 0.5}, ["publish_rate_messages_per_second"]),
        ({"broker": "redis"}, ["broker"]),
        ({"channels": {"jobs.*": {"mode": "queue", "colour": "red"}}}, ["channels", "colour"]),
        ({"channels": {"jobs.*": {"mode": "stack"}}}, ["channels", "mode"]),
        ({"channels": {"jobs.*": {"consumer_buffer_messages": 0}}}, ["consumer_buffer_messages"]),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, list) else None,
)
def test_bad_values_raise_settings_error_naming_them(
    overrides: dict[str, Any], names: list[str]
) -> None:
    """Each invalid value raises SettingsError whose message names the offending setting."""
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    for name in names:
        assert name in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TRIORELAY_PORT", "abc"),
        ("TRIORELAY_CONSUMER_BUFFER_MESSAGES", "-3"),
        ("TRIORELAY_CLOSE_TIMEOUT_SECONDS", "soon"),
        ("TRIORELAY_SLOW_CONSUMER_POLICY", "shrug"),
    ],
)
def test_bad_environment_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A bad TRIORELAY_* value raises SettingsError naming the setting and its variable."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    setting = variable.removeprefix("TRIORELAY_").lower()
    assert f"{setting} ({variable})" in str(caught.value)


def test_malformed_channels_json_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """TRIORELAY_CHANNELS that is not JSON raises SettingsError naming channels."""
    monkeypatch.setenv("TRIORELAY_CHANNELS", "{not json")
    with pytest.raises(SettingsError, match="channels"):
        load_settings()


def test_every_bad_value_is_reported_at_once() -> None:
    """One SettingsError lists every bad setting, not just the first."""
    with pytest.raises(SettingsError) as caught:
        load_settings(port="abc", mode="fanout", queue_buffer_messages=0)
    message = str(caught.value)
    for name in ("port", "mode", "queue_buffer_messages"):
        assert re.search(rf"^  {name} \(TRIORELAY_{name.upper()}\): ", message, re.MULTILINE)


def test_missing_config_file(tmp_path: Path) -> None:
    """A config file that does not exist raises SettingsError naming the path."""
    path = tmp_path / "absent.toml"
    with pytest.raises(SettingsError, match=re.escape(str(path))):
        load_settings(config_file=path)


def test_missing_config_file_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRIORELAY_CONFIG naming a missing file raises SettingsError naming the path."""
    path = tmp_path / "absent.toml"
    monkeypatch.setenv("TRIORELAY_CONFIG", str(path))
    with pytest.raises(SettingsError, match=re.escape(str(path))):
        load_settings()


def test_malformed_toml(tmp_path: Path) -> None:
    """A config file that is not valid TOML raises SettingsError, not a TOML parser error."""
    path = write_toml(tmp_path, "port = [\n")
    with pytest.raises(SettingsError, match="cannot read settings"):
        load_settings(config_file=path)


def test_bad_value_in_config_file_is_named(tmp_path: Path) -> None:
    """A bad value in the TOML file raises SettingsError naming the setting."""
    path = write_toml(tmp_path, 'port = "high"\n')
    with pytest.raises(SettingsError, match=r"port \(TRIORELAY_PORT\)"):
        load_settings(config_file=path)


def test_unknown_key_in_config_file(tmp_path: Path) -> None:
    """An unknown top-level key in the TOML file raises SettingsError naming it."""
    path = write_toml(tmp_path, "colour = 1\n")
    with pytest.raises(SettingsError, match="colour"):
        load_settings(config_file=path)


def test_unknown_key_in_channel_rule_from_config_file(tmp_path: Path) -> None:
    """An unknown key in a TOML channel rule raises SettingsError naming the rule and key."""
    path = write_toml(tmp_path, '[channels."jobs.*"]\nmode = "queue"\ncolour = "red"\n')
    with pytest.raises(SettingsError, match=re.escape("channels.jobs.*.colour")):
        load_settings(config_file=path)


def test_settings_are_frozen() -> None:
    """Loaded settings cannot be changed after validation."""
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1


def test_upload_and_proxy_defaults() -> None:
    """Uploads go to ./uploads, at most 1 GiB each; no upstream is configured."""
    settings = load_settings()
    assert settings.upload_dir == Path("./uploads")
    assert settings.max_upload_bytes == 1024**3
    assert settings.flow_buffer_messages == 4
    assert settings.proxy_upstreams == {}
    assert settings.proxy_connect_timeout_seconds == 5.0


def test_upload_and_proxy_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """TRIORELAY_PROXY_UPSTREAMS is a JSON object of name -> ws:// or wss:// URL."""
    upstreams = {"default": "ws://127.0.0.1:9000/echo", "secure.api": "wss://example.com/ws?x=1"}
    monkeypatch.setenv("TRIORELAY_PROXY_UPSTREAMS", json.dumps(upstreams))
    monkeypatch.setenv("TRIORELAY_UPLOAD_DIR", "/srv/relay/files")
    monkeypatch.setenv("TRIORELAY_MAX_UPLOAD_BYTES", "1048576")
    monkeypatch.setenv("TRIORELAY_PROXY_CONNECT_TIMEOUT_SECONDS", "0.5")
    settings = load_settings()
    assert {name: str(url) for name, url in settings.proxy_upstreams.items()} == upstreams
    assert settings.upload_dir == Path("/srv/relay/files")
    assert settings.max_upload_bytes == 1048576
    assert settings.proxy_connect_timeout_seconds == 0.5


@pytest.mark.parametrize(
    ("upstreams", "message"),
    [
        ({"default": "http://127.0.0.1:9000/"}, "URL scheme should be 'ws' or 'wss'"),
        ({"default": "file:///etc/passwd"}, "URL scheme should be 'ws' or 'wss'"),
        ({"default": "not a url"}, "relative URL without a base"),
        ({"a/b": "ws://127.0.0.1/"}, "String should match pattern"),
        ({"": "ws://127.0.0.1/"}, "String should match pattern"),
    ],
    ids=["http", "file", "not-a-url", "slash-in-name", "empty-name"],
)
def test_proxy_upstreams_are_websocket_urls_under_plain_names(
    monkeypatch: pytest.MonkeyPatch, upstreams: dict[str, str], message: str
) -> None:
    """Only ws:// and wss:// URLs, under names fit for a URL path segment, are accepted."""
    monkeypatch.setenv("TRIORELAY_PROXY_UPSTREAMS", json.dumps(upstreams))
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert "TRIORELAY_PROXY_UPSTREAMS" in str(error.value)
    assert message in str(error.value)


def test_upload_limits_must_be_positive() -> None:
    """A zero upload limit, buffer or connect timeout is refused, each named."""
    with pytest.raises(SettingsError) as error:
        load_settings(max_upload_bytes=0, flow_buffer_messages=0, proxy_connect_timeout_seconds=0)
    for name in ("max_upload_bytes", "flow_buffer_messages", "proxy_connect_timeout_seconds"):
        assert name in str(error.value)


def test_the_blocking_connection_bound_has_a_default_and_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """redis_max_blocking_connections is 1024 unless TRIORELAY_REDIS_MAX_BLOCKING_CONNECTIONS
    says otherwise."""
    assert load_settings().redis_max_blocking_connections == 1024
    monkeypatch.setenv("TRIORELAY_REDIS_MAX_BLOCKING_CONNECTIONS", "16")
    assert load_settings().redis_max_blocking_connections == 16


ACKED = {"mode": "queue", "ack": "explicit"}


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        ({"news.*": {"ack": "explicit"}}, "ack = 'explicit' is for queue channels"),
        ({"jobs.*": {**ACKED, "dead_letter_channel": "bad name"}}, "is not a channel name"),
        # jobs.x.dead matches jobs.* too: dead letters would go round and round.
        ({"jobs.*": ACKED}, "'jobs.*.dead' is an acked queue too"),
        ({"jobs.*": {**ACKED, "dead_letter_channel": "jobs.failed"}}, "'jobs.failed' is an"),
        ({"jobs": {**ACKED, "ack_timeout_seconds": float("inf")}}, "ack_timeout_seconds"),
        ({"jobs": {**ACKED, "redelivery_backoff_max_seconds": 1e9}}, "redelivery_backoff_max"),
    ],
)
def test_acked_queue_rules_that_cannot_work_are_refused(
    channels: dict[str, Any], message: str
) -> None:
    """An acked rule on a broadcast channel, a dead-letter channel that is no channel name
    or is an acked queue itself, times past a day: refused at start-up, saying which."""
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(channels=channels)


def test_acked_queue_rules_resolve_with_their_dead_letter_rule_first() -> None:
    """With a rule for dead letters before it, an acked rule resolves, falling back to the
    global settings; the backoff doubles per delivery up to its cap."""
    settings = load_settings(
        max_deliveries=7,
        channels={"*.dead": {"mode": "broadcast"}, "jobs.*": {**ACKED, "max_in_flight": 2}},
    )
    config = settings.channel_config("jobs.render")
    assert config.acked
    assert (config.max_in_flight, config.max_deliveries) == (2, 7)
    assert config.dead_letter_of("jobs.render") == "jobs.render.dead"
    assert not settings.channel_config("jobs.render.dead").acked
    assert [config.redelivery_delay(n) for n in (0, 1, 2, 3, 8)] == [0, 1, 2, 4, 60]
