"""The I/O-free half of ``python -m loadtest compare``: plan, metrics, aggregation, markdown.

:mod:`loadtest.compare.runner` runs the measurements (servers, pinning, generator processes); this
module decides their order, turns each run's result JSON into flat metrics, aggregates repeats
into medians and ratios, and renders ``compare.md``. Everything here is a pure function of its
arguments, so it is tested synchronously.

Vocabulary: a *job* is one scenario configuration (``pair@5000``); a *run* is one job measured
once against one *side* on fresh server processes. The sides: ``triorelay`` (in-memory
broker), ``asyncio`` (the baseline), ``triorelay+redis`` (one relay on a Redis broker: every
message goes through Redis and back) and ``triorelay+redis-2relays`` (two relays on one Redis,
producers on the first, consumers on the second). A *table* compares some sides with ratios:
triorelay against the baseline, and Redis against memory.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

MEMORY: Final = "triorelay"
BASELINE: Final = "asyncio"
REDIS: Final = "triorelay+redis"
REDIS_2RELAYS: Final = "triorelay+redis-2relays"
#: The original two sides (the default of a :class:`Job`), in the order they run.
SIDES: Final = (MEMORY, BASELINE)
#: The sides on a Redis broker.
REDIS_SIDES: Final = (REDIS, REDIS_2RELAYS)
#: Every side, in the order they run within each job of a repeat (A B C D A B C D ...).
ALL_SIDES: Final = (*SIDES, *REDIS_SIDES)
#: Sum of the generator's in-window CPU percents at or above this, with the generator pinned to
#: one core, means the generator (not the server) was the bottleneck.
GENERATOR_CORE_PERCENT: Final = 90.0


@dataclass(frozen=True)
class Job:
    """One scenario configuration, run identically against both sides.

    ``argv`` is the scenario's command line for ``python -m loadtest`` (without ``--url``,
    ``--server-pid`` and ``--json-out``, which the runner adds); ``side_argv`` adds per-side
    flags (``--delivery competing`` for the baseline, where semantics differ by design).
    ``sides`` are the sides this job runs on, in run order.
    """

    key: str
    scenario: str
    argv: tuple[str, ...]
    side_argv: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Environment overrides for every triorelay server of this job (memory or Redis).
    triorelay_env: Mapping[str, str] = field(default_factory=dict)
    sides: tuple[str, ...] = SIDES

    def argv_for(self, side: str) -> list[str]:
        """Return the generator's argv for ``side``."""
        return [self.scenario, *self.argv, *self.side_argv.get(side, ())]


@dataclass(frozen=True)
class Step:
    """One entry of the plan: measure ``job`` against ``side`` in repeat ``repeat`` (0-based)."""

    repeat: int
    job: Job
    side: str


def alternation(jobs: Sequence[Job], repeats: int) -> list[Step]:
    """Return the run order: for each repeat, each job, each of its sides in turn (A B A B ...).

    Alternating sides next to each other means slow drift of the machine (thermal, other load)
    hits every side alike instead of biasing whichever ran later.
    """
    return [
        Step(repeat, job, side) for repeat in range(repeats) for job in jobs for side in job.sides
    ]


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

    True when the scenario flagged it (a process at >= 90 % of a core), when ``max`` says it
    was ``limited_by: generator``, or when the generator is pinned to ``generator_cores`` cores
    and its processes together used >= 90 % of them.
    """
    summary = result["summary"]
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
    """Return the flat metrics of one scenario result (see :data:`METRICS` for their meaning).

    ``server_cpu_s`` is the server side's CPU time over the whole generator run (connect, send,
    drain), measured by the runner: every relay process plus ``redis-server`` when the runner
    started it; ``redis_cpu_s`` is the ``redis-server`` part of it (``None``: no Redis, or not
    measured). Per-message figures divide them by delivered messages.
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
    if scenario in ("pair", "fanout", "slow"):
        out["server_cpu_us_per_msg"] = _per_us(server_cpu_s, counts["delivered"])
        out["redis_cpu_us_per_msg"] = _per_us(redis_cpu_s, counts["delivered"])
        out["p50_ms"] = latency["p50"]
        out["p99_ms"] = latency["p99"]
        out["max_ms"] = latency["max"]
        out["delivered_per_s"] = summary["throughput_per_s"]["delivered"]
        out["delivered_ratio"] = summary["delivered_ratio"]
    if scenario == "max":
        out["max_sustained_per_s"] = extra.get("max_sustained_per_s")
    if scenario == "connections":
        out["rss_per_connection_bytes"] = extra.get("server_rss_per_connection_bytes")
        out["connect_rate_per_s"] = extra.get("connect_rate_per_s")
    if scenario == "slow":
        out["rss_start_mb"] = None if rss.get("start") is None else rss["start"] / 2**20
        out["rss_max_mb"] = None if rss.get("max") is None else rss["max"] / 2**20
        growth = extra.get("server_rss_growth_bytes")
        out["rss_growth_mb"] = None if growth is None else growth / 2**20
    return out


