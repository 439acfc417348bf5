"""The summary that leads ``compare.md`` (and is ``summary`` in ``compare.json``): the headline
figures of the run side by side, every line labelled with how the producers wrote, unbatched
1→1 first, and what limited each ``max`` run (I/O-free).

It is made of the rows of the other tables (:mod:`loadtest.compare.aggregate`): no figure
here that is not in a table below it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from loadtest.compare.aggregate import BASELINE_TABLE, FANOUT_TABLE, Cell, Row, Run, Table
from loadtest.compare.plan import (
    HEADLINE,
    ROUNDTRIP_KEY,
    Plan,
    lead_with_headline,
    max_key,
    pair_key,
)
from loadtest.compare.report import METRICS, describe_variant, format_ratio, format_value
from loadtest.compare.sides import BASELINE, BROADCAST, MEMORY

#: The figures of each ``pair`` variant, in order: metric and how the line names it.
PAIR_FIGURES: Final = (
    ("server_cpu_us_per_msg", "server CPU per message"),
    ("p50_ms", "latency p50"),
    ("p99_ms", "latency p99"),
)
#: The figures of the ``roundtrip`` job (one message in flight), in order.
ROUNDTRIP_FIGURES: Final = (
    ("p50_ms", "serial round trip p50 (producer → consumer)"),
    ("p99_ms", "serial round trip p99"),
    ("server_cpu_us_per_msg", "server CPU per message"),
)
#: The figures of the ``connections`` job (idle producers), in order.
CONNECTIONS_FIGURES: Final = (
    ("rss_per_connection_bytes", "idle RSS per connection"),
    ("server_cpu_ms_per_connect", "server CPU per connection set up"),
    ("connect_rate_per_s", "connect rate while ramping"),
)
#: The figures of each fan-out, in order.
FANOUT_FIGURES: Final = (
    ("server_cpu_us_per_msg", "server CPU per delivery (whole run)"),
    ("server_cpu_us_per_msg_connected", "server CPU per delivery, once all are connected"),
    ("p99_ms", "latency p99"),
)


@dataclass(frozen=True)
class SummaryLine:
    """One line of the summary: what ran (``unbatched 1→1``, a fan-out), the figure, each
    side's medians and their ratios (already formatted, ``/``-separated across rates)."""

    what: str
    figure: str
    triorelay: str
    asyncio: str
    ratio: str

    def to_dict(self) -> dict[str, str]:
        """Return the JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class Limits:
    """What stopped the climb of one side's ``max`` runs: how many runs the server limited,
    the generator limited, and how many sustained every step."""

    job_key: str
    side: str
    server: int
    generator: int
    none: int

    @property
    def found_own_limit(self) -> bool:
        """Whether every run reached the server's own limit."""
        return self.server > 0 and self.generator == 0 and self.none == 0

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {**asdict(self), "found_own_limit": self.found_own_limit}


def _cell_text(cell: Cell, digits: int) -> str:
    text = format_value(cell.median, digits)
    return f"{text} ⚠gen" if cell.generator_bound and cell.median is not None else text


def _line(
    what: str,
    figure: str,
    rows: Sequence[Row | None],
    table: Table,
    metric: str,
) -> SummaryLine | None:
    """One line over ``rows`` (one per rate; ``None`` where that rate did not run)."""
    present = [row for row in rows if row is not None]
    if not present:
        return None
    shown = METRICS[metric]
    unit = f" {shown.unit}" if shown.unit else ""
    ours, theirs = table.sides
    label = table.ratios[0][0]

    def side(name: str) -> str:
        return " / ".join(
            "—" if row is None else _cell_text(row.cells[name], shown.digits) for row in rows
        )

    ratios = " / ".join("—" if row is None else format_ratio(row.ratios.get(label)) for row in rows)
    return SummaryLine(what, figure, side(ours) + unit, side(theirs) + unit, ratios)


