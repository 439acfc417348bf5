"""Result JSON building, flags, shape checks, and the pure helpers of the engine."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from loadtest.endpoints import endpoint_url, host_port, resource
from loadtest.engine import RoleSpec, expected_deliveries, split_spec
from loadtest.monitor import Sample, cpu_percent_between, summarize
from loadtest.report import (
    SCHEMA,
    QueueSide,
    acked_vs_plain,
    build_result,
    check_result,
    jobs_per_s,
    one_line,
    run_summary,
)
from loadtest.stats import DeliveryLedger, RoleStats


def _stats(sent: int, delivered: int, cpu: float = 10.0) -> RoleStats:
    stats = RoleStats(ledger=DeliveryLedger())
    stats.counters.offered = sent
    stats.counters.sent = sent
    stats.counters.delivered = delivered
    stats.sent_per_producer[0] = sent
    for seq in range(delivered):
        stats.ledger.record(0, seq)  # type: ignore[union-attr]
        stats.latency.record_ns(1_000_000)
    stats.cpu_percent.append(cpu)
    return stats


def test_summary_counts_throughput_and_ratio() -> None:
    """Throughput divides by the send window; the ratio compares with expected deliveries."""
    s = run_summary(
        _stats(100, 100),
        expected=100,
        duration_s=2.0,
        server_samples=None,
        generator_samples={"main": []},
    )
    assert s["throughput_per_s"] == {"offered": 50.0, "sent": 50.0, "delivered": 50.0}
    assert s["delivered_ratio"] == 1.0
    assert s["counts"]["duplicates"] == 0
    assert s["counts"]["missing"] == 0
    assert s["flags"] == []
    assert s["server"] is None


def test_flags_raise_on_loss_and_saturation() -> None:
    """Undelivered messages and a saturated generator process are flagged."""
    s = run_summary(
        _stats(100, 50, cpu=97.0),
        expected=100,
        duration_s=1.0,
        server_samples=None,
        generator_samples={"main": []},
    )
    assert s["flags"] == ["generator_bound", "undelivered"]
    assert s["counts"]["missing"] == 50


@pytest.mark.parametrize(("cores", "bound"), [(1, True), (2, False), (None, False)])
def test_processes_sharing_a_full_core_are_generator_bound(cores: int | None, bound: bool) -> None:
    """Two processes at 50 % each fill one core between them, not two (nor an unknown count):
    neither reaches the bound alone."""
    stats = _stats(100, 100, cpu=50.0)
    stats.cpu_percent.append(45.0)
    s = run_summary(
        stats,
        expected=100,
        duration_s=1.0,
        server_samples=None,
        generator_samples={"main": [], "worker0": []},
        generator_cores=cores,
    )
    assert s["generator"]["generator_bound"] is bound
    assert s["generator"]["cores"] == cores
    assert ("generator_bound" in s["flags"]) is bound


def test_result_shape_is_checked_and_json_ready() -> None:
    """build_result output passes check_result and survives json round trips."""
    summary = run_summary(
        _stats(10, 10),
        expected=10,
        duration_s=1.0,
        server_samples=[Sample(0.0, None, 100), Sample(0.5, 50.0, 300)],
        generator_samples={"main": [Sample(0.5, 20.0, 10)]},
    )
    result = build_result(
        scenario="pair",
        url="ws://h:1",
        channel=None,
        server_pid=1,
        params={"rate_per_s": 10},
        summary=summary,
        started_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    )
    assert result["schema"] == SCHEMA
    assert check_result(json.loads(json.dumps(result))) == []
    assert result["summary"]["server"]["rss_bytes"] == {"start": 100, "max": 300, "end": 300}
    assert "pair: offered 10.0/s" in one_line(result)


def test_check_result_names_what_is_missing() -> None:
    """A malformed result lists its problems."""
    problems = check_result({"schema": "other", "summary": {"counts": {}}})
    assert any("schema" in p for p in problems)
    assert any("latency_ms" in p for p in problems)


def test_monitor_summaries() -> None:
    """CPU percent is CPU seconds over wall seconds; summaries skip the baseline sample."""
    assert cpu_percent_between(0.0, 1.0, 2.0, 2.0) == 50.0
    assert cpu_percent_between(1.0, 0.0, 1.0, 5.0) == 0.0
    out = summarize([Sample(0, None, 5), Sample(1, 40.0, 9), Sample(2, 60.0, 7)])
    assert out["cpu_percent"] == {"mean": 50.0, "max": 60.0}
    assert out["series"][0] == [0, None, 5]


def test_endpoint_urls() -> None:
    """Plain endpoints for the baseline; channel and ack only when asked."""
    assert endpoint_url("ws://h:8000", "consumer") == "ws://h:8000/ws/consumer"
    assert endpoint_url("ws://h:8000/", "producer", "jobs.x", "id") == (
        "ws://h:8000/ws/producer/jobs.x?ack=id"
    )
    assert endpoint_url("ws://h:1", "consumer", "a/b", "id") == "ws://h:1/ws/consumer/a%2Fb"
    assert host_port("ws://h:9/x") == ("h", 9)
    assert resource("ws://h:9/ws/producer?ack=none") == "/ws/producer?ack=none"
    with pytest.raises(ValueError, match="ws://"):
        endpoint_url("http://h", "consumer")


def test_split_spec_covers_everything_once() -> None:
    """Producers are dealt round-robin, consumers split evenly, stalled ones stay local."""
    spec = RoleSpec(url="ws://h:1", total_producers=5, consumers=7, stalled_consumers=2)
    parts = split_spec(spec, producer_procs=2, consumer_procs=3)
    local, workers = parts[0], parts[1:]
    assert local.producers == []
    assert local.consumers == 0
    assert local.stalled_consumers == 2
    assert [w.producers for w in workers[:2]] == [[0, 2, 4], [1, 3]]
    assert [w.consumers for w in workers[2:]] == [3, 2, 2]
    assert sum(w.stalled_consumers for w in workers) == 0
    in_process = split_spec(spec, 0, 0)
    assert len(in_process) == 1
    assert in_process[0].producers == [0, 1, 2, 3, 4]
    assert RoleSpec.from_json(spec.to_json()) == spec


def test_expected_deliveries_by_semantics() -> None:
    """Broadcast multiplies by consumers; competing does not; no consumers, no deliveries."""
    assert expected_deliveries(10, 3, "broadcast") == 30
    assert expected_deliveries(10, 3, "competing") == 10
    assert expected_deliveries(10, 0, "broadcast") == 0


def test_consumers_connect_to_the_consumer_url_when_given() -> None:
    """--consumer-url: producers on one relay, consumers on another."""
    spec = RoleSpec(url="ws://a:1", consumer_url="ws://b:2", channel="c", ack="echo")
    assert spec.endpoints() == ("ws://a:1/ws/producer/c?ack=echo", "ws://b:2/ws/consumer/c")
    assert RoleSpec(url="ws://a:1").endpoints()[1] == "ws://a:1/ws/consumer"
    assert RoleSpec.from_json(spec.to_json()).consumer_url == "ws://b:2"


def _summary(delivered: int, latency_ns: int) -> dict[str, object]:
    stats = _stats(delivered, 0)
    stats.counters.delivered = delivered
    for _ in range(delivered):
        stats.latency.record_ns(latency_ns)
    return run_summary(
        stats, expected=delivered, duration_s=2.0, server_samples=None, generator_samples={}
    )


def test_acked_against_plain_gives_each_figure_and_its_ratio() -> None:
    """Jobs done per second, latency and server CPU per job, acked / plain; a figure missing
    on either side (no server PID) has no ratio."""
    acked, plain = _summary(900, 2_000_000), _summary(1000, 1_000_000)
    rows = acked_vs_plain(QueueSide(acked, 0.9, 450.0), QueueSide(plain, 0.5, 500.0))
    assert rows["jobs_per_s"] == {"acked": 450.0, "plain": 500.0, "ratio": 0.9}
    assert rows["latency_p50_ms"] == {"acked": 2.0, "plain": 1.0, "ratio": 2.0}
    assert rows["server_cpu_us_per_job"] == {"acked": 1000.0, "plain": 500.0, "ratio": 2.0}
    unsampled = acked_vs_plain(QueueSide(acked, None, 450.0), QueueSide(plain, None, 500.0))
    assert unsampled["server_cpu_us_per_job"] == {"acked": None, "plain": None, "ratio": None}


def test_jobs_per_second_run_to_the_last_one_done() -> None:
    """From the first scheduled send to the last job done: 1000 jobs done 2.5 s after the
    start are 400/s, however long the send window was; nothing done, no rate."""
    assert jobs_per_s(1000, 1_000_000_000, 3_500_000_000) == 400.0
    assert jobs_per_s(0, 1_000_000_000, 0) is None
