"""Stage timing on vs off: where the no-tracing side runs, what its relay is told, the stage
timing table and its bound (issue #14: at most 5 % more server CPU per message)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtest.cli import build_parser
from loadtest.compare import deployments
from loadtest.compare.aggregate import TRACING_TABLE, Row, Run, aggregate
from loadtest.compare.deployments import RedisSource, deploy, describe_side
from loadtest.compare.plan import (
    EXTRAS,
    FULL,
    QUICK,
    SIDE_TABLE_VARIANT,
    TRACING_CPU_BOUND,
    TRACING_PAIR_RATE,
    TRAFFIC_BUFFER_MESSAGES,
    Plan,
    build_jobs,
    build_plan,
    pair_key,
    table_jobs,
    tracing_table_for,
)
from loadtest.compare.relay import default, env_name
from loadtest.compare.report import (
    extra_headline,
    extra_job_metrics,
    render_report,
    render_table,
    tracing_notes,
)
from loadtest.compare.sides import BASELINE, MEMORY, NOHISTORY, NOTRACING, TOKENS
from loadtest.lean import LEAN_BATCH_MESSAGES

pytestmark = pytest.mark.timeout(30)

BOUND_KEY = pair_key(SIDE_TABLE_VARIANT, TRACING_PAIR_RATE)
SAMPLE = "latency_sample_messages"


def _plan(*argv: str) -> Plan:
    return build_plan(build_parser().parse_args(["compare", *argv]))


def _sides(plan: Plan) -> dict[str, tuple[str, ...]]:
    return {job.key: job.sides for job in build_jobs(plan)}


def tracing_headline(rows: list[Row]) -> str:
    return extra_headline(rows, EXTRAS[NOTRACING])


def test_without_tracing_no_job_runs_on_the_notracing_side() -> None:
    """The default comparison (full and quick) is unchanged: no such side, no table."""
    for plan in (FULL, QUICK, _plan()):
        assert not any(NOTRACING in sides for sides in _sides(plan).values())
        assert tracing_table_for(plan) is None
        assert plan.tracing_pair_rates == ()


def test_tracing_runs_pair_at_the_pair_rates_and_the_bound_rate() -> None:
    """--tracing --quick: pair at 2000 and 10000 on three sides, 5000 added beside triorelay;
    nothing else runs on the side."""
    plan = _plan("--quick", "--no-redis", "--tracing")
    assert plan.tracing_pair_rates == tuple(sorted({*QUICK.pair_rates, TRACING_PAIR_RATE}))
    sides = _sides(plan)
    assert sides[BOUND_KEY] == (MEMORY, NOTRACING)
    for rate in QUICK.pair_rates:
        assert sides[pair_key(SIDE_TABLE_VARIANT, rate)] == (MEMORY, NOTRACING, BASELINE)
    assert [key for key, on in sides.items() if NOTRACING in on] == [
        pair_key(SIDE_TABLE_VARIANT, rate) for rate in plan.tracing_pair_rates
    ]
    assert tracing_table_for(plan) is TRACING_TABLE
    assert _plan("--tracing", "--pair-rates", "5000").tracing_pair_rates == (TRACING_PAIR_RATE,)


def test_tracing_runs_after_triorelay_and_the_other_opt_in_sides() -> None:
    """Every flag: triorelay, the tokens side, the no-history side, the no-tracing side, then
    the baseline."""
    sides = _sides(_plan("--quick", "--no-redis", "--tracing", "--history", "--tokens"))
    assert sides[BOUND_KEY] == (MEMORY, TOKENS, NOHISTORY, NOTRACING)
    assert sides[pair_key(SIDE_TABLE_VARIANT, QUICK.pair_rates[0])] == (
        MEMORY,
        TOKENS,
        NOHISTORY,
        NOTRACING,
        BASELINE,
    )
    alone = _sides(_plan("--quick", "--no-redis", "--tracing", "--tokens"))
    assert alone[BOUND_KEY] == (MEMORY, TOKENS, NOTRACING)


def test_tracing_needs_the_pair_scenario() -> None:
    """--tracing with --scenarios slow: nothing to measure the CPU ratio on, no table."""
    plan = _plan("--tracing", "--scenarios", "slow")
    assert plan.tracing_pair_rates == ()
    assert tracing_table_for(plan) is None
    assert not any(NOTRACING in sides for sides in _sides(plan).values())


def test_the_notracing_side_differs_only_by_latency_sample_messages_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Same argv (echo acks) and job environment as triorelay; its relay also gets
    TRIORELAY_LATENCY_SAMPLE_MESSAGES=0, and triorelay's relay samples at the default."""
    (job,) = [j for j in build_jobs(_plan("--tracing")) if j.key == BOUND_KEY]
    assert job.argv_for(NOTRACING) == job.argv_for(MEMORY)
    assert job.argv_for(NOTRACING)[-2:] == ["--ack", "echo"]
    assert job.triorelay_env == {env_name("consumer_buffer_messages"): str(TRAFFIC_BUFFER_MESSAGES)}
    started: dict[str, dict[str, str]] = {}

    class Started:
        url = "ws://127.0.0.1:9"

    def start_server(side: str, log: Path, *, cpus: Any, env: dict[str, str]) -> Started:
        assert side == MEMORY  # the same server command
        started[log.name] = env
        return Started()

    monkeypatch.setattr(deployments, "start_server", start_server)
    for side in (MEMORY, NOTRACING):
        servers = deploy(
            side, tmp_path / side, cpus=None, env=job.triorelay_env, redis=RedisSource()
        )
        assert servers.token is None
        assert servers.consumer_url is None
    assert started[f"{MEMORY}.server.log"] == job.triorelay_env
    assert started[f"{NOTRACING}.server.log"] == {**job.triorelay_env, env_name(SAMPLE): "0"}
    assert default(SAMPLE) > 0
    assert describe_side(NOTRACING) == (
        f"`python -m triorelay serve` with `{env_name(SAMPLE)}=0` (no message sampled for the "
        "stage-latency histograms), every client on it"
    )


