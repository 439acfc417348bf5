"""The charts' data: each point once per side and job, whichever tables hold it."""

from __future__ import annotations

from sample_runs import redis_runs

from loadtest.compare.aggregate import REDIS_TABLE, aggregate
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
