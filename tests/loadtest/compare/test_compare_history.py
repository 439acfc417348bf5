"""History on vs off: where the no-history side runs, what its relay is told, the history
table and its bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtest.cli import build_parser
from loadtest.clients import LEAN_BATCH_MESSAGES
from loadtest.compare import deployments
from loadtest.compare.aggregate import HISTORY_TABLE, Run, aggregate
from loadtest.compare.deployments import RedisSource, deploy, describe_side
from loadtest.compare.plan import (
    FULL,
    HISTORY_CPU_BOUND,
    HISTORY_PAIR_RATE,
    QUICK,
    TRAFFIC_BUFFER_MESSAGES,
    Plan,
    build_jobs,
    build_plan,
    history_table_for,
    table_jobs,
)
from loadtest.compare.relay import default, env_name
from loadtest.compare.report import (
    history_headline,
    history_job_metrics,
    history_notes,
    render_report,
    render_table,
)
from loadtest.compare.sides import BASELINE, MEMORY, NOHISTORY, TOKENS

pytestmark = pytest.mark.timeout(30)

BOUND_KEY = f"pair@{HISTORY_PAIR_RATE}"


def _plan(*argv: str) -> Plan:
    return build_plan(build_parser().parse_args(["compare", *argv]))


def _sides(plan: Plan) -> dict[str, tuple[str, ...]]:
    return {job.key: job.sides for job in build_jobs(plan)}


def test_without_history_no_job_runs_on_the_nohistory_side() -> None:
    """The default comparison (full and quick) is unchanged: no such side, no history table."""
    for plan in (FULL, QUICK, _plan()):
        assert not any(NOHISTORY in sides for sides in _sides(plan).values())
        assert history_table_for(plan) is None
        assert plan.history_pair_rates == ()


def test_history_runs_pair_at_the_pair_rates_and_the_bound_rate() -> None:
    """--history --quick: pair at 2000 and 10000 on three sides, 5000 added beside triorelay."""
    plan = _plan("--quick", "--no-redis", "--history")
    assert plan.history_pair_rates == tuple(sorted({*QUICK.pair_rates, HISTORY_PAIR_RATE}))
    sides = _sides(plan)
    assert sides[BOUND_KEY] == (MEMORY, NOHISTORY)
    for rate in QUICK.pair_rates:
        assert sides[f"pair@{rate}"] == (MEMORY, NOHISTORY, BASELINE)
    assert [key for key, on in sides.items() if NOHISTORY in on] == [
        f"pair@{rate}" for rate in plan.history_pair_rates
    ]
    assert history_table_for(plan) is HISTORY_TABLE


def test_history_and_tokens_each_run_right_after_triorelay() -> None:
    """Both flags: triorelay, then the tokens side, then the no-history side, then the rest."""
    sides = _sides(_plan("--quick", "--no-redis", "--history", "--tokens"))
    assert sides[BOUND_KEY] == (MEMORY, TOKENS, NOHISTORY)
    assert sides[f"pair@{QUICK.pair_rates[0]}"] == (MEMORY, TOKENS, NOHISTORY, BASELINE)


def test_history_needs_the_pair_scenario() -> None:
    """--history with --scenarios slow: nothing to measure the CPU ratio on, no table."""
    plan = _plan("--history", "--scenarios", "slow")
    assert plan.history_pair_rates == ()
    assert history_table_for(plan) is None


def test_the_nohistory_side_differs_only_by_history_messages_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Same argv (echo acks) and job environment as triorelay; its relay also gets
    TRIORELAY_HISTORY_MESSAGES=0, and triorelay's relay keeps the default history."""
    (job,) = [j for j in build_jobs(_plan("--history")) if j.key == BOUND_KEY]
    assert job.argv_for(NOHISTORY) == job.argv_for(MEMORY)
    assert job.argv_for(NOHISTORY)[-2:] == ["--ack", "echo"]
    assert job.triorelay_env == {env_name("consumer_buffer_messages"): str(TRAFFIC_BUFFER_MESSAGES)}
    started: dict[str, dict[str, str]] = {}

    class Started:
        url = "ws://127.0.0.1:9"

    def start_server(side: str, log: Path, *, cpus: Any, env: dict[str, str]) -> Started:
        started[log.name] = env
        return Started()

    monkeypatch.setattr(deployments, "start_server", start_server)
    for side in (MEMORY, NOHISTORY):
        deploy(side, tmp_path / side, cpus=None, env=job.triorelay_env, redis=RedisSource())
    assert started[f"{MEMORY}.server.log"] == job.triorelay_env
    assert started[f"{NOHISTORY}.server.log"] == {
        **job.triorelay_env,
        env_name("history_messages"): "0",
    }
    assert default("history_messages") > 0
    assert f"`{env_name('history_messages')}=0`" in describe_side(NOHISTORY)


