"""The dashboard's snapshots: the relay's state as one JSON-ready dict. Pure, no I/O.

A :class:`Snapshots` belongs to one dashboard feed (``GET /dashboard/feed``), which asks it for
a snapshot every ``dashboard_interval_seconds``. Rates and the interval's latency are since the
same feed's previous snapshot, so it keeps what it needs of that one and no more: the totals of
the channels it listed (at most ``dashboard_max_channels``) and the relay's latency histogram
(four stages of 18 buckets). A snapshot::

    {"time": 1700000000.0,                      # the wall clock, seconds
     "status": "ok",                            # as /healthz says it
     "broker": {...}, "tasks": {...},           # /healthz's details
     "connections": {"consumer": 2, ...},       # open now, by role
     "channels_live": 3,
     "totals": {"messages_in": 9, "messages_out": 5, "rate_in": 1.5, "rate_out": 0.5},
     "p99": {"accept": 0.0002, "broker": ..., "queue": ..., "write": ...},
     "channels": [{"name": "news", "mode": "broadcast", "producers": 1, "consumers": 2,
                   "messages_in": 9, "messages_out": 5, "rate_in": 1.5, "rate_out": 0.5,
                   "dropped": 0, "buffered": 0, "p99": {"accept": ..., ...}}]}

``channels``: the busiest first (most messages in and out since each appeared). Rates are
messages per second since the previous snapshot: None in the first one, for a channel the
previous one did not list, and when a count went down (a channel went, taking its counts with
it). Latencies are seconds, None without a traced message: the relay's ``p99`` is of the
messages traced in the interval, a channel's of those traced since it appeared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from triorelay.tracing import STAGES, StageHistograms

if TYPE_CHECKING:
    from triorelay.hub.statistics import ChannelStatistics
    from triorelay.observability.metrics import Sources


class Snapshots:
    """One feed's snapshots of the relay (``health``: its ``/healthz`` status)."""

    def __init__(self, sources: Sources, health: Callable[[], str], max_channels: int) -> None:
        self._sources = sources
        self._health = health
        self._max_channels = max_channels
        self._time: float | None = None
        self._totals = (0, 0)
        self._channels: dict[str, tuple[int, int]] = {}
        self._latency = StageHistograms()

    def take(self, now: float) -> dict[str, Any]:
        """The relay now (``now``: the wall clock, seconds); rates since the last call."""
        sources = self._sources
        traffic = sources.hub.traffic(self._max_channels)
        elapsed = now - self._time if self._time is not None and now > self._time else None
        latency = StageHistograms.total(sources.hub.latency.values())
        interval = latency.since(self._latency)
        previous_in, previous_out = self._totals
        snapshot = {
            "time": now,
            "status": self._health(),
            "broker": sources.hub.broker.statistics(),
            "tasks": sources.supervisor.statistics(),
            "connections": {role: n for role, n in sorted(sources.counters.open.items()) if n},
            "channels_live": traffic.channels,
            "totals": {
                "messages_in": traffic.messages_in,
                "messages_out": traffic.messages_out,
                "rate_in": _rate(traffic.messages_in - previous_in, elapsed),
                "rate_out": _rate(traffic.messages_out - previous_out, elapsed),
            },
            "p99": {name: interval.quantile(stage, 0.99) for stage, name in enumerate(STAGES)},
            "channels": [self._channel(channel, elapsed) for channel in traffic.busiest],
        }
        self._time = now
        self._totals = (traffic.messages_in, traffic.messages_out)
        self._channels = {c.name: (c.messages_in, c.messages_out) for c in traffic.busiest}
        self._latency = latency
        return snapshot

    def _channel(self, channel: ChannelStatistics, elapsed: float | None) -> dict[str, Any]:
        before = self._channels.get(channel.name)
        latency = channel.latency or {}
        return {
            "name": channel.name,
            "mode": channel.mode,
            "producers": channel.producers,
            "consumers": channel.consumers,
            "messages_in": channel.messages_in,
            "messages_out": channel.messages_out,
            "rate_in": None if before is None else _rate(channel.messages_in - before[0], elapsed),
            "rate_out": None
            if before is None
            else _rate(channel.messages_out - before[1], elapsed),
            "dropped": channel.dropped,
            "buffered": channel.buffered,
            "p99": {name: latency.get(name, {}).get("p99") for name in STAGES},
        }


def _rate(count: int, elapsed: float | None) -> float | None:
    """``count`` per second over ``elapsed`` seconds; None if unknown or negative."""
    if elapsed is None or count < 0:
        return None
    return round(count / elapsed, 3)
