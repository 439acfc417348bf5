"""History on vs off: where the no-history side and the resume job run, what their relays
are told, the history and resume tables and their bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtest.cli import build_parser
from loadtest.compare import deployments
from loadtest.compare.aggregate import (
    HISTORY_TABLE,
    Row,
    Run,
    aggregate,
    extract_metrics,
    is_generator_bound,
)
from loadtest.compare.deployments import RedisSource, deploy, describe_side
from loadtest.compare.history import (
    HISTORY,
    RESUME_LABEL,
    history_notes,
    history_section,
    render_resume_table,
    resume_headline,
    resume_job_metrics,
    resume_notes,
)
from loadtest.compare.plan import (
    FULL,
    HISTORY_CPU_BOUND,
    HISTORY_PAIR_RATE,
    QUICK,
    RESUME_BOUND_MS,
    RESUME_KEY,
    RESUME_MISSED,
    SIDE_TABLE_VARIANT,
    TRAFFIC_BUFFER_MESSAGES,
    Plan,
    build_jobs,
    build_plan,
    history_table_for,
    pair_key,
    resume_table_for,
    table_jobs,
)
from loadtest.compare.relay import default, env_name
from loadtest.compare.report import extra_headline, extra_job_metrics, render_report, render_table
from loadtest.compare.sides import BASELINE, MEMORY, NOHISTORY, REDIS, REDIS_2RELAYS, TOKENS
from loadtest.lean import LEAN_BATCH_MESSAGES

pytestmark = pytest.mark.timeout(30)

BOUND_KEY = pair_key(SIDE_TABLE_VARIANT, HISTORY_PAIR_RATE)


def history_headline(rows: list[Row]) -> str:
    return extra_headline(rows, HISTORY)


def _plan(*argv: str) -> Plan:
    return build_plan(build_parser().parse_args(["compare", *argv]))


def _sides(plan: Plan) -> dict[str, tuple[str, ...]]:
    return {job.key: job.sides for job in build_jobs(plan)}


def test_without_history_no_job_runs_on_the_nohistory_side() -> None:
    """The default comparison (full and quick) is unchanged: no such side, no resume job, no
    history or resume table."""
    for plan in (FULL, QUICK, _plan()):
        assert not any(NOHISTORY in sides for sides in _sides(plan).values())
        assert RESUME_KEY not in _sides(plan)
        assert history_table_for(plan) is resume_table_for(plan) is None
        assert plan.history_pair_rates == plan.resume_sides == ()


def test_history_runs_pair_at_the_pair_rates_and_the_bound_rate() -> None:
    """--history --quick: pair at 2000 and 10000 on three sides, 5000 added beside triorelay."""
    plan = _plan("--quick", "--no-redis", "--history")
    assert plan.history_pair_rates == tuple(sorted({*QUICK.pair_rates, HISTORY_PAIR_RATE}))
    sides = _sides(plan)
    assert sides[BOUND_KEY] == (MEMORY, NOHISTORY)
    for rate in QUICK.pair_rates:
        assert sides[pair_key(SIDE_TABLE_VARIANT, rate)] == (MEMORY, NOHISTORY, BASELINE)
    assert [key for key, on in sides.items() if NOHISTORY in on] == [
        pair_key(SIDE_TABLE_VARIANT, rate) for rate in plan.history_pair_rates
    ]
    assert history_table_for(plan) is HISTORY_TABLE


def test_history_and_tokens_each_run_right_after_triorelay() -> None:
    """Both flags: triorelay, then the tokens side, then the no-history side, then the rest."""
    sides = _sides(_plan("--quick", "--no-redis", "--history", "--tokens"))
    assert sides[BOUND_KEY] == (MEMORY, TOKENS, NOHISTORY)
    assert sides[pair_key(SIDE_TABLE_VARIANT, QUICK.pair_rates[0])] == (
        MEMORY,
        TOKENS,
        NOHISTORY,
        BASELINE,
    )


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
    other = notes[(pair_key(SIDE_TABLE_VARIANT, FULL.pair_rates[0]), "server_cpu_us_per_msg")]
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
        "T\n",
        "",
        "R\n",
        plan=plan,
        pins=None,
        redis=RedisSource(),
        wall_s=1,
        history_md=history_section(plan, rows),
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


def test_history_adds_a_resume_job_on_memory_and_the_redis_sides() -> None:
    """--history: one resume job, last, on triorelay and each Redis side that runs, with the
    default history and 1,000 missed messages; --resume-repeats sets its repeats."""
    plan = _plan("--history")
    job = build_jobs(plan)[-1]
    assert (job.key, job.scenario) == (RESUME_KEY, "resume")
    assert job.sides == plan.resume_sides == (MEMORY, REDIS, REDIS_2RELAYS)
    assert job.argv_for(REDIS_2RELAYS) == [
        "resume", "--missed", str(RESUME_MISSED), "--repeats", str(FULL.resume_repeats),
        "--warmup", "1", "--no-progress",
    ]  # fmt: skip
    assert job.triorelay_env == {}  # triorelay's default history
    assert _sides(_plan("--history", "--no-redis"))[RESUME_KEY] == (MEMORY,)
    quick = [j for j in build_jobs(_plan("--quick", "--history")) if j.key == RESUME_KEY]
    assert quick[0].argv[3] == str(QUICK.resume_repeats)
    assert QUICK.resume_repeats < FULL.resume_repeats
    assert _plan("--history", "--resume-repeats", "3").resume_repeats == 3
    assert RESUME_KEY in _sides(_plan("--history", "--scenarios", "slow"))


def _resume_result(p50: float, top: float, *, flagged: bool) -> dict[str, Any]:
    return {
        "scenario": "resume",
        "summary": {
            "counts": {"delivered": 2000},
            "latency_ms": {"p50": p50, "p99": top, "max": top},
            "delivered_ratio": 1.0,
            "generator": {"cpu_percent_by_process": [99.0], "generator_bound": flagged},
        },
        "extra": {"resume_ms": {"count": 2, "p50": p50, "p99": top, "max": top}},
    }


def test_a_resume_run_gives_its_times_and_is_never_generator_bound() -> None:
    """The metrics are the samples' p50/p99/max; a busy generator does not drop the run."""
    result = _resume_result(8.0, 12.0, flagged=True)
    metrics = extract_metrics(result, server_cpu_s=0.5)
    assert (metrics["resume_p50_ms"], metrics["resume_p99_ms"], metrics["resume_max_ms"]) == (
        8.0,
        12.0,
        12.0,
    )
    assert metrics["delivered_ratio"] == 1.0
    assert not is_generator_bound(result, generator_cores=1)


