"""Runs and scenario results made up for the pure tests of ``compare`` (not a test module)."""

from __future__ import annotations

from typing import Any

from loadtest.compare.aggregate import Run
from loadtest.compare.sides import BASELINE, MEMORY, REDIS, REDIS_2RELAYS


def pair_run(side: str, repeat: int, value: float | None, *, bound: bool = False) -> Run:
    """One ``pair@2000`` run of ``side`` whose only metric is ``p99_ms``."""
    return Run("pair@2000", side, repeat, {"p99_ms": value}, bound, 40.0)


def scenario_result(
    scenario: str = "pair", *, cpu: list[float], flagged: bool = False
) -> dict[str, Any]:
    """A minimal generator result of ``scenario`` with these generator CPU figures."""
    return {
        "scenario": scenario,
        "summary": {
            "counts": {"delivered": 1000},
            "latency_ms": {"p50": 1.0, "p99": 3.0, "max": 5.0},
            "throughput_per_s": {"delivered": 500.0},
            "delivered_ratio": 1.0,
            "server": {"rss_bytes": {"start": 2**20, "max": 3 * 2**20, "end": 2**20}},
            "generator": {"cpu_percent_by_process": cpu, "generator_bound": flagged},
        },
        "extra": {"server_rss_growth_bytes": 2 * 2**20},
    }


def redis_runs() -> list[Run]:
    """``pair@1000`` runs on every side, p99 only: two repeats each, one for the baseline."""
    values = {MEMORY: [1.0, 3.0], REDIS: [4.0, 8.0], REDIS_2RELAYS: [10.0, 6.0], BASELINE: [9.0]}
    return [
        Run("pair@1000", side, i, {"p99_ms": v}, False, 30.0)
        for side, vs in values.items()
        for i, v in enumerate(vs)
    ]