def _cpu_runs(history: list[float], none: list[float]) -> list[Run]:
    return [
        Run(BOUND_KEY, side, i, {"server_cpu_us_per_msg": v}, False, 30.0)
        for side, values in ((MEMORY, history), (NOHISTORY, none))
        for i, v in enumerate(values)
    ]


def test_history_table_gives_history_over_no_history_and_the_headline_judges_it() -> None:
    """The ratio is triorelay (history on) over the no-history side; at most 1.10x passes."""
    jobs = table_jobs(build_jobs(_plan("--history", "--no-redis")), HISTORY_TABLE)
    metrics = [m for m in history_job_metrics(jobs) if m[0] == BOUND_KEY]
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
    within = aggregate(_cpu_runs([11.0, 10.6], [10.0, 10.0]), metrics, table=HISTORY_TABLE)
    cpu = next(r for r in within if r.metric == "server_cpu_us_per_msg")
    assert cpu.ratios == {"history/no history": pytest.approx(1.08)}
    assert "**1.08x**, within the bound ≤ 1.10x" in history_headline(within)
    edge = aggregate(_cpu_runs([11.0], [10.0]), metrics, table=HISTORY_TABLE)
    assert "within" in history_headline(edge)  # at most 10 % more: 1.10x itself passes
    over = aggregate(_cpu_runs([11.2], [10.0]), metrics, table=HISTORY_TABLE)
    assert "**1.12x**, **over** the bound" in history_headline(over)
    assert "not measured" in history_headline([])
    assert HISTORY_CPU_BOUND == 1.10
    header = render_table(within, HISTORY_TABLE).splitlines()[0]
    assert header == (
        "| scenario | metric | triorelay | triorelay-nohistory | history/no history | note |"
    )


def test_the_notes_say_how_the_generator_writes_and_the_bound_is_on_its_rate_only() -> None:
    """Every pair row names the lean sender's 1 ms tick and the history kept; only the bound
    rate's row names the bound."""
    jobs = table_jobs(build_jobs(_plan("--history")), HISTORY_TABLE)
    notes = history_notes(jobs)
    bound = notes[(BOUND_KEY, "server_cpu_us_per_msg")]
    assert f"one write per 1 ms tick with every message due (≤ {LEAN_BATCH_MESSAGES})" in bound
    assert f"keeps the last {default('history_messages')} msgs (≤ 1 MiB) per channel" in bound
    assert "bound ≤ 1.10x (history ≤ 10 % more server CPU per message)" in bound
    other = notes[(f"pair@{FULL.pair_rates[0]}", "server_cpu_us_per_msg")]
    assert "1 ms tick" in other
    assert "bound" not in other


def test_report_has_a_history_section_only_when_the_side_ran() -> None:
    """The section opens with the headline and says how the generator writes; without
    history rows it is absent, and the side is not named."""
    plan = _plan("--quick", "--history")
    rows = aggregate(
        _cpu_runs([10.2], [10.0]), [(BOUND_KEY, ["server_cpu_us_per_msg"])], table=HISTORY_TABLE
    )
    md = render_report(
        "T\n", "", "R\n", plan=plan, pins=None, redis=RedisSource(), wall_s=1, history_rows=rows
    )
    section = md.split(f"## {HISTORY_TABLE.title}\n\n", 1)[1]
    assert section.startswith(
        f"- server CPU per delivered message, history/no history, at {HISTORY_PAIR_RATE} msg/s"
    )
    assert "generator: 1 lean producer → 1 consumer: one write per 1 ms tick" in section
    assert env_name("history_messages") in section
    assert "(triorelay, triorelay-nohistory, asyncio," in md
    plain = render_report("T\n", "", "R\n", plan=QUICK, pins=None, redis=RedisSource(), wall_s=1)
    assert HISTORY_TABLE.title not in plain
    assert NOHISTORY not in plain
