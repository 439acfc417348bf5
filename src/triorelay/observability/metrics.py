"""``GET /metrics``: the relay's state in the Prometheus text format, with prometheus-client.

A :class:`RelayCollector` reads the relay's own counters when Prometheus scrapes, so the hot
path pays nothing for metrics: every figure already exists in the hub's and the broker's
statistics. Channels are labelled by *namespace*, never by name (an attacker could create
unbounded series): the part of the name before the first ``metrics_namespace_separator``
(``chat.room1`` → ``chat``), at most ``metrics_max_namespaces`` distinct values per scrape,
past which channels count under ``namespace="other"``. So a relay exposes at most
``metrics_max_namespaces + 1`` series per channel metric, however many channels it holds.

Stage latencies come from traced messages (one in ``latency_sample_messages`` per producer,
and every message of producers that asked: :mod:`triorelay.tracing`), kept by the hub per
namespace. Under ``--workers N`` each worker also shares its figures with the others through
:mod:`triorelay.observability.workers`, so any worker answers for all of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from triorelay.hub.statistics import JobCounters, namespace_of
from triorelay.tracing import BUCKETS, STAGES, Histogram, StageHistograms

if TYPE_CHECKING:
    from triorelay.auth.limits import ConnectionLimits
    from triorelay.hub import Hub
    from triorelay.lifecycle.supervisor import Supervisor
    from triorelay.observability.counters import RelayCounters
    from triorelay.settings import Settings
    from triorelay.uploads import UploadStore

OTHER_NAMESPACE = "other"

#: Channel counters exported per namespace: (statistic, metric name, help, counter or gauge).
_CHANNEL_METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("messages_in", "messages_in", "messages accepted from this relay's producers", True),
    ("bytes_in", "bytes_in", "bytes accepted from this relay's producers", True),
    ("messages_delivered", "messages_delivered", "messages the broker handed to this relay", True),
    ("messages_out", "messages_out", "messages written to this relay's consumers", True),
    ("bytes_out", "bytes_out", "bytes written to this relay's consumers", True),
    ("dropped", "dropped_messages", "messages lost to a consumer (policy, eviction, gap)", True),
    ("disconnected_slow", "slow_consumer_disconnects", "consumers closed with 1013", True),
    ("gaps", "gaps", "gaps the broker reported", True),
    ("buffered", "buffered_messages", "messages held for consumers now", False),
    ("producers", "producers", "producers attached now", False),
    ("consumers", "consumers", "consumers attached now", False),
)


@dataclass(frozen=True, slots=True)
class Sources:
    """What the metrics are read from (the relay's parts; the collector knows no more)."""

    settings: Settings
    hub: Hub
    limits: ConnectionLimits
    supervisor: Supervisor
    uploads: UploadStore
    counters: RelayCounters


class RelayCollector(Collector):
    """The relay's metrics, read from its statistics at each scrape."""

    def __init__(self, sources: Sources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        relay = self._sources
        settings = relay.settings
        separator = settings.metrics_namespace_separator
        limit = settings.metrics_max_namespaces
        totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for channel in relay.hub.each_channel_statistics():  # O(channels), no sort
            namespace = namespace_of(channel.name, separator)
            if namespace not in totals and len(totals) >= limit:
                namespace = OTHER_NAMESPACE
            for field, _, _, _ in _CHANNEL_METRICS:
                totals[namespace][field] += getattr(channel, field)
        for field, name, text, is_counter in _CHANNEL_METRICS:
            family: Any = (
                CounterMetricFamily(f"triorelay_channel_{name}", text, labels=["namespace"])
                if is_counter
                else GaugeMetricFamily(f"triorelay_channel_{name}", text, labels=["namespace"])
            )
            for namespace, values in sorted(totals.items()):
                family.add_metric([namespace], values[field])
            yield family
        yield GaugeMetricFamily("triorelay_channels", "live channels", value=len(relay.hub))
        yield GaugeMetricFamily(
            "triorelay_connections", "WebSocket connections open now", value=relay.limits.total
        )
        yield from _connection_metrics(relay.counters)
        yield _latency_metric(relay.hub.latency)
        drops = CounterMetricFamily(
            "triorelay_drops",
            "messages lost to broadcast consumers, by why: the policies drop_oldest and "
            "drop_newest, evicted (what a slow consumer held when it was closed), gap",
            labels=["reason"],
        )
        for why, count in sorted(relay.hub.drops.items()):
            drops.add_metric([why], count)
        yield drops
        round_trips: dict[str, Histogram] | None = getattr(relay.hub.broker, "round_trips", None)
        if round_trips is not None:
            family = HistogramMetricFamily(
                "triorelay_broker_round_trip_seconds",
                "round trips to Redis: publish (the publish script), read (positions, history)",
                labels=["operation"],
            )
            for operation, histogram in sorted(round_trips.items()):
                family.add_metric([operation], _buckets(histogram.counts), histogram.sum)
            yield family
        recoveries = CounterMetricFamily(
            "triorelay_recoveries",
            "consumers that resumed from a position, by result: recovered or the reason not",
            labels=["result"],
        )
        for result, count in sorted(relay.hub.recoveries.items()):
            recoveries.add_metric([result], count)
        yield recoveries
        yield from _job_metrics(relay.hub.jobs)
        broker = relay.hub.broker.statistics()
        yield GaugeMetricFamily(
            "triorelay_broker_ready",
            "1 while the broker can take messages",
            value=1 if broker.get("ready") else 0,
        )
        for key, text in (
            ("reconnects", "times the broker's connection was lost and made again"),
            ("gaps", "gaps the broker's reader found"),
            ("out_of_memory", "writes Redis refused at maxmemory"),
            ("malformed_entries", "stream entries skipped as malformed"),
            ("history_trimmed", "history messages let go to keep within history_max_bytes"),
        ):
            if key in broker:
                yield CounterMetricFamily(f"triorelay_broker_{key}", text, value=broker[key])
        if "history_bytes" in broker:
            yield GaugeMetricFamily(
                "triorelay_history_bytes",
                "what every channel's history holds (memory broker; within history_max_bytes)",
                value=broker["history_bytes"],
            )
        tasks = GaugeMetricFamily(
            "triorelay_task_running", "1 while a supervised relay task runs", labels=["task"]
        )
        restarts = CounterMetricFamily(
            "triorelay_task_restarts", "restarts of a supervised relay task", labels=["task"]
        )
        for task, state in sorted(relay.supervisor.tasks.items()):
            tasks.add_metric([task], 1 if state.running else 0)
            restarts.add_metric([task], state.restarts)
        yield tasks
        yield restarts
        uploads = relay.uploads
        yield GaugeMetricFamily(
            "triorelay_upload_bytes_held",
            "bytes the upload directory holds",
            value=uploads.bytes_held,
        )
        yield GaugeMetricFamily(
            "triorelay_upload_quota_bytes",
            "the upload directory's quota",
            value=uploads.quota_bytes,
        )


def _latency_metric(latency: dict[str, StageHistograms]) -> Metric:
    """Per namespace and stage, the latency histogram of traced messages (see tracing)."""
    family = HistogramMetricFamily(
        "triorelay_stage_latency_seconds",
        "time traced messages spent in each stage: accept (read off the producer's socket to "
        "accepted), broker (to handed back), queue (to taken by the consumer's writer), write "
        "(to written to the consumer's socket)",
        labels=["namespace", "stage"],
    )
    for namespace, histograms in sorted(latency.items()):
        for stage, name in enumerate(STAGES):
            buckets = _buckets(histograms.counts[stage])
            family.add_metric([namespace, name], buckets, sum_value=histograms.sums[stage])
    return family


def _job_metrics(jobs: dict[str, JobCounters]) -> Iterator[Metric]:
    """Acked queue channels' jobs by namespace: in flight now, and what became of them."""
    in_flight = GaugeMetricFamily(
        "triorelay_jobs_in_flight",
        "jobs of acked queue channels handed to a consumer and not yet acked or back",
        labels=["namespace"],
    )
    outcomes = CounterMetricFamily(
        "triorelay_jobs",
        "jobs of acked queue channels by outcome: acked, nacked, timed_out, redelivered, "
        "dead_lettered, refused (an ack or nack of a job not in flight, or malformed)",
        labels=["namespace", "outcome"],
    )
    for namespace, counters in sorted(jobs.items()):
        for kind, count in counters.counts.items():
            if kind == "in_flight":
                in_flight.add_metric([namespace], count)
            else:
                outcomes.add_metric([namespace, kind], count)
    yield in_flight
    yield outcomes


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Counts per bucket of :data:`BUCKETS` (and +Inf) as Prometheus's cumulative buckets."""
    cumulative, buckets = 0, []
    for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
    return buckets


def _connection_metrics(counters: RelayCounters) -> Iterator[Metric]:
    by_role = GaugeMetricFamily(
        "triorelay_connections_open", "WebSocket connections open now", labels=["role"]
    )
    for role, count in sorted(counters.open.items()):
        by_role.add_metric([role], count)
    yield by_role
    ended = CounterMetricFamily(
        "triorelay_connections_ended",
        "WebSocket connections that ended, by role and how (a close code, or client)",
        labels=["role", "close"],
    )
    for (role, close), count in sorted(counters.ended.items()):
        ended.add_metric([role, close], count)
    yield ended
    for kind, totals in (("messages", counters.messages), ("bytes", counters.bytes)):
        family = CounterMetricFamily(
            f"triorelay_connection_{kind}",
            f"{kind} of the connections that ended, by role and direction",
            labels=["role", "direction"],
        )
        for (role, direction), count in sorted(totals.items()):
            family.add_metric([role, direction], count)
        yield family
    refused = CounterMetricFamily(
        "triorelay_refusals",
        "handshakes and requests refused, by HTTP status and reason (auth: no_token, expired, "
        "bad_signature, origin, no_right...)",
        labels=["status", "reason"],
    )
    for (status, reason), count in sorted(counters.refused.items()):
        refused.add_metric([str(status), reason], count)
    yield refused


def registry_for(sources: Sources) -> CollectorRegistry:
    """A registry of the relay's metrics alone (not the process-wide default one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(sources))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(registry)
