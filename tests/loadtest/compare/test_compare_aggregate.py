"""Runs into numbers: flat metrics, generator-bound runs, medians and ratios per table."""

from __future__ import annotations

import pytest
from sample_runs import pair_run, redis_runs, scenario_result

from loadtest.compare.aggregate import (
    REDIS_TABLE,
    aggregate,
    extract_metrics,
    generator_cpu_percent,
    is_generator_bound,
    median,
    ratio,
)
from loadtest.compare.sides import (
    MEMORY,
    REDIS,
    REDIS_2RELAYS,
)


def test_median_skips_missing_values() -> None:
    """None values are ignored; no values gives None; even counts average the middle two."""
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([1.0, 4.0]) == 2.5
    assert median([None]) is None
    assert median([]) is None


def test_ratio_handles_missing_and_zero() -> None:
    """A ratio needs both numbers and a non-zero divisor."""
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None


def test_aggregate_takes_medians_per_side_and_their_ratio() -> None:
    """Three repeats per side become one row: the medians and triorelay/asyncio."""
    runs = [pair_run("triorelay", i, v) for i, v in enumerate([1.0, 9.0, 2.0])]
    runs += [pair_run("asyncio", i, v) for i, v in enumerate([4.0, 5.0, 3.0])]
    (row,) = aggregate(runs, [("pair@2000", ["p99_ms"])], {("pair@2000", "p99_ms"): "n"})
    assert row.cells["triorelay"].median == 2.0
    assert row.cells["asyncio"].median == 4.0
    assert row.ratios == {"triorelay/asyncio": 0.5}
    assert row.cells["triorelay"].runs == 3
    assert row.note == "n"
    assert row.to_dict()["ratios"] == {"triorelay/asyncio": 0.5}


def test_aggregate_leaves_out_generator_bound_runs() -> None:
    """A generator-bound run is not a server measurement, so it does not enter the median."""
    runs = [pair_run("triorelay", 0, 1.0), pair_run("triorelay", 1, 100.0, bound=True)]
    runs += [pair_run("asyncio", 0, 2.0)]
    (row,) = aggregate(runs, [("pair@2000", ["p99_ms"])])
    assert row.cells["triorelay"] == row.cells["triorelay"].__class__(1.0, 1, False)
    assert row.ratios["triorelay/asyncio"] == 0.5


def test_redis_table_rows_have_both_ratios_over_memory() -> None:
    """The Redis table: memory, one relay on Redis, two relays; each Redis side over memory."""
    (row,) = aggregate(redis_runs(), [("pair@1000", ["p99_ms"])], table=REDIS_TABLE)
    assert list(row.cells) == [MEMORY, REDIS, REDIS_2RELAYS]  # no baseline cell
    assert row.cells[REDIS].median == 6.0
    assert row.ratios == {"redis/memory": 3.0, "2relays/memory": 4.0}
    assert row.to_dict()["triorelay+redis-2relays"]["median"] == 8.0


def test_extract_metrics_divides_server_cpu_by_delivered_messages() -> None:
    """2 ms of server CPU for 1000 deliveries is 2 µs per message; slow adds RSS in MiB."""
    metrics = extract_metrics(scenario_result("slow", cpu=[10.0]), server_cpu_s=0.002)
    assert metrics["server_cpu_us_per_msg"] == pytest.approx(2.0)
    assert metrics["p99_ms"] == 3.0
    assert metrics["rss_growth_mb"] == 2.0
    assert metrics["rss_max_mb"] == 3.0


def test_a_fanout_also_gets_its_cpu_per_delivery_once_connected() -> None:
    """The generator's reading from every consumer connected to the end, per delivery."""
    result = scenario_result("fanout", cpu=[10.0])
    result["extra"]["server_cpu_seconds_connected"] = 0.003
    metrics = extract_metrics(result, server_cpu_s=0.005)
    assert metrics["server_cpu_us_per_msg"] == pytest.approx(5.0)
    assert metrics["server_cpu_us_per_msg_connected"] == pytest.approx(3.0)
    result["extra"]["server_cpu_seconds_connected"] = None  # no server PID given
    assert extract_metrics(result, server_cpu_s=0.005)["server_cpu_us_per_msg_connected"] is None
    assert "server_cpu_us_per_msg_connected" not in extract_metrics(
        scenario_result("pair", cpu=[10.0]), server_cpu_s=0.005
    )


