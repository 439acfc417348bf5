"""The pure parts of ``compare``: run order, medians, ratios, generator-bound runs, markdown."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.compare.aggregate import (
    BASELINE_TABLE,
    REDIS_TABLE,
    Run,
    aggregate,
    extract_metrics,
    generator_cpu_percent,
    is_generator_bound,
    median,
    ratio,
)
from loadtest.compare.plan import Job, alternation, table_jobs
from loadtest.compare.report import format_value, render_runs, render_table
from loadtest.compare.sides import (
    ALL_SIDES,
    BASELINE,
    MEMORY,
    REDIS,
    REDIS_2RELAYS,
    REDIS_SIDES,
    SIDES,
)


def _run(side: str, repeat: int, value: float | None, *, bound: bool = False) -> Run:
    return Run("pair@2000", side, repeat, {"p99_ms": value}, bound, 40.0)


def _result(scenario: str = "pair", *, cpu: list[float], flagged: bool = False) -> dict[str, Any]:
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


def test_alternation_interleaves_sides_within_each_repeat() -> None:
    """Each job runs triorelay then asyncio, job after job, repeat after repeat."""
    jobs = [Job("a", "pair", ()), Job("b", "slow", ())]
    order = [(s.repeat, s.job.key, s.side) for s in alternation(jobs, 2)]
    assert order == [
        (0, "a", "triorelay"),
        (0, "a", "asyncio"),
        (0, "b", "triorelay"),
        (0, "b", "asyncio"),
        (1, "a", "triorelay"),
        (1, "a", "asyncio"),
        (1, "b", "triorelay"),
        (1, "b", "asyncio"),
    ]


def test_job_argv_adds_the_side_specific_flags() -> None:
    """The baseline side gets its own flags after the shared ones."""
    job = Job("s", "slow", ("--rate", "10"), side_argv={"asyncio": ("--delivery", "competing")})
    assert job.argv_for("triorelay") == ["slow", "--rate", "10"]
    assert job.argv_for("asyncio") == ["slow", "--rate", "10", "--delivery", "competing"]


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
    runs = [_run("triorelay", i, v) for i, v in enumerate([1.0, 9.0, 2.0])]
    runs += [_run("asyncio", i, v) for i, v in enumerate([4.0, 5.0, 3.0])]
    (row,) = aggregate(runs, [("pair@2000", ["p99_ms"])], {("pair@2000", "p99_ms"): "n"})
    assert row.cells["triorelay"].median == 2.0
    assert row.cells["asyncio"].median == 4.0
    assert row.ratios == {"triorelay/asyncio": 0.5}
    assert row.cells["triorelay"].runs == 3
    assert row.note == "n"
    assert row.to_dict()["ratios"] == {"triorelay/asyncio": 0.5}


def test_aggregate_leaves_out_generator_bound_runs() -> None:
    """A generator-bound run is not a server measurement, so it does not enter the median."""
    runs = [_run("triorelay", 0, 1.0), _run("triorelay", 1, 100.0, bound=True)]
    runs += [_run("asyncio", 0, 2.0)]
    (row,) = aggregate(runs, [("pair@2000", ["p99_ms"])])
    assert row.cells["triorelay"] == row.cells["triorelay"].__class__(1.0, 1, False)
    assert row.ratios["triorelay/asyncio"] == 0.5


def test_aggregate_flags_a_side_whose_runs_were_all_generator_bound() -> None:
    """If every run of a side was generator-bound, the median uses them and is flagged."""
    runs = [_run("triorelay", 0, 7.0, bound=True), _run("asyncio", 0, 2.0)]
    (row,) = aggregate(runs, [("pair@2000", ["p99_ms"])])
    assert row.cells["triorelay"].generator_bound
    assert row.cells["triorelay"].median == 7.0
    assert not row.cells["asyncio"].generator_bound
    assert "7.00 ⚠gen" in render_table([row])


def test_render_table_has_a_header_and_one_line_per_row() -> None:
    """The table shows both sides, the ratio and the note; missing values are dashes."""
    runs = [_run("triorelay", 0, 1.5), _run("asyncio", 0, None)]
    rows = aggregate(runs, [("pair@2000", ["p99_ms"])], {("pair@2000", "p99_ms"): "why"})
    lines = render_table(rows).splitlines()
    assert lines[0] == "| scenario | metric | triorelay | asyncio | triorelay/asyncio | note |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == "| pair@2000 | latency p99 (ms) | 1.50 | — | — | why |"
    assert len(lines) == 3


def test_render_runs_lists_generator_cpu_and_flags() -> None:
    """The per-run table shows every run, bound ones in bold."""
    runs = [_run("triorelay", 0, 1.0, bound=True)]
    runs[0].flags.append("generator_bound")
    text = render_runs(runs)
    assert "| 1 | pair@2000 | triorelay | — | — | 40 | **yes** | generator_bound |" in text


def test_format_value_uses_separators() -> None:
    """Thousands separators and fixed decimals; None is a dash."""
    assert format_value(12345.678, 1) == "12,345.7"
    assert format_value(None, 1) == "—"


def test_extract_metrics_divides_server_cpu_by_delivered_messages() -> None:
    """2 ms of server CPU for 1000 deliveries is 2 µs per message; slow adds RSS in MiB."""
    metrics = extract_metrics(_result("slow", cpu=[10.0]), server_cpu_s=0.002)
    assert metrics["server_cpu_us_per_msg"] == pytest.approx(2.0)
    assert metrics["p99_ms"] == 3.0
    assert metrics["rss_growth_mb"] == 2.0
    assert metrics["rss_max_mb"] == 3.0


def test_generator_bound_by_flag_or_by_summed_cpu_on_pinned_cores() -> None:
    """Two processes at 50 % each saturate one pinned core; unpinned, only the flag counts."""
    assert generator_cpu_percent(_result(cpu=[50.0, 45.0])) == 95.0
    assert is_generator_bound(_result(cpu=[50.0, 45.0]), generator_cores=1)
    assert not is_generator_bound(_result(cpu=[50.0, 45.0]), generator_cores=None)
    assert not is_generator_bound(_result(cpu=[30.0, 20.0]), generator_cores=1)
    assert is_generator_bound(_result(cpu=[10.0], flagged=True), generator_cores=1)


def test_max_is_generator_bound_when_the_generator_stopped_the_climb() -> None:
    """For max, limited_by decides; the busiest step gives the generator CPU."""
    result = _result("max", cpu=[20.0])
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


def test_sides_are_triorelay_then_asyncio() -> None:
    """Ratios are triorelay over asyncio, so triorelay is the first side."""
    assert SIDES == ("triorelay", "asyncio")


def test_generator_cpu_falls_back_to_the_sampled_series() -> None:
    """Without in-window figures (connections), the mean of each sampled series is summed."""
    result = _result(cpu=[])
    result["summary"]["generator"]["series"] = {"main": [[0.0, None, 1], [0.5, 30.0, 1]]}
    assert generator_cpu_percent(result) == 30.0


def test_alternation_runs_each_job_on_its_own_sides() -> None:
    """A job that also runs on Redis puts its Redis sides right after the other two."""
    jobs = [Job("p", "pair", (), sides=ALL_SIDES), Job("s", "slow", ())]
    order = [(s.job.key, s.side) for s in alternation(jobs, 1)]
    assert order == [
        ("p", "triorelay"),
        ("p", "asyncio"),
        ("p", "triorelay+redis"),
        ("p", "triorelay+redis-2relays"),
        ("s", "triorelay"),
        ("s", "asyncio"),
    ]


def _redis_runs() -> list[Run]:
    values = {MEMORY: [1.0, 3.0], REDIS: [4.0, 8.0], REDIS_2RELAYS: [10.0, 6.0], BASELINE: [9.0]}
    return [
        Run("pair@1000", side, i, {"p99_ms": v}, False, 30.0)
        for side, vs in values.items()
        for i, v in enumerate(vs)
    ]


def test_redis_table_rows_have_both_ratios_over_memory() -> None:
    """The Redis table: memory, one relay on Redis, two relays; each Redis side over memory."""
    (row,) = aggregate(_redis_runs(), [("pair@1000", ["p99_ms"])], table=REDIS_TABLE)
    assert list(row.cells) == [MEMORY, REDIS, REDIS_2RELAYS]  # no baseline cell
    assert row.cells[REDIS].median == 6.0
    assert row.ratios == {"redis/memory": 3.0, "2relays/memory": 4.0}
    assert row.to_dict()["triorelay+redis-2relays"]["median"] == 8.0


def test_render_redis_table_shows_three_sides_and_two_ratios() -> None:
    """Header names each side and each ratio; a side without a value is a dash, not a zero."""
    runs = [r for r in _redis_runs() if r.side != REDIS_2RELAYS]
    rows = aggregate(runs, [("pair@1000", ["p99_ms"])], table=REDIS_TABLE)
    lines = render_table(rows, REDIS_TABLE).splitlines()
    assert lines[0] == (
        "| scenario | metric | triorelay | triorelay+redis | triorelay+redis-2relays "
        "| redis/memory | 2relays/memory | note |"
    )
    assert lines[2] == "| pair@1000 | latency p99 (ms) | 2.00 | 6.00 | — | 3.00x | — |  |"


def test_table_jobs_keeps_jobs_run_on_every_side_of_the_table() -> None:
    """A job enters the Redis table only if it ran on memory and the Redis sides."""
    jobs = [Job("a", "pair", (), sides=ALL_SIDES), Job("b", "slow", ())]
    jobs.append(Job("c", "pair", (), sides=(MEMORY, *REDIS_SIDES)))
    assert [j.key for j in table_jobs(jobs, REDIS_TABLE)] == ["a", "c"]
    assert [j.key for j in table_jobs(jobs, BASELINE_TABLE)] == ["a", "b"]


def test_extract_metrics_shows_redis_cpu_and_max_latency() -> None:
    """redis-server's CPU is counted in server CPU and shown on its own, per delivery."""
    metrics = extract_metrics(_result(cpu=[10.0]), server_cpu_s=0.005, redis_cpu_s=0.001)
    assert metrics["server_cpu_us_per_msg"] == pytest.approx(5.0)
    assert metrics["redis_cpu_us_per_msg"] == pytest.approx(1.0)
    assert metrics["max_ms"] == 5.0
    assert extract_metrics(_result(cpu=[10.0]), server_cpu_s=0.005)["redis_cpu_us_per_msg"] is None


def test_chart_points_are_taken_once_per_side_and_job() -> None:
    """Both tables hold the in-memory relay's p99 for pair@1000: the chart gets one point."""
    from loadtest.compare.plots import side_values

    runs = _redis_runs()
    rows = aggregate(runs, [("pair@1000", ["p99_ms"])])
    rows += aggregate(runs, [("pair@1000", ["p99_ms"])], table=REDIS_TABLE)
    assert side_values(rows, MEMORY, "p99_ms") == {"pair@1000": 2.0}
    assert side_values(rows, REDIS_2RELAYS, "p99_ms") == {"pair@1000": 8.0}
    assert side_values(rows, REDIS, "p50_ms") == {}