def _resume_runs(times: dict[str, list[tuple[float, float]]]) -> list[Run]:
    return [
        Run(RESUME_KEY, side, i, {"resume_p50_ms": p50, "resume_max_ms": top}, False, 90.0)
        for side, values in times.items()
        for i, (p50, top) in enumerate(values)
    ]


def test_resume_table_is_one_line_of_p50_and_max_per_side_against_the_bound() -> None:
    """Medians over repeats of each run's p50 and max, one line; the headline judges each
    side's max against 100 ms."""
    plan = _plan("--history", "--redis-sides", REDIS)
    table = resume_table_for(plan)
    assert table is not None
    assert table.sides == (MEMORY, REDIS)
    jobs = table_jobs(build_jobs(plan), table)
    runs = _resume_runs({MEMORY: [(8.0, 12.0), (9.0, 14.0), (7.0, 30.0)], REDIS: [(60.0, 140.0)]})
    rows = aggregate(runs, resume_job_metrics(jobs), resume_notes(jobs), table)
    lines = render_resume_table(rows, table).splitlines()
    assert lines[0] == "| scenario | metric | triorelay | triorelay+redis | note |"
    assert lines[2].startswith(f"| resume | {RESUME_LABEL} | 8.0 / 14.0 | 60.0 / 140.0 | bound")
    assert "max < 100 ms; 20 resumes per run" in lines[2]
    assert RESUME_LABEL == (
        "resume 1,000 missed messages: handshake → last replayed, p50 / max (ms)"
    )
    headline = resume_headline(rows, table)
    assert "`triorelay` **8.0 / 14.0 ms** (within)" in headline
    assert "`triorelay+redis` **60.0 / 140.0 ms** (**over**)" in headline
    assert headline.endswith(f"bound max < {RESUME_BOUND_MS:g} ms")
    assert "`triorelay+redis` not measured" in resume_headline(rows[:1], table)


def test_the_history_section_has_the_resume_headline_method_and_table() -> None:
    """With resume rows the section names how the resume is timed; with neither kind of row
    there is no section."""
    plan = _plan("--history", "--no-redis")
    table = resume_table_for(plan)
    assert table is not None
    jobs = table_jobs(build_jobs(plan), table)
    rows = aggregate(_resume_runs({MEMORY: [(8.0, 12.0)]}), resume_job_metrics(jobs), table=table)
    cpu = aggregate(
        _cpu_runs([10.2], [10.0]), [(BOUND_KEY, ["server_cpu_us_per_msg"])], table=HISTORY_TABLE
    )
    section = history_section(plan, cpu, rows, table)
    bullets = [line for line in section.splitlines() if line.startswith("- ")]
    assert bullets[0].startswith("- server CPU per delivered message, history/no history")
    assert bullets[1].startswith("- resume 1,000 missed messages, handshake → last replayed")
    assert "`triorelay.v1` with `?since=` is timed from its TCP connect" in section
    assert f"--missed {RESUME_MISSED} --repeats {FULL.resume_repeats} --warmup 1`" in section
    assert section.index(RESUME_LABEL) > section.index("| history/no history |")
    assert history_section(plan, [], [], table) == ""
