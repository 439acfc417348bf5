"""The charts' data: each point once per side and job, whichever tables hold it."""

from __future__ import annotations

from sample_runs import redis_runs

from loadtest.compare.aggregate import REDIS_TABLE, Run, aggregate
from loadtest.compare.sides import (
    MEMORY,
    REDIS,
    REDIS_2RELAYS,
)


def test_chart_points_are_taken_once_per_side_and_job() -> None:
    """Both tables hold the in-memory relay's p99 for pair@1000: the chart gets one point."""
    from loadtest.compare.plots import side_values

    runs = redis_runs()
    rows = aggregate(runs, [("pair@1000", ["p99_ms"])])
    rows += aggregate(runs, [("pair@1000", ["p99_ms"])], table=REDIS_TABLE)
    assert side_values(rows, MEMORY, "p99_ms") == {"pair@1000": 2.0}
    assert side_values(rows, REDIS_2RELAYS, "p99_ms") == {"pair@1000": 8.0}
    assert side_values(rows, REDIS, "p50_ms") == {}


def test_latency_points_are_those_of_one_variant() -> None:
    """The latency chart of a variant takes its pair jobs only, by rate."""
    from loadtest.compare.plots import pair_points

    runs = [
        Run(key, MEMORY, 0, {"p99_ms": value}, False, 10.0)
        for key, value in (
            ("pair@5000 unbatched 1→1", 3.0),
            ("pair@2000 unbatched 1→1", 2.0),
            ("pair@2000 batched 1→1", 9.0),
            ("max unbatched 1→1", 1.0),
        )
    ]
    rows = aggregate(runs, [(r.job_key, ["p99_ms"]) for r in runs], table=REDIS_TABLE)
    assert pair_points(rows, MEMORY, "p99_ms", "unbatched 1→1") == [(2000, 2.0), (5000, 3.0)]
    assert pair_points(rows, MEMORY, "p99_ms", "batched 1→1") == [(2000, 9.0)]
