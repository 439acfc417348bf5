"""Log lines: text as before, or JSON objects with the access log's fields; never a token."""

from __future__ import annotations

import io
import json
import logging
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.auth.keys import SECRET, token
from tests.conftest import StartRelay
from tests.helpers import wait_until
from tests.processes import LAUNCHERS, start_relay_process
from triorelay.auth.redaction import RedactTokens
from triorelay.observability.logs import JsonFormatter, configure_relay_logging, logging_config
from triorelay.settings import load_settings

ACCESS_FIELDS = {
    "client", "sub", "path", "role", "channel", "seconds",
    "messages_in", "bytes_in", "messages_out", "bytes_out", "close",
}  # fmt: skip


@pytest.fixture
def json_lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose records go through a JSON handler that redacts ``token``."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactTokens("token"))
    logger = logging.getLogger("triorelay.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_has_the_message_and_each_extra_field_as_a_key(
    json_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    """One object per line: time, level, logger, process, message, and the extra fields."""
    logger, stream = json_lines
    logger.info("%s moved %d", "alice", 3, extra={"sub": "alice", "messages_in": 3, "x": None})
    (line,) = _lines(stream)
    assert line["message"] == "alice moved 3"
    assert (line["level"], line["logger"]) == ("INFO", "triorelay.test_logs")
    assert (line["sub"], line["messages_in"], line["x"]) == ("alice", 3, None)
    assert line["time"].endswith("+00:00")
    assert isinstance(line["process"], int)


def test_a_json_line_carries_the_traceback(
    json_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    """An exception's traceback is the ``exception`` key, and the line stays one line."""
    logger, stream = json_lines
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    (line,) = _lines(stream)
    assert "ValueError: boom" in line["exception"]


def test_a_token_is_redacted_in_the_message_and_in_every_field(
    json_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    """A token in a logged query, in the message or a field (even a bare query string),
    comes out as [redacted]."""
    logger, stream = json_lines
    secret = "eyJhbGciOi.secret.part"
    logger.info(
        "GET /ws/consumer/a?token=%s&x=1",
        secret,
        extra={"path": f"/ws?x=1&token={secret}", "query": f"token={secret}"},
    )
    output = stream.getvalue()
    assert secret not in output
    (line,) = _lines(stream)
    assert line["message"] == "GET /ws/consumer/a?token=[redacted]&x=1"
    assert line["path"] == "/ws?x=1&token=[redacted]"
    assert line["query"] == "token=[redacted]"


def test_the_logging_config_is_json_or_the_text_format_of_before() -> None:
    """log_format picks the formatter; text is the format triorelay serve always had."""
    text = logging_config(load_settings())
    assert text["formatters"]["relay"] == {
        "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"
    }
    json_config = logging_config(load_settings(log_format="json"))
    assert json_config["formatters"]["relay"] == {"()": JsonFormatter}
    assert json_config["handlers"]["stderr"]["filters"] == ["redact"]


def test_under_the_hypercorn_cli_the_relay_loggers_get_one_handler_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the process's logging unconfigured (no root handler), the triorelay logger gets
    one JSON handler that redacts, however often it is configured; with a root handler (a
    --log-config), nothing changes."""
    relay = logging.getLogger("triorelay")
    monkeypatch.setattr(relay, "handlers", [])
    monkeypatch.setattr(relay, "propagate", True)
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.NullHandler()])
    level = relay.level
    try:
        configure_relay_logging(load_settings(log_format="json"))
        assert relay.handlers == []  # the process's own configuration decides
        monkeypatch.setattr(logging.getLogger(), "handlers", [])
        for _ in range(2):
            configure_relay_logging(load_settings(log_format="json", log_level="WARNING"))
        (handler,) = relay.handlers
        assert isinstance(handler.formatter, JsonFormatter)
        assert any(isinstance(f, RedactTokens) for f in handler.filters)
        assert (relay.level, relay.propagate) == (logging.WARNING, False)
    finally:
        relay.setLevel(level)  # (setLevel, not monkeypatch: it clears the loggers' caches)


async def test_the_access_record_has_its_fields_and_the_text_line_of_before(
    start_relay: StartRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """A producer's access record: the text line unchanged, and the same figures as fields."""
    relay = await start_relay(auth_hmac_secret=SECRET)
    jwt = token(sub="dave", grant={"channels": {"a.*": ["publish"]}})
    with caplog.at_level(logging.INFO, logger="triorelay.access"):
        async with relay.websocket(f"/ws/producer/a.x?ack=id&token={jwt}") as producer:
            for message in ("one", "two"):
                await producer.send_message(message)
                await producer.get_message()
        record = await wait_until(
            lambda: next((r for r in caplog.records if r.name == "triorelay.access"), None)
        )
    assert record.getMessage().startswith(
        "127.0.0.1 sub=dave path=/ws/producer/a.x role=producer channel=a.x seconds="
    )
    assert record.getMessage().endswith(" in=2/6B out=2/18B close=client")  # out: the acks
    fields = {key: getattr(record, key) for key in ACCESS_FIELDS}
    assert fields | {"seconds": 0} == {
        "client": "127.0.0.1", "sub": "dave", "path": "/ws/producer/a.x", "role": "producer",
        "channel": "a.x", "seconds": 0, "messages_in": 2, "bytes_in": 6, "messages_out": 2,
        "bytes_out": 18, "close": "client",
    }  # fmt: skip
    assert jwt not in record.getMessage()


async def test_with_the_access_log_off_no_record_is_built(
    start_relay: StartRelay, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below the access logger's level, a connection's end builds no fields and no line."""
    from triorelay.routes import session as session_module

    built: list[dict[str, Any]] = []
    monkeypatch.setattr(session_module, "access_fields", lambda **fields: built.append(fields))
    relay = await start_relay()
    ended = 'triorelay_connections_ended_total{close="client",role="producer"} 1.0'
    with caplog.at_level(logging.WARNING, logger="triorelay.access"):
        async with relay.websocket("/ws/producer/quiet?ack=id") as producer:
            await producer.send_message("one")
            await producer.get_message()

        async def counted() -> bool:
            return ended in (await relay.http.get("/metrics")).text

        await wait_until(counted)
    assert built == []
    assert not [r for r in caplog.records if r.name == "triorelay.access"]


async def test_an_event_streams_access_record_has_the_same_fields(
    start_relay: StartRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """GET /channels/{c}/events: the same keys, role events, nothing in."""
    from tests.routes.test_events import events, publish

    relay = await start_relay()
    with caplog.at_level(logging.INFO, logger="triorelay.access"):
        async with events(relay, "feed") as stream:
            await stream.next()  # subscribed
            await publish(relay, "feed", "hi", "text/plain")
            await stream.next()
        record = await wait_until(
            lambda: next((r for r in caplog.records if r.name == "triorelay.access"), None)
        )
    fields = {key: getattr(record, key) for key in ACCESS_FIELDS}
    assert (fields["role"], fields["channel"], fields["sub"]) == ("events", "feed", None)
    assert (fields["messages_in"], fields["bytes_in"], fields["close"]) == (0, 0, "client")
    assert fields["messages_out"] >= 1


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
async def test_a_relay_process_writes_json_lines_without_the_token(launcher: str) -> None:
    """TRIORELAY_LOG_FORMAT=json under triorelay serve and hypercorn: the relay's lines are
    JSON objects (every line under serve), the access line has its fields, and the token that
    came in the query is in no line."""
    env = {"TRIORELAY_LOG_FORMAT": "json", "TRIORELAY_AUTH_HMAC_SECRET": SECRET}
    relay = await start_relay_process(LAUNCHERS[launcher], env)
    jwt = token(sub="erin", grant={"channels": {"logs.*": ["publish"]}})
    try:
        url = f"{relay.ws_url}/ws/producer/logs.x?ack=id&token={jwt}"
        async with open_websocket_url(url, connect_timeout=10, disconnect_timeout=10) as ws:
            await ws.send_message("hello")
            await ws.get_message()
        relay.process.send_signal(signal.SIGINT)
        assert relay.process.stderr is not None
        with trio.fail_after(10):
            async for chunk in relay.process.stderr:
                relay.output += chunk
            await relay.process.wait()
    finally:
        if relay.process.returncode is None:
            relay.process.kill()
            await relay.process.wait()
    output = relay.output.decode()
    assert jwt not in output
    lines = output.splitlines()
    if launcher == "serve":  # Hypercorn's own lines too; under its CLI they are its own
        objects = [json.loads(line) for line in lines]
    else:
        objects = [json.loads(line) for line in lines if line.startswith("{")]
    (access,) = [o for o in objects if o["logger"] == "triorelay.access"]
    assert set(access) >= ACCESS_FIELDS
    assert (access["sub"], access["role"], access["messages_in"]) == ("erin", "producer", 1)
