"""Acknowledged delivery's bookkeeping (:mod:`triorelay.hub.acks`): pure, no clock of its own."""

from __future__ import annotations

import tracemalloc

from triorelay.brokers.base import Job
from triorelay.hub.acks import InFlight


def in_flight(**overrides: float) -> InFlight:
    limits = {"max_in_flight": 2, "ack_timeout_seconds": 30.0, "max_deliveries": 3}
    limits.update(overrides)
    return InFlight("relay:7", wall_clock=lambda: 1_700_000_000.0, **limits)  # type: ignore[arg-type]


def test_an_ack_settles_a_job_once() -> None:
    """Acked: it leaves the consumer's set; acking it again is refused and counted."""
    jobs = in_flight()
    delivery = jobs.hand_out(Job("a", 1, seq=1), now=0)
    assert len(jobs) == 1
    assert jobs.ack(delivery) is not None
    assert len(jobs) == 0
    assert jobs.ack(delivery) is None
    assert (jobs.acked, jobs.refused) == (1, 1)


def test_max_in_flight_is_full_until_one_is_settled() -> None:
    """Per-consumer backpressure: no more than ``max_in_flight`` handed out at once."""
    jobs = in_flight()
    first = jobs.hand_out(Job("a", 1, seq=1), now=0)
    assert not jobs.full
    jobs.hand_out(Job("b", 1, seq=2), now=0)
    assert jobs.full
    jobs.ack(first)
    assert not jobs.full


def test_a_nack_gives_the_job_back_with_its_history() -> None:
    """Nacked: back to the queue, its delivery count and why it came back kept."""
    jobs = in_flight()
    job = Job("a", 1, seq=1)
    returned = jobs.nack(jobs.hand_out(job, now=1.0), now=2.0)
    assert returned is not None
    assert (returned.job, returned.dead) == (job, False)
    assert job.deliveries == 1
    assert job.history == [(1_700_000_000.0, "relay:7", "nacked")]  # stamped in Unix time
    assert jobs.nack(99, now=3.0) is None  # never handed out


def test_a_job_past_its_deadline_comes_back_and_its_late_ack_is_refused() -> None:
    """``ack_timeout_seconds`` after it was handed out it comes back (once); the late ack
    is refused, so it is not counted done twice."""
    jobs = in_flight(ack_timeout_seconds=10.0)
    early = jobs.hand_out(Job("a", 1, seq=1), now=0)
    late = jobs.hand_out(Job("b", 1, seq=2), now=5)
    assert jobs.next_deadline() == 10
    assert jobs.expire(now=9.9) == []
    (returned,) = jobs.expire(now=10)
    assert returned.job.payload == "a"
    assert jobs.ack(early) is None
    assert jobs.ack(late) is not None
    assert jobs.next_deadline() is None
    assert (jobs.timed_out, jobs.refused) == (1, 1)


def test_the_last_allowed_delivery_sends_it_to_the_dead_letter_channel() -> None:
    """Handed out ``max_deliveries`` times without an ack: dead, with every attempt's story."""
    job = Job("poison", 6, seq=1)
    outcomes = []
    for attempt in range(3):
        jobs = in_flight(max_deliveries=3)  # each time another consumer
        delivery = jobs.hand_out(job, now=attempt)
        returned = jobs.nack(delivery, now=attempt + 0.5)
        assert returned is not None
        outcomes.append(returned.dead)
    assert outcomes == [False, False, True]
    assert [why for _, _, why in job.history] == ["nacked"] * 3


def test_a_consumer_that_leaves_gives_back_everything_at_once() -> None:
    """Cleanly or not, what it held comes back in the order it was handed out."""
    jobs = in_flight()
    jobs.hand_out(Job("a", 1, seq=1), now=0)
    jobs.hand_out(Job("b", 1, seq=2), now=0)
    returned = jobs.give_back_all(now=1)
    assert [r.job.payload for r in returned] == ["a", "b"]
    assert [r.job.history[-1][2] for r in returned] == ["consumer left"] * 2
    assert len(jobs) == 0
    assert jobs.next_deadline() is None


def test_what_is_kept_is_bounded_by_the_jobs_in_flight() -> None:
    """A long job held while many short ones are acked beside it: nothing is kept for the
    settled ones (deadlines in hand-out order, no heap of stale entries)."""
    jobs = in_flight(ack_timeout_seconds=3600.0)
    long = jobs.hand_out(Job("long", 1, seq=0), now=0)
    tracemalloc.start()
    try:
        for seq in range(1, 10_001):
            jobs.ack(jobs.hand_out(Job("short", 1, seq=seq), now=seq / 1000))
            assert jobs.next_deadline() == 3600.0  # the long job's, always
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert kept < 20_000, kept  # a stale entry per short job would be about 700 KB
    assert jobs.ack(long) is not None
    assert jobs.next_deadline() is None
