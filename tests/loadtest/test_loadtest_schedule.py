"""Open-loop schedules and the rate ladder of the max scenario."""

from __future__ import annotations

import pytest

from loadtest.schedule import (
    NS_PER_S,
    RateSchedule,
    rate_steps,
    split_rate,
    step_sustained,
)


def test_send_times_are_fixed_and_evenly_spaced() -> None:
    """Message n is due at start + phase + n * interval."""
    s = RateSchedule(start_ns=1000, interval_ns=10, count=5, phase_ns=3)
    assert [s.send_time_ns(n) for n in range(5)] == [1003, 1013, 1023, 1033, 1043]
    with pytest.raises(IndexError):
        s.send_time_ns(5)


def test_due_count_agrees_with_send_times() -> None:
    """due_count(t) counts exactly the messages whose due time is <= t."""
    s = RateSchedule(start_ns=0, interval_ns=7, count=20, phase_ns=2)
    for now in range(-5, 200):
        expected = sum(1 for n in range(20) if s.send_time_ns(n) <= now)
        assert s.due_count(now) == expected


def test_split_rate_interleaves_into_one_schedule() -> None:
    """The union of split schedules is one evenly spaced schedule at the total rate."""
    parts = split_rate(0, 1000.0, NS_PER_S, 3)
    times = sorted(p.send_time_ns(n) for p in parts for n in range(p.count))
    assert len(times) == 1000
    assert times == [n * 1_000_000 for n in range(1000)]
    assert all(t < NS_PER_S for t in times)


def test_split_rate_counts_follow_the_exact_rate() -> None:
    """300/s for 1 s is 300 messages even though the interval was rounded."""
    parts = split_rate(0, 300.0, NS_PER_S, 2)
    assert sum(p.count for p in parts) == 300


def test_split_rate_with_more_streams_than_messages() -> None:
    """Streams beyond the message count get empty schedules."""
    parts = split_rate(0, 2.0, NS_PER_S, 4)
    assert [p.count for p in parts] == [1, 1, 0, 0]


@pytest.mark.parametrize(("rate", "streams"), [(0, 1), (10, 0), (-5, 2)])
def test_split_rate_rejects_nonsense(rate: float, streams: int) -> None:
    """Non-positive rates or stream counts are refused."""
    with pytest.raises(ValueError, match="positive"):
        split_rate(0, rate, NS_PER_S, streams)


def test_rate_steps_end_at_the_requested_top() -> None:
    """The ladder keeps default steps below the top and ends at the top itself."""
    assert rate_steps(12_000) == [1000, 2000, 5000, 10000, 12000]
    assert rate_steps(5_000, [1000, 5000, 9000]) == [1000, 5000]


def test_step_sustained_needs_latency_and_delivery() -> None:
    """A step is sustained only with p99 within bound and >= 99% delivered."""
    ok = {"offered": 100, "expected": 100, "p99_bound_ms": 50.0}
    assert step_sustained(delivered=99, p99_ms=50.0, **ok)
    assert not step_sustained(delivered=98, p99_ms=1.0, **ok)
    assert not step_sustained(delivered=100, p99_ms=50.1, **ok)
    assert not step_sustained(delivered=100, p99_ms=None, **ok)
    assert not step_sustained(offered=0, expected=0, delivered=0, p99_ms=1.0, p99_bound_ms=50)