def test_extract_metrics_shows_redis_cpu_and_max_latency() -> None:
    """redis-server's CPU is counted in server CPU and shown on its own, per delivery."""
    metrics = extract_metrics(scenario_result(cpu=[10.0]), server_cpu_s=0.005, redis_cpu_s=0.001)
    assert metrics["server_cpu_us_per_msg"] == pytest.approx(5.0)
    assert metrics["redis_cpu_us_per_msg"] == pytest.approx(1.0)
    assert metrics["max_ms"] == 5.0
    assert (
        extract_metrics(scenario_result(cpu=[10.0]), server_cpu_s=0.005)["redis_cpu_us_per_msg"]
        is None
    )


def test_generator_bound_by_flag_or_by_summed_cpu_on_pinned_cores() -> None:
    """Two processes at 50 % each saturate one pinned core; unpinned, only the flag counts."""
    assert generator_cpu_percent(scenario_result(cpu=[50.0, 45.0])) == 95.0
    assert is_generator_bound(scenario_result(cpu=[50.0, 45.0]), generator_cores=1)
    assert not is_generator_bound(scenario_result(cpu=[50.0, 45.0]), generator_cores=None)
    assert not is_generator_bound(scenario_result(cpu=[30.0, 20.0]), generator_cores=1)
    assert is_generator_bound(scenario_result(cpu=[10.0], flagged=True), generator_cores=1)


def test_max_is_generator_bound_when_the_generator_stopped_the_climb() -> None:
    """For max, limited_by decides; the busiest step gives the generator CPU."""
    result = scenario_result("max", cpu=[20.0])
    result["extra"] = {
        "limited_by": "generator",
        "max_sustained_per_s": 5000,
        "steps": [{"summary": {"generator": {"cpu_percent_by_process": [97.0]}}}],
    }
    assert is_generator_bound(result, generator_cores=1)
    assert generator_cpu_percent(result) == 97.0
    assert extract_metrics(result, server_cpu_s=1.0)["max_sustained_per_s"] == 5000
    result["extra"]["limited_by"] = "server"
    assert not is_generator_bound(result, generator_cores=1)


def test_connections_whose_server_was_saturated_are_not_generator_bound() -> None:
    """A connections run says what limited its ramp: the server saturated counts, however
    busy the generator was; otherwise the generator's flag decides."""
    result = scenario_result("connections", cpu=[10.0], flagged=True)
    result["extra"] = {"limited_by": "server"}
    assert not is_generator_bound(result, generator_cores=1)
    busy = scenario_result("connections", cpu=[95.0])  # the pinned core's total, too
    busy["extra"] = {"limited_by": "server"}
    assert not is_generator_bound(busy, generator_cores=1)
    busy["extra"] = {"limited_by": None}
    assert is_generator_bound(busy, generator_cores=1)
    result["extra"] = {"limited_by": "generator"}
    assert is_generator_bound(result, generator_cores=1)


def test_generator_cpu_falls_back_to_the_sampled_series() -> None:
    """Without in-window figures (connections), the mean of each sampled series is summed."""
    result = scenario_result(cpu=[])
    result["summary"]["generator"]["series"] = {"main": [[0.0, None, 1], [0.5, 30.0, 1]]}
    assert generator_cpu_percent(result) == 30.0


def test_roundtrip_has_its_latency_and_cpu_per_message_and_always_counts() -> None:
    """One message in flight: p50/p99 and CPU per message like pair; a closed loop whose
    generator is busy by design, so never generator-bound (flag or CPU)."""
    result = scenario_result("roundtrip", cpu=[99.0], flagged=True)
    metrics = extract_metrics(result, server_cpu_s=0.1)
    assert (metrics["p50_ms"], metrics["p99_ms"]) == (1.0, 3.0)
    assert metrics["server_cpu_us_per_msg"] == pytest.approx(100.0)
    assert not is_generator_bound(result, generator_cores=1)


def test_connections_have_rss_cpu_per_connection_and_connect_rate() -> None:
    """The idle connections' three figures come from the scenario's own measurements."""
    result = scenario_result("connections", cpu=[10.0])
    result["extra"] = {
        "server_rss_per_connection_bytes": 26000.0,
        "connect_rate_per_s": 1400.0,
        "server_cpu_ms_per_connect": 0.47,
    }
    metrics = extract_metrics(result, server_cpu_s=1.0)
    assert metrics["rss_per_connection_bytes"] == 26000.0
    assert metrics["connect_rate_per_s"] == 1400.0
    assert metrics["server_cpu_ms_per_connect"] == 0.47
