"""Result JSON: building, flags and shape checks (I/O-free).

Every scenario writes one object of this shape (``SCHEMA``), so ``compare`` can read any of
them::

    {
      "schema": "triorelay-loadtest/1",
      "scenario": "pair",
      "started_at": "2025-01-01T00:00:00+00:00",
      "target": {"url": "ws://127.0.0.1:8000", "channel": null, "server_pid": 1234},
      "params": {...the scenario's parameters..., "token_in": "header" | "query" | null},
      "summary": {                       # the headline run (for max: the best sustained step)
        "counts": {"offered", "sent", "acks", "delivered", "expected", "errors", "bad_frames",
                   "connected", "failed_connects", "duplicates", "missing"},
        "throughput_per_s": {"offered", "sent", "delivered"},
        "delivered_ratio": 0.999,        # delivered / expected (null when nothing expected)
        "latency_ms": {"count", "p50", "p90", "p99", "p99_9", "max", "mean"},
        "server": {"cpu_percent": {"mean", "max"}, "rss_bytes": {"start", "max", "end"},
                   "series": [[t_s, cpu_percent, rss_bytes], ...]} | null,
        "generator": {"processes", "cores", "cpu_percent_by_process", "generator_bound",
                      "series": {"main": [...], "worker0": [...]}},
        "flags": ["generator_bound", "sends_behind", "undelivered", "errors", "duplicates"],
        "errors": ["first few error messages"],
        "latency_hdr": "<base64 HDR histogram, mergeable across runs>"
      },
      "extra": {...scenario-specific: max steps, per-consumer spread, RSS per connection...}
    }

``queue --ack explicit`` adds to ``extra`` (its ``summary`` is the acked run's)::

    "plain": {...the plain queue run's summary, same shape...},
    "ack_latency_ms": {"count", "p50", "p90", "p99", "p99_9", "max", "mean"},  # publish -> ack
    "ack_latency_hdr": "<base64 HDR histogram>",
    "jobs": {"acked", "refused", "redelivered"},
    "acked_vs_plain": {"jobs_per_s" | "latency_p50_ms" | "latency_p99_ms" |
                       "server_cpu_us_per_job": {"acked", "plain", "ratio"}}
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from loadtest.monitor import Sample, is_generator_bound, summarize
from loadtest.stats import RoleStats

SCHEMA: Final = "triorelay-loadtest/1"
SUMMARY_KEYS: Final = (
    "counts",
    "throughput_per_s",
    "delivered_ratio",
    "latency_ms",
    "server",
    "generator",
    "flags",
    "errors",
    "latency_hdr",
)
#: Deliveries below this fraction of the expected count raise the ``undelivered`` flag.
DELIVERED_FLAG_RATIO: Final = 0.99


def run_summary(
    stats: RoleStats,
    *,
    expected: int,
    duration_s: float,
    server_samples: Sequence[Sample] | None,
    generator_samples: Mapping[str, Sequence[Sample]],
    generator_cores: int | None = None,
    keep_series: bool = True,
) -> dict[str, Any]:
    """Return the ``summary`` block of one run (see the module docstring).

    Throughputs divide by ``duration_s`` (the send window). ``duplicates``/``missing`` are
    ``None`` unless the run kept a delivery ledger. ``server_samples`` ``None`` means no server
    PID was given. ``generator_cores`` is how many CPUs the generator's processes could use:
    ``generator_bound`` is also raised when their in-window CPU together reached
    :data:`~loadtest.monitor.GENERATOR_BOUND_PERCENT` of each
    (:func:`~loadtest.monitor.is_generator_bound`).
    """
    c = stats.counters
    duplicates: int | None = None
    missing: int | None = None
    if stats.ledger is not None:
        duplicates, missing = stats.ledger.check(stats.sent_per_producer)
    per_s = (lambda n: round(n / duration_s, 1)) if duration_s > 0 else (lambda n: None)
    ratio = round(c.delivered / expected, 4) if expected > 0 else None
    gen_cpu = list(stats.cpu_percent)
    sampled_cpu = [
        s.cpu_percent
        for samples in generator_samples.values()
        for s in samples
        if s.cpu_percent is not None
    ]
    bound = is_generator_bound(gen_cpu, cores=generator_cores) or is_generator_bound(sampled_cpu)
    flags = []
    if bound:
        flags.append("generator_bound")
    if c.sent < c.offered:
        flags.append("sends_behind")
    if ratio is not None and ratio < DELIVERED_FLAG_RATIO:
        flags.append("undelivered")
    if c.errors or c.failed_connects:
        flags.append("errors")
    if duplicates:
        flags.append("duplicates")
    generator: dict[str, Any] = {
        "processes": max(1, len(generator_samples)),
        "cores": generator_cores,
        "cpu_percent_by_process": gen_cpu,
        "generator_bound": bound,
    }
    if keep_series:
        generator["series"] = {
            name: [[s.t_s, s.cpu_percent, s.rss_bytes] for s in samples]
            for name, samples in generator_samples.items()
        }
    return {
        "counts": {
            **c.to_dict(),
            "expected": expected,
            "duplicates": duplicates,
            "missing": missing,
        },
        "throughput_per_s": {
            "offered": per_s(c.offered),
            "sent": per_s(c.sent),
            "delivered": per_s(c.delivered),
        },
        "delivered_ratio": ratio,
        "latency_ms": stats.latency.summary_ms(),
        "server": None
        if server_samples is None
        else summarize(server_samples, keep_series=keep_series),
        "generator": generator,
        "flags": flags,
        "errors": list(stats.error_samples),
        "latency_hdr": stats.latency.encode(),
    }


def build_result(
    *,
    scenario: str,
    url: str,
    channel: str | None,
    server_pid: int | None,
    params: Mapping[str, Any],
    summary: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    started_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """Return the whole result object (see the module docstring); ``started_at`` defaults to now."""
    when = started_at or dt.datetime.now(dt.UTC)
    return {
        "schema": SCHEMA,
        "scenario": scenario,
        "started_at": when.isoformat(timespec="seconds"),
        "target": {"url": url, "channel": channel, "server_pid": server_pid},
        "params": dict(params),
        "summary": dict(summary),
        "extra": dict(extra or {}),
    }


@dataclass(frozen=True)
class QueueSide:
    """One side of ``queue --ack explicit``: its run's ``summary``, the server CPU seconds it
    took (``None`` without a server PID) and the jobs it got through per second
    (:func:`jobs_per_s`)."""

    summary: Mapping[str, Any]
    server_cpu_s: float | None
    jobs_per_s: float | None


def jobs_per_s(done: int, start_ns: int, last_done_ns: int) -> float | None:
    """``done`` jobs over the time from the run's first scheduled send (``start_ns``) to the
    last one done (``last_done_ns``), per second: the offered rate while a side keeps up
    (a little less: the last job's latency counts), its own ceiling once it falls behind.
    ``None`` when nothing was done."""
    elapsed_ns = last_done_ns - start_ns
    return None if done <= 0 or elapsed_ns <= 0 else round(done * 1e9 / elapsed_ns, 1)


def acked_vs_plain(acked: QueueSide, plain: QueueSide) -> dict[str, dict[str, float | None]]:
    """Compare an acked queue run with a plain queue run (``queue --ack explicit``): jobs
    done per second (:func:`jobs_per_s`), delivery latency p50/p99 and server CPU per
    delivered job in microseconds; each as ``{"acked", "plain", "ratio"}``, the ratio acked /
    plain (``None`` where a figure is missing or the plain one is 0)."""

    def row(a: float | None, p: float | None) -> dict[str, float | None]:
        ratio = None if a is None or not p else round(a / p, 3)
        return {"acked": a, "plain": p, "ratio": ratio}

    def per_job_us(side: QueueSide) -> float | None:
        delivered: int = side.summary["counts"]["delivered"]
        if side.server_cpu_s is None or not delivered:
            return None
        return round(side.server_cpu_s * 1e6 / delivered, 1)

    a_lat, p_lat = acked.summary["latency_ms"], plain.summary["latency_ms"]
    return {
        "jobs_per_s": row(acked.jobs_per_s, plain.jobs_per_s),
        "latency_p50_ms": row(a_lat["p50"], p_lat["p50"]),
        "latency_p99_ms": row(a_lat["p99"], p_lat["p99"]),
        "server_cpu_us_per_job": row(per_job_us(acked), per_job_us(plain)),
    }


def acked_line(result: Mapping[str, Any]) -> str:
    """Return the second line of ``queue --ack explicit`` (for the CLI): the ratios acked /
    plain and the publish-to-ack latency."""
    extra = result["extra"]
    rows, ack = extra["acked_vs_plain"], extra["ack_latency_ms"]

    def show(name: str, unit: str) -> str:
        r = rows[name]
        return f"{r['acked']}{unit} vs {r['plain']}{unit} (ratio {r['ratio']})"

    return (
        f"acked vs plain queue: jobs {show('jobs_per_s', '/s')}; latency p50 "
        f"{show('latency_p50_ms', ' ms')}, p99 {show('latency_p99_ms', ' ms')}; server CPU "
        f"per job {show('server_cpu_us_per_job', ' us')}; publish to ack ms p50 {ack['p50']} "
        f"p99 {ack['p99']} max {ack['max']}"
    )


def check_result(result: Mapping[str, Any]) -> list[str]:
    """Return the problems with ``result``'s shape (an empty list means it is well formed)."""
    problems = []
    if result.get("schema") != SCHEMA:
        problems.append(f"schema is {result.get('schema')!r}, expected {SCHEMA!r}")
    for key in ("scenario", "started_at", "target", "params", "summary", "extra"):
        if key not in result:
            problems.append(f"missing top-level key {key!r}")
    summary = result.get("summary")
    if isinstance(summary, Mapping):
        problems += [f"missing summary key {k!r}" for k in SUMMARY_KEYS if k not in summary]
        latency = summary.get("latency_ms")
        if isinstance(latency, Mapping):
            for key in ("count", "p50", "p90", "p99", "p99_9", "max"):
                if key not in latency:
                    problems.append(f"missing latency key {key!r}")
    else:
        problems.append("summary is not an object")
    return problems


def one_line(result: Mapping[str, Any]) -> str:
    """Return a one-line human summary of a result (for the CLI)."""
    s = result["summary"]
    lat = s["latency_ms"]
    tp = s["throughput_per_s"]
    text = (
        f"{result['scenario']}: offered {tp['offered']}/s sent {tp['sent']}/s "
        f"delivered {tp['delivered']}/s (ratio {s['delivered_ratio']}); latency ms "
        f"p50 {lat['p50']} p90 {lat['p90']} p99 {lat['p99']} p99.9 {lat['p99_9']} max {lat['max']}"
    )
    if s["flags"]:
        text += f"; flags: {', '.join(s['flags'])}"
    return text