def summary_lines(
    plan: Plan, rows: Sequence[Row], fanout_rows: Sequence[Row] = ()
) -> list[SummaryLine]:
    """The summary's lines: each ``pair`` variant at the pair rates (the headline first), the
    serial round trip, each ``max`` variant, the idle connections, each fan-out against the
    broadcast loop."""
    by_key = {(row.job_key, row.metric): row for row in rows}
    lines: list[SummaryLine | None] = []
    rates = sorted(plan.pair_rates)
    at = " / ".join(f"{rate:,}" for rate in rates)
    if "pair" in plan.scenarios:
        for variant in lead_with_headline(plan.pair_variants):
            for metric, name in PAIR_FIGURES:
                found = [by_key.get((pair_key(variant, rate), metric)) for rate in rates]
                figure = f"{name} at {at} msg/s"
                lines.append(_line(variant.label, figure, found, BASELINE_TABLE, metric))
    if "roundtrip" in plan.scenarios:
        what = "unbatched 1→1, one message in flight"  # its own sender, not the headline's
        for metric, name in ROUNDTRIP_FIGURES:
            found = [by_key.get((ROUNDTRIP_KEY, metric))]
            lines.append(_line(what, name, found, BASELINE_TABLE, metric))
    if "max" in plan.scenarios:
        for variant in lead_with_headline(plan.max_variants):
            found = [by_key.get((max_key(variant), "max_sustained_per_s"))]
            figure = "highest sustained rate"
            lines.append(_line(variant.label, figure, found, BASELINE_TABLE, "max_sustained_per_s"))
    if "connections" in plan.scenarios:
        what = f"{plan.connections:,} idle producers"
        for metric, name in CONNECTIONS_FIGURES:
            found = [by_key.get(("connections", metric))]
            lines.append(_line(what, name, found, BASELINE_TABLE, metric))
    fanouts = {(row.job_key, row.metric): row for row in fanout_rows}
    if "fanout" in plan.scenarios:
        for consumers, rate in plan.fanouts:
            key = f"fanout 1→{consumers}"
            what = f"fan-out 1→{consumers} at {rate:,} msg/s, unbatched (asyncio: {BROADCAST})"
            for metric, name in FANOUT_FIGURES:
                found = [fanouts.get((key, metric))]
                lines.append(_line(what, name, found, FANOUT_TABLE, metric))
    return [line for line in lines if line is not None]


def max_limits(plan: Plan, runs: Sequence[Run]) -> list[Limits]:
    """What limited each side's runs of each ``max`` variant (against the baseline)."""
    out: list[Limits] = []
    if "max" not in plan.scenarios:
        return out
    for variant in lead_with_headline(plan.max_variants):
        key = max_key(variant)
        for side in (MEMORY, BASELINE):
            counts = Counter(r.limited_by for r in runs if r.job_key == key and r.side == side)
            if counts:
                out.append(Limits(key, side, counts["server"], counts["generator"], counts[None]))
    return out


def _limits_line(limits: Limits, plan: Plan) -> str:
    runs = limits.server + limits.generator + limits.none
    where = f"`{limits.side}` on `{limits.job_key}`"
    if limits.found_own_limit:
        return f"{where}: its own limit (`limited_by: server` in {runs} of {runs} runs)"
    parts = []
    if limits.generator:
        parts.append(f"the generator was the limit in {limits.generator} of {runs} runs")
    if limits.none:
        top = max(plan.max_steps)
        parts.append(
            f"every step was sustained in {limits.none} of {runs} (the ladder's top, "
            f"{top:,} msg/s, is below the limit: raise `--max-steps`)"
        )
    if limits.server:
        parts.append(f"the server in {limits.server}")
    return (
        f"**{where}: could not find its own limit**: {', '.join(parts)}; the generator had "
        f"{plan.generator_cores} CPU(s) for its processes"
    )


def summary_section(
    plan: Plan, rows: Sequence[Row], fanout_rows: Sequence[Row], runs: Sequence[Run]
) -> tuple[str, dict[str, Any]]:
    """The summary section of ``compare.md`` and its ``compare.json`` form (``lines`` and
    ``max_limits``); an empty section when nothing it shows ran."""
    lines = summary_lines(plan, rows, fanout_rows)
    limits = max_limits(plan, runs)
    data: dict[str, Any] = {
        "lines": [line.to_dict() for line in lines],
        "max_limits": [limit.to_dict() for limit in limits],
    }
    if not lines and not limits:
        return "", data
    variants = lead_with_headline((*plan.pair_variants, *plan.max_variants))
    described = "; ".join(f"**{v.label}**: {describe_variant(v)}" for v in dict.fromkeys(variants))
    out = [
        "## Summary\n",
        f"Medians of this run, sides alternating; ratios are {MEMORY} over the asyncio "
        f"version ({BASELINE}; for fan-out, {BROADCAST}, the broadcast loop). The common "
        f"case leads: **{HEADLINE.label}**. How the producers wrote: {described}. A "
        "batched producer lets a server read several frames per TCP read; few real producers "
        "write that way.\n",
    ]
    if lines:
        out.append(_render_lines(lines))
    if limits:
        out.append("What limited `max` (p99 and delivery bounds as in its table note):\n")
        out.append("\n".join(f"- {_limits_line(limit, plan)}" for limit in limits) + "\n")
    return "\n".join(out) + "\n", data


def _render_lines(lines: Sequence[SummaryLine]) -> str:
    header = ["producers", "figure", MEMORY, "asyncio version", "ratio"]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in lines:
        what = f"**{line.what}**" if line.what == HEADLINE.label else line.what
        md.append(f"| {what} | {line.figure} | {line.triorelay} | {line.asyncio} | {line.ratio} |")
    return "\n".join(md) + "\n"
