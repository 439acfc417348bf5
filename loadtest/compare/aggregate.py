"""Runs into numbers: each run's flat metrics, whether the generator limited it, and the medians
and ratios of the report tables (I/O-free).

A *run* is one job (see :mod:`loadtest.compare.plan`) measured once against one side on fresh
server processes; :func:`extract_metrics` turns its result JSON into flat metrics, and
:func:`aggregate` turns the repeats of every side into one :class:`Row` per job and metric of
a :class:`Table`: each side's median and the table's ratios. A table compares some sides:
triorelay against the baseline, fan-out against the broadcast loop, Redis against memory, and
tokens, history and stage timing each on against off. Everything here is a pure function of
its arguments, so it is tested synchronously; :mod:`loadtest.compare.report` renders it.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from loadtest.compare.sides import (
    BASELINE,
    BROADCAST,
    MEMORY,
    MEMORY_IDLE,
    NOHISTORY,
    NOTRACING,
    REDIS,
    REDIS_2RELAYS,
    REDIS_IDLE,
    SIDES,
    TOKENS,
)
from loadtest.monitor import GENERATOR_BOUND_PERCENT

#: Sum of the generator's in-window CPU percents at or above this per core it is pinned to
#: means the generator (not the server) was the bottleneck: the bound of one process, per core.
GENERATOR_CORE_PERCENT: Final = GENERATOR_BOUND_PERCENT


def median(values: Iterable[float | None]) -> float | None:
    """Return the median of the non-``None`` values, or ``None`` if there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return ``numerator / denominator``, or ``None`` if either is missing or the divisor is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


@dataclass
class Run:
    """The flat outcome of one run: metrics by name, and whether the generator was the limit."""

    job_key: str
    side: str
    repeat: int
    metrics: dict[str, float | None]
    generator_bound: bool
    generator_cpu_percent: float | None
    flags: list[str] = field(default_factory=list)
    #: What stopped a ``max`` run's climb: ``server``, ``generator``, or ``None`` (another
    #: scenario, or no step failed).
    limited_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {
            "job": self.job_key,
            "side": self.side,
            "repeat": self.repeat,
            "metrics": self.metrics,
            "generator_bound": self.generator_bound,
            "generator_cpu_percent": self.generator_cpu_percent,
            "flags": self.flags,
            "limited_by": self.limited_by,
        }


def _per_us(seconds: float | None, count: float | None) -> float | None:
    if seconds is None or not count:
        return None
    return 1e6 * seconds / count


def generator_cpu_percent(result: Mapping[str, Any]) -> float | None:
    """Return the generator's in-window CPU as a percent of one core, summed over processes.

    For ``max`` this is the busiest step; ``None`` when the result has no measurements.
    """
    summaries = [result["summary"]]
    if result["scenario"] == "max":
        summaries += [step["summary"] for step in result["extra"].get("steps", [])]
    sums = [_generator_sum(s["generator"]) for s in summaries if s.get("generator")]
    present = [x for x in sums if x is not None]
    return round(max(present), 1) if present else None


def _generator_sum(generator: Mapping[str, Any]) -> float | None:
    """Sum over processes of the in-window CPU; else of each sampled series' mean (connections)."""
    if generator.get("cpu_percent_by_process"):
        return float(sum(generator["cpu_percent_by_process"]))
    means = []
    for series in (generator.get("series") or {}).values():
        cpus = [cpu for _t, cpu, _rss in series if cpu is not None]
        if cpus:
            means.append(sum(cpus) / len(cpus))
    return sum(means) if means else None


def is_generator_bound(result: Mapping[str, Any], *, generator_cores: int | None) -> bool:
    """Return whether the generator, not the server, limited this run.

    True when the scenario flagged it (a process at or above
    :data:`~loadtest.monitor.GENERATOR_BOUND_PERCENT` of a core), when ``max`` says it was
    ``limited_by: generator``, or when the generator is pinned to ``generator_cores`` cores and
    its processes together used :data:`GENERATOR_CORE_PERCENT` of each of them. Never for
    ``resume`` and ``roundtrip``, closed loops whose generator is busy by design, nor for a
    ``connections`` run whose server was saturated over the ramp (``limited_by: server``).
    """
    summary = result["summary"]
    if result["scenario"] in ("resume", "roundtrip"):
        # Timed end to end, the client's own time included (the same client on both sides):
        # a busy generator only makes each round slower, it cannot hide a slow server, so
        # their runs always count.
        return False
    if result["scenario"] == "connections" and result["extra"].get("limited_by") == "server":
        return False  # the server was saturated over the ramp: its rate, whatever the generator
    if summary["generator"]["generator_bound"]:
        return True
    if result["scenario"] == "max":
        return bool(result["extra"].get("limited_by") == "generator")
    total = generator_cpu_percent(result)
    if generator_cores is None or total is None:
        return False
    return total >= GENERATOR_CORE_PERCENT * generator_cores


