"""``--token``: the token on every handshake (header or query), refused without it, and never
in a result or a log line. The smoke runs use a real relay that requires tokens."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import KeyedRelay

from loadtest import scenarios
from loadtest.cli import build_parser, main
from loadtest.compare.relay import mint_token, new_hmac_secret
from loadtest.connections import run_connections
from loadtest.engine import RoleSpec
from loadtest.tokens import REDACTED, redact_in_logs, token_headers, token_url

pytestmark = pytest.mark.timeout(45)


@pytest.fixture
def relay(keyed_relay: KeyedRelay) -> KeyedRelay:
    """A relay that requires tokens, fresh per test."""
    return keyed_relay


def _common(relay: KeyedRelay, **kwargs: Any) -> scenarios.Common:
    settings: dict[str, Any] = {"duration_s": 0.5, "drain_s": 1.0, "sample_interval_s": 0.25}
    return scenarios.Common(url=relay.url, server_pid=relay.pid, **{**settings, **kwargs})


def test_header_mode_adds_a_bearer_header_and_leaves_the_url() -> None:
    """--token-in header: Authorization: Bearer on the handshake, the URL unchanged."""
    assert token_headers("t.k.n", "header") == [(b"Authorization", b"Bearer t.k.n")]
    assert token_url("ws://h:1/ws/producer?ack=echo", "t.k.n", "header") == (
        "ws://h:1/ws/producer?ack=echo"
    )
    assert token_headers(None, "header") == []


def test_query_mode_appends_the_token_to_every_endpoint_and_sends_no_header() -> None:
    """--token-in query: ?token= on producer and consumer URLs, after any ack, no header."""
    spec = RoleSpec(url="ws://h:1", ack="echo", channel="c", token="t.k.n", token_in="query")
    assert spec.endpoints() == (
        "ws://h:1/ws/producer/c?ack=echo&token=t.k.n",
        "ws://h:1/ws/consumer/c?token=t.k.n",
    )
    assert spec.headers() == []
    assert "t.k.n" not in repr(spec)


def test_token_in_defaults_to_header_on_every_scenario() -> None:
    """--token is a common flag; --token-in defaults to header."""
    for scenario in ("pair", "connections"):
        args = build_parser().parse_args([scenario, "--url", "ws://h:1", "--token", "x"])
        assert (args.token, args.token_in) == ("x", "header")


def test_log_lines_show_a_placeholder_instead_of_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once redaction is on, no handler of the root logger writes the token."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        redact_in_logs("s3cr3t.tok")
        record = logging.LogRecord(
            "x", logging.INFO, __file__, 1, "url %s", ("/a?token=s3cr3t.tok",), None
        )
        assert handler.format(record) == f"url /a?token={REDACTED}"
    finally:
        root.removeHandler(handler)


async def test_without_a_token_every_connection_is_refused_with_401(relay: KeyedRelay) -> None:
    """No token: the trio-websocket consumer and the lean producer both get HTTP 401."""
    common = _common(relay, sender="batched", consumer_client="trio-websocket")
    result = await scenarios.run_pair(common, rate_per_s=100)
    summary = result["summary"]
    assert summary["counts"]["connected"] == 0
    assert summary["counts"]["failed_connects"] == 2
    assert summary["counts"]["delivered"] == 0
    errors = " ".join(summary["errors"])
    assert "ConnectionRejected<status_code=401>" in errors
    assert "rejected with HTTP 401" in errors
    assert result["params"]["token_in"] is None


@pytest.mark.parametrize("token_in", ["header", "query"])
async def test_with_the_token_every_client_connects_and_the_result_omits_it(
    relay: KeyedRelay, token_in: str
) -> None:
    """Token given: trio-websocket producer, consumer and a stalled one connect; the result
    says how the token travelled and never contains it."""
    token = mint_token(relay.secret, ttl_seconds=60)
    common = _common(
        relay,
        token=token,
        token_in=token_in,
        sender="trio-websocket",
        consumer_client="trio-websocket",
    )
    result = await scenarios.run_slow(common, consumers=1, stalled=1, rate_per_s=100)
    counts = result["summary"]["counts"]
    assert counts["connected"] == 3, result["summary"]["errors"]
    assert counts["failed_connects"] == 0
    assert counts["delivered"] == counts["sent"] == 50
    assert result["params"]["token_in"] == token_in
    assert token not in json.dumps(result)


@pytest.mark.parametrize("sender", ["unbatched", "batched"])
async def test_lean_producers_in_a_worker_process_get_the_token(
    relay: KeyedRelay, sender: str
) -> None:
    """The token reaches the wsproto senders in a worker process (through its spec), and the
    lean consumer."""
    token = mint_token(relay.secret, ttl_seconds=60)
    common = _common(relay, token=token, sender=sender, producer_procs=1)
    result = await scenarios.run_pair(common, rate_per_s=100)
    assert result["summary"]["counts"]["failed_connects"] == 0, result["summary"]["errors"]
    assert result["summary"]["counts"]["delivered"] == 50
    assert token not in json.dumps(result)


async def test_connections_and_the_probe_present_the_token(relay: KeyedRelay) -> None:
    """Idle connections and the round-trip probe connect with the token in the query."""
    token = mint_token(relay.secret, ttl_seconds=60)
    result = await run_connections(
        url=relay.url, connections=3, role="producer", hold_s=0.0, token=token, token_in="query"
    )
    assert result["extra"]["connected"] == 3
    assert result["extra"]["probe_rtt_ms_p50"] > 0
    assert result["params"]["token_in"] == "query"
    assert token not in json.dumps(result)


async def test_a_refused_token_stays_out_of_the_errors(relay: KeyedRelay) -> None:
    """A token signed with another secret is refused (401); the errors do not repeat it."""
    wrong = mint_token(new_hmac_secret(), ttl_seconds=60)
    result = await scenarios.run_pair(_common(relay, token=wrong, token_in="query"))
    assert result["summary"]["counts"]["failed_connects"] == 2
    assert "401" in " ".join(result["summary"]["errors"])
    assert wrong not in json.dumps(result)


def test_cli_takes_the_token_and_writes_none_of_it(relay: KeyedRelay, tmp_path: Path) -> None:
    """python -m loadtest pair --token ...: delivered, and the JSON holds only token_in."""
    token = mint_token(relay.secret, ttl_seconds=60)
    out = tmp_path / "pair.json"
    code = main(
        [
            "pair",
            "--url", relay.url,
            "--duration-seconds", "0.5",
            "--drain-seconds", "1",
            "--rate", "100",
            "--token", token,
            "--no-progress",
            "--json-out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    text = out.read_text()
    assert token not in text
    result = json.loads(text)
    assert result["summary"]["counts"]["delivered"] == 50
    assert result["params"]["token_in"] == "header"
