"""The ``roundtrip`` scenario: the check of each delivery, its command line, and short runs
against a real relay and the real baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.cli import main
from loadtest.codec import encode
from loadtest.report import check_result
from loadtest.roundtrip import RoundTripError, check_delivery, run_roundtrip
from tests.conftest import StartRelay
from tests.loadtest.conftest import KeyedRelay, RunningServer

pytestmark = pytest.mark.timeout(30)

RUN = "0badcafe"


def test_a_round_passes_only_with_exactly_its_message() -> None:
    """The message just sent (run and sequence number) passes, text or bytes; anything else,
    or more or fewer messages than one, fails saying what came."""
    check_delivery([encode(RUN, 0, 7, 1)], RUN, 7)
    check_delivery([encode(RUN, 0, 7, 1).encode()], RUN, 7)
    cases = [
        ([encode(RUN, 0, 6, 1)], "message 6 of run 0badcafe came instead"),
        ([encode("feedf00d", 0, 7, 1)], "message 7 of run feedf00d came instead"),
        ([encode(RUN, 0, 7, 1)] * 2, "2 messages came instead of one"),
        (["hello"], "not a load-test message: 'hello'"),
        ([b"\xff"], "not a load-test message"),
    ]
    for messages, error in cases:
        with pytest.raises(RoundTripError, match=f"round 7: {error}"):
            check_delivery(messages, RUN, 7)  # type: ignore[arg-type]


def test_the_cli_refuses_to_time_nothing() -> None:
    """--rounds 0 or --warmup -1 is a usage error (exit 2), before connecting."""
    for flag, value in (("--rounds", "0"), ("--warmup", "-1")):
        with pytest.raises(SystemExit) as exited:
            main(["roundtrip", "--url", "ws://127.0.0.1:9", flag, value])
        assert exited.value.code == 2


async def test_every_round_delivers_its_message_from_a_relay(start_relay: StartRelay) -> None:
    """50 timed rounds after 10 untimed: every message delivered and echoed once, 50
    samples, and a result that passes the schema's own check."""
    server = await start_relay()
    result = await run_roundtrip(url=server.ws_url, rounds=50, warmup=10, sample_interval_s=0.1)
    check_result(result)
    counts = result["summary"]["counts"]
    assert (counts["sent"], counts["delivered"], counts["acks"]) == (60, 60, 60)
    times = result["extra"]["roundtrip_ms"]
    assert times["count"] == 50
    assert 0 < times["p50"] <= times["p99"] <= times["max"]
    assert result["summary"]["latency_ms"]["p50"] is not None
    assert result["summary"]["server"] is None  # no --server-pid: nothing sampled there
    assert result["summary"]["generator"]["series"]["main"]  # this process was


async def test_a_channel_of_its_own_on_a_relay(start_relay: StartRelay) -> None:
    """--channel: producer and consumer meet on it (?ack=echo on the producer's URL)."""
    server = await start_relay()
    result = await run_roundtrip(url=server.ws_url, channel="rt.x", rounds=5, warmup=0)
    assert result["summary"]["counts"]["delivered"] == 5
    assert result["target"]["channel"] == "rt.x"


def test_every_round_delivers_its_message_from_the_baseline(
    baseline_server: RunningServer, tmp_path: Path
) -> None:
    """The same against the asyncio version (its queue, its echo), through the CLI."""
    out = tmp_path / "roundtrip.json"
    argv = ["roundtrip", "--url", baseline_server.url, "--rounds", "30", "--warmup", "5"]
    assert main([*argv, "--server-pid", str(baseline_server.pid), "--json-out", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    check_result(result)
    assert result["summary"]["counts"]["delivered"] == 35
    assert result["extra"]["roundtrip_ms"]["count"] == 30
    assert result["summary"]["server"] is not None


async def test_a_refused_handshake_fails_the_run_saying_so(keyed_relay: KeyedRelay) -> None:
    """No token for a relay that requires one: the run fails at once, naming the refusal."""
    with pytest.raises(RoundTripError, match=r"cannot connect to .*/ws/consumer.*401"):
        await run_roundtrip(url=keyed_relay.url, rounds=5)


async def test_a_relay_that_stops_delivering_fails_the_run_at_that_round(
    start_relay: StartRelay,
) -> None:
    """A producer past the relay's publish rate (1 message a second) is refused: the run fails
    at the round where its message did not come, saying so."""
    server = await start_relay(publish_rate_messages_per_second=1)
    with pytest.raises(RoundTripError, match=r"round [1-9]"):
        await run_roundtrip(url=server.ws_url, rounds=5, warmup=0, connect_timeout_s=2)
