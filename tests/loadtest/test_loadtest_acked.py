"""``queue --ack explicit`` against a real relay with an acked queue rule: a few hundred jobs
on each side, the report has both sides, the ratio and the publish-to-ack latency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningServer

from loadtest import scenarios
from loadtest.cli import main
from loadtest.report import check_result

pytestmark = pytest.mark.timeout(60)

JOBS = 300


def _common(server: RunningServer, **kwargs: Any) -> scenarios.Common:
    settings: dict[str, Any] = {"duration_s": 1.0, "drain_s": 2.0, "sample_interval_s": 0.25}
    return scenarios.Common(url=server.url, server_pid=server.pid, **{**settings, **kwargs})


def test_the_acked_queue_is_measured_against_the_plain_one(
    acked_relay: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every job of each side delivered once (and, on the acked side, acked); the report has
    both summaries, the acked / plain ratios and the publish-to-ack latency, and the CLI
    prints them."""
    out = tmp_path / "queue.json"
    argv = ["queue", "--url", acked_relay.url, "--ack", "explicit", "--consumers", "2"]
    argv += ["--rate", str(JOBS), "--duration-seconds", "1", "--drain-seconds", "2"]
    argv += ["--server-pid", str(acked_relay.pid), "--json-out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "acked vs plain queue: jobs" in printed
    assert "publish to ack" in printed
    result = json.loads(out.read_text())
    assert check_result(result) == []
    acked, extra = result["summary"], result["extra"]
    plain = extra["plain"]
    for side in (acked, plain):
        counts = side["counts"]
        assert counts["delivered"] == counts["expected"] == JOBS, side["errors"]
        assert (counts["duplicates"], counts["missing"], counts["errors"]) == (0, 0, 0)
    assert acked["counts"]["jobs_acked"] == JOBS
    assert plain["counts"]["jobs_acked"] == 0
    assert extra["jobs"] == {"acked": JOBS, "refused": 0, "redelivered": 0}
    ack_latency = extra["ack_latency_ms"]
    assert ack_latency["count"] == JOBS
    assert 0 < ack_latency["p50"] <= ack_latency["p99"]
    assert ack_latency["p50"] >= acked["latency_ms"]["p50"]  # acked after it was read
    for figure, row in extra["acked_vs_plain"].items():
        assert None not in row.values(), figure
        assert row["ratio"] == pytest.approx(row["acked"] / row["plain"], rel=1e-2)
    assert result["params"]["channel"] == scenarios.PLAIN_QUEUE_CHANNEL
    assert result["params"]["acked_channel"] == scenarios.ACKED_QUEUE_CHANNEL


async def test_a_channel_that_is_not_an_acked_queue_is_reported(
    acked_relay: RunningServer,
) -> None:
    """Pointed at a plain queue, the acked consumers are refused (400: the framing is for
    broadcast channels and acked queues) and the run says why; nothing counts as acked."""
    result = await scenarios.run_queue(
        _common(acked_relay, duration_s=0.2, drain_s=0.5),
        consumers=1,
        rate_per_s=10,
        ack="explicit",
        acked_channel=scenarios.PLAIN_QUEUE_CHANNEL,
    )
    summary = result["summary"]
    assert "errors" in summary["flags"]
    (error,) = summary["errors"]
    assert "400: " in error, error
    assert "acked queues" in error, error
    assert result["extra"]["jobs"]["acked"] == 0
