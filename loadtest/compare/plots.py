"""The PNG charts of ``python -m loadtest compare`` (matplotlib, Agg backend: no display).

The files and what each shows, per side, are :data:`PLOT_FILES`. ``latency.png`` is the
headline variant (unbatched 1→1); ``latency_batched.png`` and ``throughput.png`` include the
Redis sides when they ran. Rows of the Redis table repeat the in-memory relay's cells, so each
point is taken once per side and job (:func:`side_values`).

A chart whose data is missing (scenario not run) is still written, with a "no data" note, so
the set of files does not depend on ``--scenarios``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from loadtest.compare.aggregate import Row
from loadtest.compare.plan import HEADLINE, SIDE_TABLE_VARIANT, Variant, parse_pair_key
from loadtest.compare.sides import (
    ALL_SIDES,
    BASELINE,
    BROADCAST,
    MEMORY,
    MEMORY_IDLE,
    NOHISTORY,
    NOTRACING,
    REDIS,
    REDIS_2RELAYS,
    REDIS_IDLE,
    TOKENS,
)

#: Every chart ``compare`` writes, and what it shows (the report lists them from here).
PLOT_FILES: Final[Mapping[str, str]] = {
    "latency.png": f"pair {HEADLINE.label} latency p50/p99 vs offered rate, log scale",
    "latency_batched.png": (
        f"pair {SIDE_TABLE_VARIANT.label} latency p50/p99 vs offered rate (with the Redis, "
        "tokens and no-history sides), log scale"
    ),
    "throughput.png": "highest sustained rate of each max variant and fan-out deliveries/s",
    "slow_memory.png": "server RSS over time with a stalled consumer",
}
_COLORS = {
    MEMORY: "tab:blue",
    BASELINE: "tab:orange",
    BROADCAST: "tab:brown",
    REDIS: "tab:red",
    REDIS_2RELAYS: "tab:purple",
    REDIS_IDLE: "tab:pink",
    MEMORY_IDLE: "tab:gray",
    TOKENS: "tab:green",
    NOHISTORY: "tab:olive",
    NOTRACING: "tab:cyan",
}


def side_values(rows: Sequence[Row], side: str, metric: str) -> dict[str, float]:
    """Return ``{job key: median}`` of ``side`` for ``metric``, over every row that has it."""
    out: dict[str, float] = {}
    for row in rows:
        cell = row.cells.get(side)
        if row.metric == metric and cell is not None and cell.median is not None:
            out.setdefault(row.job_key, cell.median)
    return out


def _finish(fig: Figure, ax: Axes, path: Path, *, has_data: bool) -> None:
    """Add the legend (or a "no data" mark), write the PNG, and free the figure."""
    if has_data:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pair_points(rows: Sequence[Row], side: str, metric: str, label: str) -> list[tuple[int, float]]:
    """``(rate, median)`` of ``side``'s ``pair`` jobs of the variant ``label``, by rate."""
    points = []
    for key, y in side_values(rows, side, metric).items():
        parsed = parse_pair_key(key)
        if parsed is not None and parsed[1] == label:
            points.append((parsed[0], y))
    return sorted(points)


def plot_latency(path: Path, rows: Sequence[Row], variant: Variant = HEADLINE) -> None:
    """Write the latency percentiles of ``variant``'s ``pair`` jobs against the offered rate."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plotted = False
    for side in ALL_SIDES:
        for metric, style in (("p50_ms", "--"), ("p99_ms", "-")):
            points = pair_points(rows, side, metric, variant.label)
            xs = [x for x, _ in points]
            ys = [y for _, y in points]
            if xs:
                plotted = True
                label = f"{side} {metric.removesuffix('_ms')}"
                ax.plot(xs, ys, style, marker="o", color=_COLORS[side], label=label)
    ax.set_xlabel(f"offered msg/s ({variant.label}: {variant.producers} producer(s) → 1 consumer)")
    ax.set_ylabel("latency (ms, from scheduled send)")
    ax.set_title(f"Latency vs offered rate, {variant.label}")
    if plotted:
        ax.set_yscale("log")
    _finish(fig, ax, path, has_data=plotted)


def plot_throughput(path: Path, rows: Sequence[Row]) -> None:
    """Write the highest sustained 1→1 rate and fan-out deliveries/s as grouped bars."""
    values = {
        side: {
            **side_values(rows, side, "max_sustained_per_s"),
            **{
                key: y
                for key, y in side_values(rows, side, "delivered_per_s").items()
                if key.startswith("fanout")
            },
        }
        for side in ALL_SIDES
    }
    wanted = list(dict.fromkeys(key for by_job in values.values() for key in by_job))
    shown = [side for side in ALL_SIDES if values[side]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(shown))
    for i, side in enumerate(shown):
        xs = [j + (i - (len(shown) - 1) / 2) * width for j in range(len(wanted))]
        ys = [values[side].get(key, math.nan) for key in wanted]  # nan: no bar, not a 0
        ax.bar(xs, ys, width, label=side, color=_COLORS[side])
    ax.set_xticks(range(len(wanted)))
    ax.set_xticklabels([key.replace("max ", "max sustained\n") for key in wanted], fontsize=8)
    ax.set_ylabel("msg/s (fan-out: deliveries/s)")
    ax.set_title(f"Throughput (fan-out: asyncio is {BROADCAST}, the broadcast loop)")
    _finish(fig, ax, path, has_data=bool(wanted))


def plot_slow_memory(path: Path, series: Mapping[str, Sequence[Sequence[float]]]) -> None:
    """Write server RSS over time in the slow-consumer scenario."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for side in ALL_SIDES:
        points = series.get(side) or []
        if points:
            ax.plot(
                [p[0] for p in points],
                [p[1] / 2**20 for p in points],
                marker=".",
                color=_COLORS[side],
                label=side,
            )
    ax.set_xlabel("seconds since the run began")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_title("Server memory with a stalled consumer")
    _finish(fig, ax, path, has_data=any(series.values()))


def write_plots(
    out: Path, rows: Sequence[Row], slow: Mapping[str, Sequence[Sequence[float]]]
) -> list[Path]:
    """Write every chart of :data:`PLOT_FILES` into ``out``; return their paths."""
    latency, latency_batched, throughput, slow_memory = paths = [out / n for n in PLOT_FILES]
    plot_latency(latency, rows)
    plot_latency(latency_batched, rows, SIDE_TABLE_VARIANT)
    plot_throughput(throughput, rows)
    plot_slow_memory(slow_memory, slow)
    return paths