@dataclass(frozen=True)
class Metric:
    """How to show one metric: label, unit, digits, and whether a higher value is better."""

    label: str
    unit: str
    digits: int
    higher_is_better: bool


METRICS: Final[Mapping[str, Metric]] = {
    "server_cpu_us_per_msg": Metric("server CPU per delivered msg", "µs", 1, False),
    "redis_cpu_us_per_msg": Metric("… of which redis-server", "µs", 1, False),
    "p50_ms": Metric("latency p50", "ms", 2, False),
    "p99_ms": Metric("latency p99", "ms", 2, False),
    "max_ms": Metric("latency max", "ms", 2, False),
    "delivered_ratio": Metric("delivered / expected", "", 4, True),
    "delivered_per_s": Metric("delivered msg/s", "/s", 0, True),
    "max_sustained_per_s": Metric("max sustained 1→1", "msg/s", 0, True),
    "rss_per_connection_bytes": Metric("idle RSS per connection", "bytes", 0, False),
    "rss_growth_mb": Metric("server RSS growth", "MiB", 1, False),
    "rss_max_mb": Metric("server RSS max", "MiB", 1, False),
    "generator_cpu_percent": Metric("generator CPU (in window)", "% core", 0, False),
}


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
#: The same relay through Redis (one relay, then two sharing it) against in memory.
REDIS_TABLE: Final = Table(
    "Through Redis vs in memory",
    (MEMORY, *REDIS_SIDES),
    (("redis/memory", REDIS, MEMORY), ("2relays/memory", REDIS_2RELAYS, MEMORY)),
)


def table_jobs(jobs: Sequence[Job], table: Table) -> list[Job]:
    """Return the jobs of ``jobs`` that run on every side of ``table``."""
    return [job for job in jobs if set(table.sides) <= set(job.sides)]


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


def format_value(value: float | None, digits: int) -> str:
    """Return ``value`` with ``digits`` decimals and thousands separators, ``—`` for ``None``."""
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _format_cell(cell: Cell, metric: Metric) -> str:
    text = format_value(cell.median, metric.digits)
    if cell.generator_bound and cell.median is not None:
        text += " ⚠gen"
    return text


def render_table(rows: Sequence[Row], table: Table = BASELINE_TABLE) -> str:
    """Return the markdown table of ``rows``: job, metric, each side's median, ratios, note.

    A ``⚠gen`` mark means every run of that side was generator-bound: the figure is the
    generator's limit, not the server's.
    """
    labels = [label for label, _num, _den in table.ratios]
    header = ["scenario", "metric", *table.sides, *labels, "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        metric = METRICS[row.metric]
        ratios = [_format_ratio(row.ratios.get(label)) for label in labels]
        cells = [_format_cell(row.cells[s], metric) for s in table.sides]
        label = f"{metric.label} ({metric.unit})" if metric.unit else metric.label
        lines.append("| " + " | ".join([row.job_key, label, *cells, *ratios, row.note]) + " |")
    return "\n".join(lines) + "\n"


def _format_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def render_runs(runs: Sequence[Run]) -> str:
    """Return the per-run markdown table: server CPU, generator CPU and flags of every run."""
    lines = [
        "| repeat | scenario | side | server CPU (s) | generator CPU (s) | generator CPU (% core) "
        "| gen-bound | flags |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.repeat + 1} | {r.job_key} | {r.side} | "
            f"{format_value(r.metrics.get('server_cpu_s'), 2)} | "
            f"{format_value(r.metrics.get('generator_cpu_s'), 2)} | "
            f"{format_value(r.generator_cpu_percent, 0)} | "
            f"{'**yes**' if r.generator_bound else 'no'} | {', '.join(r.flags) or '—'} |"
        )
    return "\n".join(lines) + "\n"
