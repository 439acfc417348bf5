"""Where a message spends its time, stage by stage. Pure, no I/O.

A traced message carries the wall-clock times (nanoseconds) it reached each stage:

``read``       its last byte was read off the producer's socket (the TCP read that held it);
``accepted``   the broker accepted it (memory: numbered; Redis: stored, by Redis's clock);
``delivered``  the broker handed it to this relay's channel (Redis: the reader read it);
``taken``      a consumer's writer took it from that consumer's buffer;
``written``    the consumer's socket write completed.

So the four stages ``accept``, ``broker``, ``queue`` and ``write`` add up to the time from the
producer's socket to the consumer's socket. Which messages are traced: one in
``latency_sample_messages`` of every producer's (the histograms: ``GET /metrics``, channel
statistics), and every message of a producer that asks (``?trace=true``, or an HTTP publish
with a W3C ``traceparent``), whose consumers may ask for a trace notice (``?trace=true``) and
whose trace is logged. Untraced messages pay nothing but a countdown per producer read.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass

STAGES = ("accept", "broker", "queue", "write")

#: Histogram bucket upper bounds, seconds (the last bucket is +Inf).
BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def now_ns() -> int:
    """The wall clock, in nanoseconds: comparable between relays on one host, and with
    Redis's ``TIME``."""
    return time.time_ns()


@dataclass(slots=True)
class Trace:
    """The stage times of one message (0: not reached yet). ``trace_id``: set for a message
    whose producer asked for traces (a W3C trace id), ``None`` for a sample."""

    read_ns: int
    trace_id: str | None = None
    accepted_ns: int = 0
    delivered_ns: int = 0

    def encode(self) -> bytes:
        """As carried through Redis (beside the message, in its stream entry)."""
        return f"{self.trace_id or '-'} {self.read_ns}".encode()

    @classmethod
    def decode(cls, data: bytes, accepted_ns: int) -> Trace:
        """What :meth:`encode` wrote; ValueError if malformed."""
        trace_id, read = data.decode().split(" ")
        return cls(int(read), None if trace_id == "-" else trace_id, accepted_ns)

    def stages(self, taken_ns: int, written_ns: int) -> tuple[float, float, float, float]:
        """The four stages' durations in seconds, for a consumer that took and wrote it."""
        return (
            (self.accepted_ns - self.read_ns) / 1e9,
            (self.delivered_ns - self.accepted_ns) / 1e9,
            (taken_ns - self.delivered_ns) / 1e9,
            (written_ns - taken_ns) / 1e9,
        )

    def notice(self, channel: str, offset: int, taken_ns: int, written_ns: int) -> str:
        """The trace notice a consumer asked for (``?trace=true``): the message's stage times."""
        return json.dumps(
            {
                "triorelay": "trace",
                "channel": channel,
                "offset": offset,
                "trace_id": self.trace_id,
                "read_ns": self.read_ns,
                "accepted_ns": self.accepted_ns,
                "delivered_ns": self.delivered_ns,
                "taken_ns": taken_ns,
                "written_ns": written_ns,
                "stages_seconds": dict(zip(STAGES, self.stages(taken_ns, written_ns), strict=True)),
            },
            separators=(",", ":"),
        )


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header, or None if absent or malformed."""
    if traceparent is None:
        return None
    match = _TRACEPARENT.fullmatch(traceparent.strip().lower())
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)


def new_trace_id() -> str:
    """A W3C trace id for a producer that asked for traces without one (``?trace=true``)."""
    return secrets.token_hex(16)


class Histogram:
    """One histogram over :data:`BUCKETS` (plus +Inf): counts per bucket and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


class StageHistograms:
    """Per stage, how many observations fell in each of :data:`BUCKETS` (plus +Inf), and
    their sum: what a Prometheus histogram holds, and enough for p50 / p99 estimates."""

    __slots__ = ("counts", "sums")

    def __init__(self) -> None:
        self.counts = [[0] * (len(BUCKETS) + 1) for _ in STAGES]
        self.sums = [0.0] * len(STAGES)

    def observe(self, durations: tuple[float, float, float, float]) -> None:
        for stage, seconds in enumerate(durations):
            seconds = max(seconds, 0.0)  # clocks of two machines may disagree a little
            self.counts[stage][bisect_left(BUCKETS, seconds)] += 1
            self.sums[stage] += seconds

    def observe_stage(self, stage: int, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.counts[stage][bisect_left(BUCKETS, seconds)] += 1
        self.sums[stage] += seconds

    @classmethod
    def total(cls, histograms: Iterable[StageHistograms]) -> StageHistograms:
        """A new histogram of the observations of all ``histograms`` together."""
        total = cls()
        for histogram in histograms:
            for stage, counts in enumerate(histogram.counts):
                total.counts[stage] = [
                    a + b for a, b in zip(total.counts[stage], counts, strict=True)
                ]
                total.sums[stage] += histogram.sums[stage]
        return total

    def since(self, earlier: StageHistograms) -> StageHistograms:
        """A new histogram of what this one observed after ``earlier``, a copy of it taken
        before (as :meth:`total` makes): the observations of an interval."""
        window = StageHistograms()
        for stage, counts in enumerate(self.counts):
            window.counts[stage] = [
                a - b for a, b in zip(counts, earlier.counts[stage], strict=True)
            ]
            window.sums[stage] = self.sums[stage] - earlier.sums[stage]
        return window

    def count(self, stage: int) -> int:
        return sum(self.counts[stage])

    def quantile(self, stage: int, q: float) -> float | None:
        """An estimate of quantile ``q`` of ``stage`` (as Prometheus's histogram_quantile:
        linear within the bucket); None without observations."""
        counts = self.counts[stage]
        total = sum(counts)
        if not total:
            return None
        rank = q * total
        seen = 0
        lower = 0.0
        for index, count in enumerate(counts):
            if seen + count >= rank and count:
                if index == len(BUCKETS):  # +Inf: the highest finite bound is all we know
                    return BUCKETS[-1]
                upper = BUCKETS[index]
                return lower + (upper - lower) * (rank - seen) / count
            seen += count
            lower = BUCKETS[index] if index < len(BUCKETS) else lower
        return BUCKETS[-1]  # pragma: no cover - the loop returns

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        """Per stage: observations, p50 and p99 (seconds), for the channel statistics."""
        return {
            name: {
                "count": self.count(stage),
                "p50": self.quantile(stage, 0.5),
                "p99": self.quantile(stage, 0.99),
            }
            for stage, name in enumerate(STAGES)
        }
