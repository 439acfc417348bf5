"""Histograms, counters and ledgers, including their merge across processes."""

from __future__ import annotations

import json

import pytest

from loadtest.clients import DeliveryCounter, DeliveryRecorder
from loadtest.codec import encode
from loadtest.stats import (
    Counters,
    DeliveryLedger,
    LatencyHistogram,
    RoleStats,
    merge,
)


def test_percentiles_in_milliseconds() -> None:
    """1..1000 ms recorded once each gives the expected percentiles (3 significant figures)."""
    h = LatencyHistogram()
    for ms in range(1, 1001):
        h.record_ns(ms * 1_000_000)
    s = h.summary_ms()
    assert s["count"] == 1000
    assert s["p50"] == pytest.approx(500, rel=1e-3)
    assert s["p99"] == pytest.approx(990, rel=1e-3)
    assert s["max"] == pytest.approx(1000, rel=1e-3)


def test_empty_histogram_reports_none() -> None:
    """With no samples, percentiles are None rather than zero."""
    s = LatencyHistogram().summary_ms()
    assert s["count"] == 0
    assert s["p99"] is None


def test_out_of_range_values_are_clamped_and_counted() -> None:
    """Negative and huge latencies are kept (clamped) and the high ones counted."""
    h = LatencyHistogram()
    h.record_ns(-5)
    h.record_ns(10**12)
    assert h.count == 2
    assert h.clamped_high == 1


def test_encode_decode_merge_equals_recording_together() -> None:
    """Merging encoded histograms from two processes equals one histogram of everything."""
    a, b, together = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for i in range(1, 500):
        a.record_ns(i * 10_000)
        together.record_ns(i * 10_000)
        b.record_ns(i * 70_000)
        together.record_ns(i * 70_000)
    merged = LatencyHistogram.decode(a.encode())
    merged.add(LatencyHistogram.decode(b.encode()))
    assert merged.summary_ms() == together.summary_ms()


def test_decode_rejects_garbage() -> None:
    """A corrupt encoded histogram raises ValueError."""
    with pytest.raises(ValueError, match="corrupt"):
        LatencyHistogram.decode("bm90IGEgaGlzdG9ncmFt")


def test_ledger_counts_duplicates_and_missing() -> None:
    """Each sent seq delivered once is clean; extra copies and gaps are counted."""
    ledger = DeliveryLedger()
    for seq in (0, 1, 1, 3, 3, 3):
        ledger.record(0, seq)
    ledger.record(1, 0)
    ledger.record(2, 0)  # producer 2 never sent anything
    assert ledger.check({0: 5, 1: 1}) == (3 + 1, 2)


def test_ledger_merge_and_wire_round_trip() -> None:
    """Ledgers from two consumers merge into the sum of their counts."""
    a, b = DeliveryLedger(), DeliveryLedger()
    a.record(0, 0)
    b.record(0, 0)
    b.record(0, 5)
    a.add(DeliveryLedger.from_wire(json.loads(json.dumps(b.to_wire()))))
    assert a.check({0: 6}) == (1, 4)


def test_role_stats_wire_round_trip_and_merge() -> None:
    """RoleStats survives JSON transport and merges counters, latencies and per-consumer data."""
    one = RoleStats(ledger=DeliveryLedger())
    one.counters.sent = 3
    one.latency.record_ns(2_000_000)
    one.ack_latency.record_ns(3_000_000)
    one.last_done_ns = 7
    one.sent_per_producer[0] = 3
    one.per_consumer_delivered.append(3)
    one.note_error("boom")
    two = RoleStats.from_wire(json.loads(json.dumps(one.to_wire())))
    total = merge([one, two])
    assert total.counters.sent == 6
    assert total.counters.errors == 2
    assert total.latency.count == 2
    assert total.ack_latency.count == 2
    assert total.last_done_ns == 7
    assert total.sent_per_producer == {0: 6}
    assert total.per_consumer_delivered == [3, 3]
    assert total.error_samples == ["boom", "boom"]


def test_counters_dict_round_trip() -> None:
    """Counters convert to and from plain dicts; unknown keys are refused."""
    c = Counters(sent=1, delivered=2)
    assert Counters.from_dict(c.to_dict()) == c
    with pytest.raises(TypeError):
        Counters.from_dict({"bogus": 1})


def test_a_recorder_counts_this_runs_messages_and_sets_aside_the_rest() -> None:
    """Deliveries of this run are recorded (latency, ledger, counts, the shared counter);
    another run's messages are foreign and a frame that is no message is a bad frame."""
    stats = RoleStats(ledger=DeliveryLedger())
    counter = DeliveryCounter()
    counter.set_target(2)
    recorder = DeliveryRecorder("0badcafe", stats, counter)
    mine = [encode("0badcafe", 1, seq, 1_000_000) for seq in (0, 1)]
    recorder.record([mine[0], encode("feedface", 1, 0, 0), "not json"], 3_000_000)
    assert not counter.reached.is_set()
    recorder.record([mine[1].encode()], 5_000_000)
    assert counter.reached.is_set()
    assert recorder.delivered == stats.counters.delivered == 2
    assert (stats.counters.foreign, stats.counters.bad_frames) == (1, 1)
    assert stats.latency.summary_ms()["max"] == pytest.approx(4.0, rel=1e-2)
    assert stats.ledger is not None
    assert stats.ledger.check({1: 2}) == (0, 0)


def test_an_acked_consumers_recorder_also_times_the_acks() -> None:
    """Given the ack's time, each message's ack latency (from its scheduled time) is recorded
    beside its delivery latency; without it, none is."""
    stats = RoleStats()
    recorder = DeliveryRecorder("0badcafe", stats, DeliveryCounter())
    recorder.record([encode("0badcafe", 0, 0, 1_000_000)], 2_000_000, acked_ns=4_000_000)
    recorder.record([encode("0badcafe", 0, 1, 1_000_000)], 2_000_000)
    assert stats.latency.count == 2
    assert stats.ack_latency.count == 1
    assert stats.ack_latency.summary_ms()["max"] == pytest.approx(3.0, rel=1e-2)
    assert stats.last_done_ns == 4_000_000  # the ack, of an acked consumer