def _cpu_runs(timed: list[float], none: list[float]) -> list[Run]:
    return [
        Run(BOUND_KEY, side, i, {"server_cpu_us_per_msg": v}, False, 30.0)
        for side, values in ((MEMORY, timed), (NOTRACING, none))
        for i, v in enumerate(values)
    ]


def test_tracing_table_gives_timing_over_none_and_the_headline_judges_it() -> None:
    """The ratio is triorelay (stage timing on) over the no-tracing side; at most 1.05x
    passes, 1.05x itself included."""
    jobs = table_jobs(build_jobs(_plan("--tracing", "--no-redis")), TRACING_TABLE)
    metrics = [m for m in extra_job_metrics(jobs) if m[0] == BOUND_KEY]
    assert metrics == [
        (
            BOUND_KEY,
            [
                "server_cpu_us_per_msg",
                "p50_ms",
                "p99_ms",
                "delivered_ratio",
                "generator_cpu_percent",
            ],
        )
    ]
    within = aggregate(_cpu_runs([10.3, 10.1], [10.0, 10.0]), metrics, table=TRACING_TABLE)
    cpu = next(r for r in within if r.metric == "server_cpu_us_per_msg")
    assert cpu.ratios == {"timing/no timing": pytest.approx(1.02)}
    assert tracing_headline(within) == (
        f"server CPU per delivered message, timing/no timing, at {TRACING_PAIR_RATE} msg/s: "
        "**1.02x**, within the bound ≤ 1.05x (stage timing ≤ 5 % more server CPU per message): "
        "pass"
    )
    edge = aggregate(_cpu_runs([10.5], [10.0]), metrics, table=TRACING_TABLE)
    assert tracing_headline(edge).endswith(": pass")  # at most 5 % more: 1.05x itself passes
    over = aggregate(_cpu_runs([10.6], [10.0]), metrics, table=TRACING_TABLE)
    assert "**1.06x**, **over** the bound ≤ 1.05x" in tracing_headline(over)
    assert tracing_headline(over).endswith(": **fail**")
    assert "not measured" in tracing_headline([])
    assert TRACING_CPU_BOUND == 1.05
    header = render_table(within, TRACING_TABLE).splitlines()[0]
    assert header == (
        "| scenario | metric | triorelay | triorelay-notracing | timing/no timing | note |"
    )