def extract_metrics(
    result: Mapping[str, Any], *, server_cpu_s: float | None, redis_cpu_s: float | None = None
) -> dict[str, Any]:
    """Return the flat metrics of one scenario result (shown as report ``METRICS`` say).

    ``server_cpu_s`` is the server side's CPU time over the whole generator run (connect, send,
    drain), measured by the runner: every relay process plus ``redis-server`` when the runner
    started it; ``redis_cpu_s`` is the ``redis-server`` part of it (``None``: no Redis, or not
    measured). Per-message figures divide them by delivered messages. A fan-out also gets
    ``server_cpu_us_per_msg_connected``: the server process's CPU from the moment every
    consumer was connected until the last delivery arrived (the generator's own reading of
    the one server process it was given; the runner drops it for the Redis sides), per
    delivery, so that a fan-out to 1,000 consumers is not mostly the cost of connecting them.
    """
    scenario = result["scenario"]
    summary = result["summary"]
    extra = result["extra"]
    counts = summary["counts"]
    latency = summary["latency_ms"]
    server = summary.get("server") or {}
    rss = server.get("rss_bytes") or {}
    out: dict[str, Any] = {"server_cpu_s": server_cpu_s}
    if redis_cpu_s is not None:
        out["redis_cpu_s"] = redis_cpu_s
    if scenario in ("pair", "fanout", "slow", "roundtrip"):
        out["server_cpu_us_per_msg"] = _per_us(server_cpu_s, counts["delivered"])
        out["redis_cpu_us_per_msg"] = _per_us(redis_cpu_s, counts["delivered"])
        out["p50_ms"] = latency["p50"]
        out["p99_ms"] = latency["p99"]
        out["max_ms"] = latency["max"]
        out["delivered_per_s"] = summary["throughput_per_s"]["delivered"]
        out["delivered_ratio"] = summary["delivered_ratio"]
    if scenario == "fanout":
        out["server_cpu_us_per_msg_connected"] = _per_us(
            extra.get("server_cpu_seconds_connected"), counts["delivered"]
        )
    if scenario == "max":
        out["max_sustained_per_s"] = extra.get("max_sustained_per_s")
    if scenario == "resume":
        resume = extra["resume_ms"]
        out["resume_p50_ms"] = resume["p50"]
        out["resume_p99_ms"] = resume["p99"]
        out["resume_max_ms"] = resume["max"]
        out["delivered_ratio"] = summary["delivered_ratio"]
    if scenario == "connections":
        out["rss_per_connection_bytes"] = extra.get("server_rss_per_connection_bytes")
        out["connect_rate_per_s"] = extra.get("connect_rate_per_s")
        out["server_cpu_ms_per_connect"] = extra.get("server_cpu_ms_per_connect")
        out["server_cpu_percent_connecting"] = extra.get("server_cpu_percent_connecting")
    if scenario == "slow":
        out["rss_start_mb"] = None if rss.get("start") is None else rss["start"] / 2**20
        out["rss_max_mb"] = None if rss.get("max") is None else rss["max"] / 2**20
        growth = extra.get("server_rss_growth_bytes")
        out["rss_growth_mb"] = None if growth is None else growth / 2**20
    return out


@dataclass(frozen=True)
class Cell:
    """One side of one aggregated metric: the median, how many runs fed it, and whether all of
    them were generator-bound (then the number is not a server measurement)."""

    median: float | None
    runs: int
    generator_bound: bool


@dataclass(frozen=True)
class Table:
    """Which sides one report table shows, and its ratios as ``(label, numerator, denominator)``.

    A job enters a table only if it runs on every side of it (see :func:`table_jobs`).
    """

    title: str
    sides: tuple[str, ...]
    ratios: tuple[tuple[str, str, str], ...]


