"""The PNG charts of ``python -m loadtest compare`` (matplotlib, Agg backend: no display).

* ``latency.png``: pair p50/p99 against the offered rate, per side (log scale);
* ``throughput.png``: highest sustained 1→1 rate and fan-out deliveries/s, per side;
* ``slow_memory.png``: server RSS over time with a stalled consumer, per side.

A chart whose data is missing (scenario not run) is still written, with a "no data" note, so
the set of files does not depend on ``--scenarios``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from loadtest.comparison import SIDES, Row

PLOT_FILES = ("latency.png", "throughput.png", "slow_memory.png")
_COLORS = {"triorelay": "tab:blue", "asyncio": "tab:orange"}


def _finish(fig: Figure, ax: Axes, path: Path, *, has_data: bool) -> None:
    """Add the legend (or a "no data" mark), write the PNG, and free the figure."""
    if has_data:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latency(path: Path, rows: Sequence[Row]) -> None:
    """Write pair latency percentiles against the offered rate."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plotted = False
    for side in SIDES:
        for metric, style in (("p50_ms", "--"), ("p99_ms", "-")):
            points = sorted(
                (int(r.job_key.split("@")[1]), r.cells[side].median)
                for r in rows
                if r.job_key.startswith("pair@") and r.metric == metric
            )
            xs = [x for x, y in points if y is not None]
            ys = [y for _, y in points if y is not None]
            if xs:
                plotted = True
                label = f"{side} {metric.removesuffix('_ms')}"
                ax.plot(xs, ys, style, marker="o", color=_COLORS[side], label=label)
    ax.set_xlabel("offered msg/s (1 producer → 1 consumer)")
    ax.set_ylabel("latency (ms, from scheduled send)")
    ax.set_title("Latency vs offered rate")
    if plotted:
        ax.set_yscale("log")
    _finish(fig, ax, path, has_data=plotted)


def plot_throughput(path: Path, rows: Sequence[Row]) -> None:
    """Write the highest sustained 1→1 rate and fan-out deliveries/s as grouped bars."""
    wanted = [
        r
        for r in rows
        if r.metric == "max_sustained_per_s"
        or (r.job_key.startswith("fanout") and r.metric == "delivered_per_s")
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.38
    for i, side in enumerate(SIDES):
        xs = [j + (i - 0.5) * width for j in range(len(wanted))]
        ys = [r.cells[side].median or 0.0 for r in wanted]
        ax.bar(xs, ys, width, label=side, color=_COLORS[side])
    ax.set_xticks(range(len(wanted)))
    ax.set_xticklabels(
        ["max sustained 1→1" if r.metric == "max_sustained_per_s" else r.job_key for r in wanted]
    )
    ax.set_ylabel("msg/s (fan-out: deliveries/s)")
    ax.set_title("Throughput (baseline fan-out: each message to ONE consumer)")
    _finish(fig, ax, path, has_data=bool(wanted))


def plot_slow_memory(path: Path, series: Mapping[str, Sequence[Sequence[float]]]) -> None:
    """Write server RSS over time in the slow-consumer scenario."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for side in SIDES:
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
    paths = [out / name for name in PLOT_FILES]
    plot_latency(paths[0], rows)
    plot_throughput(paths[1], rows)
    plot_slow_memory(paths[2], slow)
    return paths
