"""The traffic scenarios: ``pair``, ``fanout``, ``queue`` (and acked queue against plain),
``slow`` and ``max``.

Each is an async function taking a :class:`Common` (target URL, durations, process split...)
plus its own knobs, and returning the result object of :mod:`loadtest.report`. They never
print; the CLI does. Point them at any base URL: the baseline, triorelay, or anything speaking
the same protocol.

Delivery semantics differ between servers, so the expectation is a parameter: ``broadcast``
(each consumer gets every message; triorelay's plain channels) or ``competing`` (each message
goes to one consumer; triorelay's queue channels such as ``jobs.x``, and the baseline
everywhere, since it has one global queue).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from loadtest.endpoints import Ack
from loadtest.engine import (
    ConsumerAck,
    ConsumerClient,
    Delivery,
    ProgressFn,
    RoleSpec,
    RunOutcome,
    Sender,
    execute,
)
from loadtest.monitor import ProcessSampler
from loadtest.report import QueueSide, acked_vs_plain, build_result, jobs_per_s, run_summary
from loadtest.schedule import (
    DEFAULT_MIN_DELIVERED_RATIO,
    DEFAULT_P99_BOUND_MS,
    DEFAULT_RATE_STEPS,
    rate_steps,
    step_sustained,
)
from loadtest.tokens import TokenIn, token_param

logger = logging.getLogger(__name__)


@dataclass
class Common:
    """Settings every traffic scenario shares.

    ``producer_procs``/``consumer_procs`` > 0 move producers/consumers into that many worker
    processes; ``sender`` is how producers write (:data:`loadtest.engine.Sender`: one message
    per write by default, ``batched`` for the lean sender's one write per 1 ms tick),
    ``consumer_client`` what consumers read with (:data:`loadtest.engine.ConsumerClient`).
    ``drain_s`` is the time after the send window allowed for acks and deliveries.
    ``consumer_url`` (optional) is where consumers connect instead of ``url``: another relay
    process on the same broker, to measure the cross-process path. ``token`` goes on every
    handshake as ``token_in`` says (:mod:`loadtest.tokens`); it is kept out of ``repr`` and
    :meth:`params`, which record only ``token_in`` (``None`` without a token).
    """

    url: str
    consumer_url: str | None = None
    channel: str | None = None
    duration_s: float = 10.0
    payload_bytes: int = 128
    drain_s: float = 2.0
    ack: Ack | None = None
    server_pid: int | None = None
    producer_procs: int = 0
    consumer_procs: int = 0
    sender: Sender = "unbatched"
    consumer_client: ConsumerClient = "lean"
    connect_timeout_s: float = 10.0
    connect_concurrency: int = 64
    sample_interval_s: float = 0.5
    progress: ProgressFn | None = None
    token: str | None = field(default=None, repr=False)
    token_in: TokenIn = "header"

    def params(self) -> dict[str, Any]:
        """Return the JSON-ready parameters: everything but the progress callback and the
        token, of which only ``token_in`` says how it travelled (``None``: no token)."""
        out = dataclasses.asdict(self)
        out.pop("progress")
        out.pop("token")
        out["token_in"] = token_param(self.token, self.token_in)
        return out


def _spec(common: Common, **kwargs: Any) -> RoleSpec:
    return RoleSpec(
        url=common.url,
        consumer_url=common.consumer_url,
        channel=common.channel,
        ack=common.ack,
        payload_bytes=common.payload_bytes,
        duration_s=common.duration_s,
        drain_s=common.drain_s,
        sender=common.sender,
        consumer_client=common.consumer_client,
        connect_timeout_s=common.connect_timeout_s,
        connect_concurrency=common.connect_concurrency,
        token=common.token,
        token_in=common.token_in,
        **kwargs,
    )


async def _run(common: Common, spec: RoleSpec, delivery: Delivery) -> RunOutcome:
    return await execute(
        spec,
        delivery=delivery,
        producer_procs=common.producer_procs,
        consumer_procs=common.consumer_procs,
        server_pid=common.server_pid,
        sample_interval_s=common.sample_interval_s,
        progress=common.progress,
    )


def _summary(outcome: RunOutcome, *, keep_series: bool = True) -> dict[str, Any]:
    return run_summary(
        outcome.stats,
        expected=outcome.expected,
        duration_s=outcome.duration_s,
        server_samples=None if not outcome.server_samples else outcome.server_samples,
        generator_samples=outcome.generator_samples,
        generator_cores=outcome.generator_cores,
        keep_series=keep_series,
    )


def _consumer_spread(delivered: Sequence[int]) -> dict[str, Any]:
    if not delivered:
        return {"consumers": 0, "min": None, "max": None, "mean": None}
    return {
        "consumers": len(delivered),
        "min": min(delivered),
        "max": max(delivered),
        "mean": round(sum(delivered) / len(delivered), 1),
    }


def _result(
    scenario: str, common: Common, outcome: RunOutcome, params: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    return build_result(
        scenario=scenario,
        url=common.url,
        channel=common.channel,
        server_pid=common.server_pid,
        params={**common.params(), **params},
        summary=_summary(outcome),
        extra={
            "connect_seconds": outcome.connect_s,
            "server_cpu_seconds_connected": outcome.server_cpu_s_connected,
            "per_consumer_delivered": _consumer_spread(outcome.stats.per_consumer_delivered),
            **extra,
        },
    )


async def run_pair(
    common: Common,
    *,
    producers: int = 1,
    consumers: int = 1,
    rate_per_s: float = 1000.0,
    delivery: Delivery = "broadcast",
) -> dict[str, Any]:
    """P producers -> C consumers on one channel at a fixed total offered rate (open loop)."""
    spec = _spec(common, total_producers=producers, consumers=consumers, rate_per_s=rate_per_s)
    outcome = await _run(common, spec, delivery)
    params = {
        "producers": producers,
        "consumers": consumers,
        "rate_per_s": rate_per_s,
        "delivery": delivery,
    }
    return _result("pair", common, outcome, params)


async def run_fanout(
    common: Common, *, consumers: int = 100, rate_per_s: float = 10.0
) -> dict[str, Any]:
    """1 producer -> N consumers; reports deliveries/s and per-delivery latency.

    Expects broadcast delivery: ``expected`` is sent x N (the baseline delivers each message
    once, so its ``delivered_ratio`` is about 1/N: that is its semantics, not a generator fault).
    """
    spec = _spec(common, total_producers=1, consumers=consumers, rate_per_s=rate_per_s)
    outcome = await _run(common, spec, "broadcast")
    params = {"producers": 1, "consumers": consumers, "rate_per_s": rate_per_s}
    deliveries = outcome.stats.counters.delivered
    return _result(
        "fanout",
        common,
        outcome,
        params,
        deliveries_per_s=round(deliveries / common.duration_s, 1) if common.duration_s else None,
    )


#: The channels of ``queue --ack explicit`` when none is named: the plain queue side's and
#: the acked queue side's (:func:`acked_queue_rules` gives the rules the relay needs for them).
PLAIN_QUEUE_CHANNEL: Final = "loadtest.queue"
ACKED_QUEUE_CHANNEL: Final = "loadtest.acked"


def acked_queue_rules(
    plain: str = PLAIN_QUEUE_CHANNEL, acked: str = ACKED_QUEUE_CHANNEL
) -> dict[str, dict[str, str]]:
    """The relay's channel rules ``queue --ack explicit`` needs (``TRIORELAY_CHANNELS`` as
    JSON, or ``[channels."..."]`` tables in TOML): ``plain`` a queue, ``acked`` an acked queue
    (the rule's other bounds, such as ``max_in_flight``, at the relay's defaults)."""
    return {acked: {"mode": "queue", "ack": "explicit"}, plain: {"mode": "queue"}}


async def run_queue(
    common: Common,
    *,
    producers: int = 1,
    consumers: int = 4,
    rate_per_s: float = 1000.0,
    ack: ConsumerAck = "auto",
    acked_channel: str | None = None,
) -> dict[str, Any]:
    """Competing consumers: each message should reach exactly one consumer.

    Keeps a delivery ledger, so ``counts.duplicates`` and ``counts.missing`` are exact. Use a
    queue channel (``--channel jobs.x``) against triorelay. With ``ack="explicit"``, see
    :func:`run_acked_queue`.
    """
    if ack == "explicit":
        return await run_acked_queue(
            common,
            producers=producers,
            consumers=consumers,
            rate_per_s=rate_per_s,
            acked_channel=acked_channel,
        )
    spec = _spec(
        common,
        total_producers=producers,
        consumers=consumers,
        rate_per_s=rate_per_s,
        track_ledger=True,
    )
    outcome = await _run(common, spec, "competing")
    params = {"producers": producers, "consumers": consumers, "rate_per_s": rate_per_s}
    return _result("queue", common, outcome, params)


async def run_acked_queue(
    common: Common,
    *,
    producers: int = 1,
    consumers: int = 4,
    rate_per_s: float = 1000.0,
    acked_channel: str | None = None,
) -> dict[str, Any]:
    """Acked queue against plain queue, side by side (``queue --ack explicit``; triorelay).

    Two runs with the same producers, consumers, rate, payloads and duration, one after the
    other on one relay: first on the plain queue channel ``common.channel`` (default
    :data:`PLAIN_QUEUE_CHANNEL`), consumers done with a job once it is delivered; then on the
    acked queue ``acked_channel`` (default :data:`ACKED_QUEUE_CHANNEL`), each consumer acking
    every job as soon as it has read it (:func:`~loadtest.acked.consume_acked`). Producers
    publish with ``?ack=id`` on both unless ``common.ack`` says otherwise. The relay needs
    :func:`acked_queue_rules` for the two channels.

    The result's ``summary`` is the acked run's; ``extra.plain`` the plain run's summary;
    ``extra.ack_latency_ms`` each job's latency from its scheduled publish to its ack being
    written; ``extra.acked_vs_plain`` delivered jobs/s, delivery latency and (with
    ``server_pid``) server CPU per delivered job, each as acked, plain and their ratio
    (acked / plain); ``extra.jobs`` the acks sent, refused and redeliveries seen.
    """
    plain_common = dataclasses.replace(
        common, channel=common.channel or PLAIN_QUEUE_CHANNEL, ack=common.ack or "id"
    )
    acked_common = dataclasses.replace(plain_common, channel=acked_channel or ACKED_QUEUE_CHANNEL)
    server = (
        None
        if common.server_pid is None
        else ProcessSampler(common.server_pid, include_children=True)
    )
    runs: list[tuple[RunOutcome, float | None]] = []
    for side, consumer_ack in ((plain_common, "auto"), (acked_common, "explicit")):
        spec = _spec(
            side,
            total_producers=producers,
            consumers=consumers,
            rate_per_s=rate_per_s,
            track_ledger=True,
            consumer_ack=consumer_ack,
        )
        before = None if server is None else server.cpu_seconds()
        outcome = await _run(side, spec, "competing")
        after = None if server is None else server.cpu_seconds()
        runs.append((outcome, None if before is None or after is None else after - before))
    (plain, plain_cpu_s), (acked, acked_cpu_s) = runs
    plain_summary = _summary(plain, keep_series=False)
    acked_summary = _summary(acked)
    jobs = acked.stats.counters
    params = {
        "producers": producers,
        "consumers": consumers,
        "rate_per_s": rate_per_s,
        "consumer_ack": "explicit",
        "acked_channel": acked_common.channel,
    }
    return build_result(
        scenario="queue",
        url=common.url,
        channel=acked_common.channel,
        server_pid=common.server_pid,
        params={**plain_common.params(), **params},
        summary=acked_summary,
        extra={
            "connect_seconds": acked.connect_s,
            "per_consumer_delivered": _consumer_spread(acked.stats.per_consumer_delivered),
            "ack_latency_ms": acked.stats.ack_latency.summary_ms(),
            "ack_latency_hdr": acked.stats.ack_latency.encode(),
            "jobs": {
                "acked": jobs.jobs_acked,
                "refused": jobs.jobs_refused,
                "redelivered": jobs.jobs_redelivered,
            },
            "acked_vs_plain": acked_vs_plain(
                _side(acked, acked_summary, acked_cpu_s), _side(plain, plain_summary, plain_cpu_s)
            ),
            "plain": plain_summary,
        },
    )


def _side(outcome: RunOutcome, summary: dict[str, Any], cpu_s: float | None) -> QueueSide:
    done = outcome.stats.counters.delivered
    return QueueSide(summary, cpu_s, jobs_per_s(done, outcome.start_ns, outcome.stats.last_done_ns))


async def run_slow(
    common: Common,
    *,
    producers: int = 1,
    consumers: int = 2,
    stalled: int = 1,
    rate_per_s: float = 1000.0,
    delivery: Delivery = "broadcast",
) -> dict[str, Any]:
    """Stalled consumers (connected, never reading) next to normal ones.

    Watch ``summary.server.series`` (RSS over time) and the normal consumers' latency; the
    expectation counts normal consumers only.
    """
    spec = _spec(
        common,
        total_producers=producers,
        consumers=consumers,
        stalled_consumers=stalled,
        rate_per_s=rate_per_s,
    )
    outcome = await _run(common, spec, delivery)
    params = {
        "producers": producers,
        "consumers": consumers,
        "stalled": stalled,
        "rate_per_s": rate_per_s,
        "delivery": delivery,
    }
    server = _summary(outcome, keep_series=False)["server"]
    rss = None if server is None else server["rss_bytes"]
    growth = None if rss is None or rss["start"] is None else rss["max"] - rss["start"]
    return _result("slow", common, outcome, params, server_rss_growth_bytes=growth)


async def run_max(
    common: Common,
    *,
    producers: int = 1,
    consumers: int = 1,
    max_rate_per_s: float = 50_000.0,
    steps: Sequence[int] = DEFAULT_RATE_STEPS,
    p99_bound_ms: float = DEFAULT_P99_BOUND_MS,
    min_delivered_ratio: float = DEFAULT_MIN_DELIVERED_RATIO,
    delivery: Delivery = "broadcast",
    keep_going: bool = False,
) -> dict[str, Any]:
    """Step the offered rate up; report the highest rate with p99 <= bound and enough delivered.

    Each step is a full run of ``common.duration_s``. Stops after the first failed step unless
    ``keep_going``. ``extra.limited_by`` says whether the first failed step above the best one
    was generator-bound (then the number is the generator's ceiling, not the server's): one of
    its processes at 90 % of a core or more, or all of them together at 90 % of each core they
    could use (``summary.generator.cores``). It is ``None`` when no step failed. Use a fresh
    server: leftovers of earlier runs are ignored by the consumers but still cost the server
    and the consumers time.
    """
    ladder = rate_steps(max_rate_per_s, steps)
    results: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_rate: int | None = None
    limited_by: str | None = None
    first_summary: dict[str, Any] | None = None
    for rate in ladder:
        logger.info("max: stepping to %d msg/s", rate)
        spec = _spec(common, total_producers=producers, consumers=consumers, rate_per_s=float(rate))
        outcome = await _run(common, spec, delivery)
        summary = _summary(outcome, keep_series=False)
        first_summary = first_summary or summary
        ok = step_sustained(
            offered=outcome.stats.counters.offered,
            delivered=outcome.stats.counters.delivered,
            expected=outcome.expected,
            p99_ms=summary["latency_ms"]["p99"],
            p99_bound_ms=p99_bound_ms,
            min_delivered_ratio=min_delivered_ratio,
        )
        results.append({"rate_per_s": rate, "sustained": ok, "summary": summary})
        if ok:
            best, best_rate = summary, rate
        elif not keep_going:
            break
    # What stopped the climb: the first failed step above the best sustained one.
    for step in results:
        if not step["sustained"] and (best_rate is None or step["rate_per_s"] > best_rate):
            bound = step["summary"]["generator"]["generator_bound"]
            limited_by = "generator" if bound else "server"
            break
    params = {
        "producers": producers,
        "consumers": consumers,
        "max_rate_per_s": max_rate_per_s,
        "steps": ladder,
        "p99_bound_ms": p99_bound_ms,
        "min_delivered_ratio": min_delivered_ratio,
        "delivery": delivery,
    }
    headline = best or first_summary
    assert headline is not None  # the ladder is never empty
    return build_result(
        scenario="max",
        url=common.url,
        channel=common.channel,
        server_pid=common.server_pid,
        params={**common.params(), **params},
        summary=headline,
        extra={"max_sustained_per_s": best_rate, "limited_by": limited_by, "steps": results},
    )
