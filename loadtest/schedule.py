"""Open-loop send schedules and rate ladders (I/O-free).

A schedule fixes *when* every message is due before the run starts; senders never wait for a
reply before the next send. Latency is measured from the scheduled time, so a stalled server (or
a stalled sender) shows up as latency instead of silently lowering the offered rate (coordinated
omission).

All arithmetic is integer nanoseconds: the interval is rounded once to a whole nanosecond, which
changes the offered rate by less than 1e-5 relative at 100k msg/s and keeps
:meth:`RateSchedule.send_time_ns` and :meth:`RateSchedule.due_count` exactly consistent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

NS_PER_S: Final = 1_000_000_000

#: The default offered rates (msg/s) stepped through by the ``max`` scenario.
DEFAULT_RATE_STEPS: Final = (1_000, 2_000, 5_000, 10_000, 15_000, 20_000, 30_000, 40_000, 50_000)
#: A ``max`` step is sustained when its p99 latency is at most this (milliseconds)...
DEFAULT_P99_BOUND_MS: Final = 50.0
#: ... and at least this fraction of the expected deliveries arrived.
DEFAULT_MIN_DELIVERED_RATIO: Final = 0.99


@dataclass(frozen=True)
class RateSchedule:
    """Message ``n`` (from 0) is due at ``start_ns + phase_ns + n * interval_ns``.

    ``count`` is the number of messages in the schedule; :meth:`send_time_ns` raises
    :class:`IndexError` past it.
    """

    start_ns: int
    interval_ns: int
    count: int
    phase_ns: int = 0

    def __post_init__(self) -> None:
        if self.interval_ns <= 0:
            raise ValueError(f"interval_ns must be positive, got {self.interval_ns}")
        if self.count < 0 or self.phase_ns < 0:
            raise ValueError("count and phase_ns must not be negative")

    @property
    def rate_per_s(self) -> float:
        """The offered rate of this schedule in messages per second."""
        return NS_PER_S / self.interval_ns

    def send_time_ns(self, n: int) -> int:
        """Return when message ``n`` is due."""
        if not 0 <= n < self.count:
            raise IndexError(f"message {n} is outside a schedule of {self.count}")
        return self.start_ns + self.phase_ns + n * self.interval_ns

    def due_count(self, now_ns: int) -> int:
        """Return how many messages are due at ``now_ns`` (due time <= now), at most ``count``."""
        elapsed = now_ns - self.start_ns - self.phase_ns
        if elapsed < 0:
            return 0
        return min(self.count, elapsed // self.interval_ns + 1)


def split_rate(
    start_ns: int, total_rate_per_s: float, duration_ns: int, streams: int
) -> list[RateSchedule]:
    """Split an offered rate over ``streams`` interleaved schedules.

    The union of the returned schedules is one schedule at ``total_rate_per_s`` holding
    ``round(total_rate_per_s * duration)`` messages due from ``start_ns`` on: stream ``i`` takes
    messages ``i, i + streams, ...`` of it. Raises :class:`ValueError` for a non-positive rate
    or stream count.
    """
    if total_rate_per_s <= 0 or streams <= 0 or duration_ns < 0:
        raise ValueError("rate and streams must be positive, duration not negative")
    base_interval = max(1, round(NS_PER_S / total_rate_per_s))
    # The count comes from the exact rate, not the rounded interval, so 300/s for 1 s is 300.
    total = round(total_rate_per_s * duration_ns / NS_PER_S)
    schedules = []
    for i in range(streams):
        count = max(0, -(-(total - i) // streams))
        schedules.append(
            RateSchedule(
                start_ns=start_ns,
                interval_ns=base_interval * streams,
                count=count,
                phase_ns=i * base_interval,
            )
        )
    return schedules


def rate_steps(max_rate_per_s: float, steps: Sequence[int] = DEFAULT_RATE_STEPS) -> list[int]:
    """Return the rates of ``steps`` up to ``max_rate_per_s``, adding ``max_rate_per_s`` itself.

    The result is sorted and without duplicates, so the ladder always ends at the requested top.
    """
    top = int(max_rate_per_s)
    if top <= 0:
        raise ValueError("max_rate_per_s must be positive")
    return sorted({s for s in steps if s < top} | {top})


def step_sustained(
    *,
    offered: int,
    delivered: int,
    expected: int,
    p99_ms: float | None,
    p99_bound_ms: float,
    min_delivered_ratio: float = DEFAULT_MIN_DELIVERED_RATIO,
) -> bool:
    """Decide whether one rate step was sustained.

    Sustained means the p99 latency is known and within ``p99_bound_ms`` and at least
    ``min_delivered_ratio`` of the expected deliveries arrived (``expected`` is the offered count
    times the fan-out; with nothing offered the step is not sustained).
    """
    if offered <= 0 or expected <= 0 or p99_ms is None:
        return False
    return p99_ms <= p99_bound_ms and delivered >= min_delivered_ratio * expected
