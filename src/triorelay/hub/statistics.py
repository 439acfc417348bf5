"""Snapshots of the hub's counters (frozen: safe to hand out), and the ledger they come from."""

from __future__ import annotations

from dataclasses import dataclass

from triorelay.envelopes import Payload, size_of
from triorelay.tracing import StageHistograms


def namespace_of(channel: str, separator: str) -> str:
    """The label a channel counts under in metrics: its name up to the first ``separator``."""
    return channel.split(separator, 1)[0] if separator else channel


def count_recovery(recoveries: dict[str, int], reason: str | None) -> None:
    """Count a resume in ``recoveries`` under ``recovered`` (``reason`` None) or its reason."""
    key = reason or "recovered"
    recoveries[key] = recoveries.get(key, 0) + 1


JOB_COUNTS = (
    "in_flight",
    "acked",
    "nacked",
    "timed_out",
    "redelivered",
    "dead_lettered",
    "refused",
)
"""What an acked queue channel counts (:class:`JobCounters`)."""


class JobCounters:
    """What happened to an acked queue channel's jobs on this relay.

    ``in_flight`` (handed out, not yet settled or back) goes up and down; the others only
    up: ``acked``, ``nacked``, ``timed_out`` (held past ``ack_timeout_seconds``),
    ``redelivered`` (handed out again), ``dead_lettered``, ``refused`` (an ack or nack of a
    job not in flight, such as a late ack, or a malformed one). ``parent``: the namespace's
    totals, which outlive the channel (``GET /metrics``), counted alongside.
    """

    __slots__ = ("counts", "parent")

    def __init__(self, parent: JobCounters | None = None) -> None:
        self.counts = dict.fromkeys(JOB_COUNTS, 0)
        self.parent = parent

    def count(self, kind: str, amount: int = 1) -> None:
        self.counts[kind] += amount
        if self.parent is not None:
            self.parent.count(kind, amount)


class ChannelCounters:
    """One channel's running totals, each kept by the code that causes it.

    - ``messages_in`` / ``bytes_in``: accepted from this relay's producers (counted when the
      broker has accepted them, so a publish that fails or is cancelled leaves no trace).
    - ``messages_delivered`` / ``bytes_delivered``: handed by the broker to this relay's
      channel for its consumers (memory broker: every accepted message; Redis: what this relay
      read from the channel's stream while it had consumers). Queue channels held by the
      broker (Redis) are taken from it, not delivered.
    - ``messages_out`` / ``bytes_out``: taken by this relay's consumers to write to sockets.
    - ``dropped``: messages lost to a consumer (policies ``drop_*``, an eviction, a gap).
    - ``recoveries``: consumers that resumed from a position, by result: ``recovered`` or
      the reason it could not be done (``trimmed``, ``epoch``...).
    """

    __slots__ = (
        "bytes_delivered",
        "bytes_in",
        "bytes_out",
        "disconnected_slow",
        "dropped",
        "gaps",
        "jobs",
        "latency",
        "messages_delivered",
        "messages_in",
        "messages_out",
        "namespace_latency",
        "recoveries",
    )

    def __init__(self) -> None:
        self.messages_in = self.bytes_in = 0
        self.messages_delivered = self.bytes_delivered = 0
        self.messages_out = self.bytes_out = 0
        self.dropped = 0
        self.disconnected_slow = 0
        self.gaps = 0
        self.recoveries: dict[str, int] = {}
        #: An acked queue channel's job counts (None for other channels).
        self.jobs: JobCounters | None = None
        #: Stage latencies of this channel's traced messages (made on the first one), and of
        #: its namespace's (the hub's, shared by the namespace's channels; for GET /metrics).
        self.latency: StageHistograms | None = None
        self.namespace_latency: StageHistograms | None = None

    def observe(self, stage: int, seconds: float) -> None:
        """A traced message spent ``seconds`` in stage ``stage`` (see triorelay.tracing)."""
        latency = self.latency
        if latency is None:
            latency = self.latency = StageHistograms()
        latency.observe_stage(stage, seconds)
        if self.namespace_latency is not None:
            self.namespace_latency.observe_stage(stage, seconds)

    def count_recovery(self, reason: str | None) -> None:
        """A consumer resumed: ``reason`` None if every missed message was replayed."""
        count_recovery(self.recoveries, reason)

    def count_in(self, payloads: list[Payload]) -> None:
        self.messages_in += len(payloads)
        self.bytes_in += sum(map(size_of, payloads))

    def uncount_out(self, size: int) -> None:
        """A message taken out was put back (queue mode): it was not delivered after all."""
        self.messages_out -= 1
        self.bytes_out -= size


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """A snapshot of one channel's counters (see :class:`ChannelCounters` for their meaning)."""

    name: str
    mode: str
    slow_consumer_policy: str
    producers: int
    consumers: int
    messages_in: int
    bytes_in: int
    messages_delivered: int
    bytes_delivered: int
    messages_out: int
    bytes_out: int
    dropped: int
    disconnected_slow: int
    buffered: int
    peak_buffered: int
    #: Gaps the broker reported: messages this relay may have missed (Redis outage, trimming).
    gaps: int
    #: Resumes by result: ``recovered`` or the reason (see ChannelCounters).
    recoveries: dict[str, int]
    #: Per stage of traced messages: count, p50 and p99 in seconds (None before any).
    latency: dict[str, dict[str, float | int | None]] | None = None
    #: An acked queue channel's jobs: in flight, acked, nacked... (see JobCounters).
    jobs: dict[str, int] | None = None


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    """A snapshot of one producer's or consumer's counters."""

    id: int
    role: str
    channel: str
    messages_in: int
    bytes_in: int
    messages_out: int
    bytes_out: int
    dropped: int
    buffered: int
    peak_buffered: int


@dataclass(frozen=True, slots=True)
class Traffic:
    """The busiest channels' statistics, and what every live channel moved (the dashboard)."""

    #: At most the limit asked for: the channels with the most messages in and out since each
    #: appeared, busiest first.
    busiest: list[ChannelStatistics]
    #: Live channels, and the messages in and out of all of them (a channel that goes takes
    #: its counts with it).
    channels: int
    messages_in: int
    messages_out: int