def test_the_notes_say_how_the_generator_writes_what_is_sampled_and_the_bound() -> None:
    """Every pair row names the lean sender's 1 ms tick, the sampling, the checks both sides
    make and metrics read at scrape time; only the bound rate's row names the bound."""
    jobs = table_jobs(build_jobs(_plan("--tracing")), TRACING_TABLE)
    notes = tracing_notes(jobs)
    bound = notes[(BOUND_KEY, "server_cpu_us_per_msg")]
    assert f"one write per 1 ms tick with every message due (≤ {LEAN_BATCH_MESSAGES})" in bound
    assert f"triorelay times 1 msg in {default(SAMPLE)} per producer through its stages" in bound
    assert "triorelay-notracing none (both check every message for a trace" in bound
    assert "metrics are read at scrape time" in bound
    assert bound.endswith("; bound ≤ 1.05x (stage timing ≤ 5 % more server CPU per message)")
    other = notes[(pair_key(SIDE_TABLE_VARIANT, FULL.pair_rates[0]), "server_cpu_us_per_msg")]
    assert "1 ms tick" in other
    assert "bound" not in other
    assert {metric for _key, metric in notes} == {"server_cpu_us_per_msg"}


def test_report_has_a_tracing_section_only_when_the_side_ran() -> None:
    """The section opens with the headline, says how the generator writes, what each side
    samples, that metrics are read at scrape time and that both sides check every message
    (so the ratio is the sampling's); without rows it is absent, and the side is not named."""
    plan = _plan("--quick", "--tracing", "--history")
    rows = aggregate(
        _cpu_runs([10.2], [10.0]), [(BOUND_KEY, ["server_cpu_us_per_msg"])], table=TRACING_TABLE
    )
    md = render_report(
        "T\n", "", "R\n", plan=plan, pins=None, redis=RedisSource(), wall_s=1, tracing_rows=rows
    )
    section = md.split(f"## {TRACING_TABLE.title}\n\n", 1)[1].split("\n## ", 1)[0]
    bullets = [line for line in section.splitlines() if line.startswith("- ")]
    assert bullets[0].startswith(
        f"- server CPU per delivered message, timing/no timing, at {TRACING_PAIR_RATE} msg/s: "
        "**1.02x**, within"
    )
    assert (
        f"`{env_name(SAMPLE)}` at its default, {default(SAMPLE)}: one message in {default(SAMPLE)}"
        in bullets[1]
    )
    assert f"`{env_name(SAMPLE)}=0`" in bullets[1]
    assert "ratios are timing/no timing (`triorelay` over `triorelay-notracing`)" in bullets[1]
    assert bullets[2] == (
        "- rates: 2000, 5000, 10000 msg/s 1→1; generator: 1 lean producer → 1 consumer: one "
        f"write per 1 ms tick with every message due (≤ {LEAN_BATCH_MESSAGES}), echo acks"
    )
    assert (
        "`GET /metrics` reads the relay's own counters and statistics when it is scraped"
        in (bullets[3])
    )
    assert bullets[4].startswith("- so this measures the **sampling**: the checks every untraced")
    assert "run on both sides, and `triorelay-notracing` skips only the countdown" in bullets[4]
    assert "| timing/no timing |" in section
    assert "(triorelay, triorelay-nohistory, triorelay-notracing, asyncio," in md
    plain = render_report("T\n", "", "R\n", plan=QUICK, pins=None, redis=RedisSource(), wall_s=1)
    assert TRACING_TABLE.title not in plain
    assert NOTRACING not in plain