#: triorelay (in memory) against the asyncio baseline: the original comparison.
BASELINE_TABLE: Final = Table(
    "triorelay vs the asyncio baseline", SIDES, ((f"{MEMORY}/{BASELINE}", MEMORY, BASELINE),)
)
#: Fan-out: triorelay against the asyncio broadcast loop, both delivering every message to
#: every consumer (deliveries against deliveries).
FANOUT_TABLE: Final = Table(
    "Fan-out: triorelay vs the FastAPI broadcast loop",
    (MEMORY, BROADCAST),
    ((f"{MEMORY}/{BROADCAST}", MEMORY, BROADCAST),),
)
#: The same relay through Redis (one relay, then two sharing it) against in memory.
REDIS_TABLE: Final = Table(
    "Through Redis vs in memory",
    (MEMORY, REDIS, REDIS_2RELAYS),
    (("redis/memory", REDIS, MEMORY), ("2relays/memory", REDIS_2RELAYS, MEMORY)),
)
#: The ratio the Redis table adds when ``triorelay+redis-idle`` runs beside ``triorelay+redis``:
#: what idle watched channels add to the cost of each message.
REDIS_IDLE_RATIO: Final = ("idle/redis", REDIS_IDLE, REDIS)
#: Beside it, what the same idle consumers cost the in-memory relay (pings, timers, memory):
#: the part of ``idle/redis`` that is not Redis's.
MEMORY_IDLE_RATIO: Final = ("memory idle/memory", MEMORY_IDLE, MEMORY)
#: The same relay requiring tokens (every client presenting one) against no key at all.
TOKENS_TABLE: Final = Table(
    "Tokens on vs off", (MEMORY, TOKENS), (("tokens/no tokens", TOKENS, MEMORY),)
)
#: The relay keeping its default channel history against the same relay keeping none: the
#: ratio is history on over off, so the relay with history (``triorelay``) is the numerator.
HISTORY_TABLE: Final = Table(
    "History on vs off", (MEMORY, NOHISTORY), (("history/no history", MEMORY, NOHISTORY),)
)
#: The relay timing its default sample of messages through their stages against the same
#: relay timing none: on over off, so the relay that samples (``triorelay``) is the numerator.
TRACING_TABLE: Final = Table(
    "Stage timing on vs off", (MEMORY, NOTRACING), (("timing/no timing", MEMORY, NOTRACING),)
)
#: How long a consumer takes to resume, in memory and through Redis: times against a bound,
#: not a ratio.
RESUME_TABLE: Final = Table("Resume", (MEMORY, REDIS, REDIS_2RELAYS), ())


@dataclass(frozen=True)
class Row:
    """One aggregated metric of one job: each side's cell and the table's ratios by label."""

    job_key: str
    metric: str
    cells: Mapping[str, Cell]
    ratios: Mapping[str, float | None]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {
            "job": self.job_key,
            "metric": self.metric,
            **{
                side: {"median": c.median, "runs": c.runs, "generator_bound": c.generator_bound}
                for side, c in self.cells.items()
            },
            "ratios": dict(self.ratios),
            "note": self.note,
        }


def _cell(runs: Sequence[Run], metric: str) -> Cell:
    """Median over the runs the server limited; over all runs (flagged) if the generator limited
    every one of them. Generator CPU itself always uses every run."""
    if metric == "generator_cpu_percent":
        return Cell(median(r.generator_cpu_percent for r in runs), len(runs), False)
    clean = [r for r in runs if not r.generator_bound]
    chosen = clean or list(runs)
    values = [r.metrics.get(metric) for r in chosen]
    return Cell(median(values), sum(v is not None for v in values), bool(runs) and not clean)


def aggregate(
    runs: Sequence[Run],
    job_metrics: Sequence[tuple[str, Sequence[str]]],
    notes: Mapping[tuple[str, str], str] | None = None,
    table: Table = BASELINE_TABLE,
) -> list[Row]:
    """Return one :class:`Row` of ``table`` per ``(job key, metric)`` in ``job_metrics`` order.

    Medians skip generator-bound runs unless every run of that side was bound (then the cell is
    flagged). ``notes`` maps ``(job key, metric)`` to the design difference shown beside it.
    """
    rows = []
    for job_key, metrics in job_metrics:
        by_side = {
            s: [r for r in runs if r.job_key == job_key and r.side == s] for s in table.sides
        }
        for metric in metrics:
            cells = {s: _cell(by_side[s], metric) for s in table.sides}
            ratios = {
                label: ratio(cells[num].median, cells[den].median)
                for label, num, den in table.ratios
            }
            note = (notes or {}).get((job_key, metric), "")
            rows.append(Row(job_key, metric, cells, ratios, note))
    return rows
