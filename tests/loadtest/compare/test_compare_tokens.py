"""The tokens side: where it runs, the relay limits a job raises, the tokens table and its
bound, and the token kept out of everything ``compare`` writes or raises."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.cli import build_parser
from loadtest.compare.aggregate import TOKENS_TABLE, Row, Run, aggregate
from loadtest.compare.deployments import RedisSource, describe_side
from loadtest.compare.plan import (
    EXTRAS,
    FULL,
    PUBLISH_RATE_HEADROOM,
    QUICK,
    SIDE_TABLE_VARIANT,
    TOKENS_CPU_BOUND,
    TOKENS_PAIR_RATE,
    TRAFFIC_BUFFER_MESSAGES,
    Plan,
    build_jobs,
    build_plan,
    limits_env,
    pair_key,
    table_jobs,
    tokens_table_for,
)
from loadtest.compare.processes import run_generator
from loadtest.compare.relay import TOKEN_GRANT, default, env_name, mint_token, new_hmac_secret
from loadtest.compare.report import (
    extra_headline,
    extra_job_metrics,
    render_report,
    render_table,
    tokens_notes,
)
from loadtest.compare.sides import BASELINE, MEMORY, TOKENS
from loadtest.tokens import QUERY_PARAMETER
from triorelay.auth.grants import Grant
from triorelay.settings import Settings

pytestmark = pytest.mark.timeout(30)


def tokens_headline(rows: list[Row]) -> str:
    return extra_headline(rows, EXTRAS[TOKENS])


def _plan(*argv: str) -> Plan:
    return build_plan(build_parser().parse_args(["compare", *argv]))


def _sides(plan: Plan) -> dict[str, tuple[str, ...]]:
    return {job.key: job.sides for job in build_jobs(plan)}


def test_without_tokens_no_job_runs_on_the_tokens_side() -> None:
    """The default comparison (full and quick) is unchanged: no tokens side, no tokens table."""
    for plan in (FULL, QUICK, _plan()):
        assert not any(TOKENS in sides for sides in _sides(plan).values())
        assert tokens_table_for(plan) is None
        assert plan.tokens_pair_rates == ()


def test_tokens_run_on_pair_at_the_pair_rates_and_the_bound_rate() -> None:
    """--tokens --quick: pair at 2000 and 10000 on three sides, 5000 added beside triorelay."""
    plan = _plan("--quick", "--no-redis", "--tokens")
    assert plan.tokens_pair_rates == tuple(sorted({*QUICK.pair_rates, TOKENS_PAIR_RATE}))
    sides = _sides(plan)
    assert sides[pair_key(SIDE_TABLE_VARIANT, TOKENS_PAIR_RATE)] == (MEMORY, TOKENS)
    for rate in QUICK.pair_rates:
        assert sides[pair_key(SIDE_TABLE_VARIANT, rate)] == (MEMORY, TOKENS, BASELINE)
    assert [key for key, on in sides.items() if TOKENS in on] == [
        pair_key(SIDE_TABLE_VARIANT, rate) for rate in plan.tokens_pair_rates
    ]
    assert tokens_table_for(plan) is TOKENS_TABLE


def test_tokens_need_the_pair_scenario() -> None:
    """--tokens with --scenarios slow: nothing to run it on, so no tokens table."""
    assert _plan("--tokens", "--scenarios", "slow").tokens_pair_rates == ()


def test_the_tokens_side_does_the_same_work_per_message() -> None:
    """Same argv (echo acks) and relay environment as triorelay; only the key differs."""
    (job,) = [
        j
        for j in build_jobs(_plan("--tokens"))
        if j.key == pair_key(SIDE_TABLE_VARIANT, TOKENS_PAIR_RATE)
    ]
    assert job.argv_for(TOKENS) == job.argv_for(MEMORY)
    assert job.argv_for(TOKENS)[-2:] == ["--ack", "echo"]
    assert job.triorelay_env == {env_name("consumer_buffer_messages"): str(TRAFFIC_BUFFER_MESSAGES)}


def test_the_default_plans_fit_the_relay_limits() -> None:
    """FULL's rates and connections need no raised limit: every relay runs on the defaults."""
    for plan in (FULL, QUICK):
        for job in build_jobs(plan):
            assert (
                limits_env(producer_rate_per_s=job.producer_rate_per_s, connections=job.connections)
                == {}
            )
    (connections,) = [j for j in build_jobs(FULL) if j.scenario == "connections"]
    assert connections.connections == FULL.connections + 1  # the probe


def test_more_connections_than_a_client_may_hold_raise_the_limit() -> None:
    """--connections past max_connections_per_client: that job's relays allow them all."""
    per_client = default("max_connections_per_client")
    plan = _plan("--scenarios", "connections,fanout", "--connections", str(per_client))
    (connections,) = [j for j in build_jobs(plan) if j.scenario == "connections"]
    assert connections.triorelay_env == {
        env_name("max_connections_per_client"): str(per_client + 1)
    }
    total = default("max_connections")
    plan = _plan("--scenarios", "fanout", "--fanout", f"{total}x1", "--no-redis")
    (fanout,) = build_jobs(plan)
    assert fanout.triorelay_env[env_name("max_connections")] == str(total + 1)
    assert fanout.triorelay_env[env_name("max_connections_per_client")] == str(total + 1)


def test_a_ladder_near_the_publish_rate_limit_raises_it() -> None:
    """A max step above 1/headroom of the publish limit: the limit becomes headroom x the step."""
    limit = default("publish_rate_messages_per_second")
    top = int(limit / PUBLISH_RATE_HEADROOM) + 1
    plan = _plan(
        "--scenarios", "max", "--max-steps", f"1000,{top}", "--max-variants", "unbatched:1",
        "--no-redis",
    )  # fmt: skip
    (job,) = build_jobs(plan)
    assert job.producer_rate_per_s == top
    raised = job.triorelay_env[env_name("publish_rate_messages_per_second")]
    assert float(raised) == top * PUBLISH_RATE_HEADROOM


def test_the_report_names_the_limits_and_where_they_were_raised() -> None:
    """The settings line names each limit's variable, value and the plan's peak needs."""
    md = render_report("T\n", "", "R\n", plan=QUICK, pins=None, redis=RedisSource(), wall_s=1)
    rate = default("publish_rate_messages_per_second")
    assert f"`{env_name('publish_rate_messages_per_second')}`) {rate} msg/s (the default)" in md
    assert f"most planned at once {QUICK.connections + 1}" in md
    top = max(QUICK.max_steps)
    assert f"highest planned per producer {top:g} msg/s" in md
    raised = _plan("--quick", "--connections", str(default("max_connections_per_client")))
    md = render_report("T\n", "", "R\n", plan=raised, pins=None, redis=RedisSource(), wall_s=1)
    assert f"{default('max_connections_per_client') + 1} in connections" in md


def _cpu_runs(memory: list[float], tokens: list[float]) -> list[Run]:
    key = pair_key(SIDE_TABLE_VARIANT, TOKENS_PAIR_RATE)
    return [
        Run(key, side, i, {"server_cpu_us_per_msg": v}, False, 30.0)
        for side, values in ((MEMORY, memory), (TOKENS, tokens))
        for i, v in enumerate(values)
    ]


def test_tokens_table_gives_the_cpu_ratio_and_the_headline_judges_it() -> None:
    """Medians per side, tokens/no tokens as a ratio; the headline compares it to the bound."""
    jobs = table_jobs(build_jobs(_plan("--tokens", "--no-redis")), TOKENS_TABLE)
    metrics = extra_job_metrics(jobs)
    assert [key for key, _ in metrics] == [job.key for job in jobs]
    within = aggregate(_cpu_runs([10.0, 12.0], [10.2, 11.0]), metrics[1:2], table=TOKENS_TABLE)
    cpu = next(r for r in within if r.metric == "server_cpu_us_per_msg")
    assert cpu.ratios == {"tokens/no tokens": pytest.approx(10.6 / 11.0)}
    assert "within the bound" in tokens_headline(within)
    assert f"< {TOKENS_CPU_BOUND:.2f}x" in tokens_headline(within)
    over = aggregate(_cpu_runs([10.0], [11.0]), metrics[1:2], table=TOKENS_TABLE)
    assert "**1.10x**, **over** the bound" in tokens_headline(over)
    assert "not measured" in tokens_headline([])
    header = render_table(within, TOKENS_TABLE).splitlines()[0]
    assert header == (
        "| scenario | metric | triorelay | triorelay+tokens | tokens/no tokens | note |"
    )


def test_the_bound_note_sits_on_the_bound_rate_only() -> None:
    """Every pair row says verification is per connection; only 5000 msg/s names the bound."""
    jobs = table_jobs(build_jobs(_plan("--tokens")), TOKENS_TABLE)
    notes = tokens_notes(jobs)
    bound = notes[(pair_key(SIDE_TABLE_VARIANT, TOKENS_PAIR_RATE), "server_cpu_us_per_msg")]
    assert "verified once per connection" in bound
    assert "verification < 5 % more server CPU per message" in bound
    other = notes[(pair_key(SIDE_TABLE_VARIANT, FULL.pair_rates[0]), "server_cpu_us_per_msg")]
    assert "bound" not in other


def test_report_has_a_tokens_section_only_when_the_side_ran() -> None:
    """The section names the side's set-up and rates; without tokens rows it is absent."""
    plan = _plan("--quick", "--tokens")
    rows = aggregate(
        _cpu_runs([10.0], [10.1]),
        [(pair_key(SIDE_TABLE_VARIANT, TOKENS_PAIR_RATE), ["server_cpu_us_per_msg"])],
        table=TOKENS_TABLE,
    )
    md = render_report(
        "T\n", "", "R\n", plan=plan, pins=None, redis=RedisSource(), wall_s=1, tokens_rows=rows
    )
    section = md.split(f"## {TOKENS_TABLE.title}\n\n", 1)[1]
    assert section.startswith("- server CPU per delivered message, tokens/no tokens, at 5000")
    assert env_name("auth_hmac_secret") in section
    assert "(triorelay, triorelay+tokens, asyncio," in md
    plain = render_report("T\n", "", "R\n", plan=QUICK, pins=None, redis=RedisSource(), wall_s=1)
    assert TOKENS_TABLE.title not in plain
    assert TOKENS not in plain


def test_the_minted_token_grants_every_channel_right_and_the_secret_is_accepted() -> None:
    """A fresh secret passes the relay's own size check; the grant allows publish and subscribe
    anywhere; the generator's query parameter is the relay's default."""
    secret = new_hmac_secret()
    assert Settings(auth_hmac_secret=secret).auth_enabled
    assert new_hmac_secret() != secret
    grant = Grant.parse(dict(TOKEN_GRANT))
    assert grant.allows_channel("publish", "default")
    assert grant.allows_channel("subscribe", "any.thing")
    assert mint_token(secret, ttl_seconds=60).count(".") == 2
    assert default("auth_query_parameter") == QUERY_PARAMETER
    assert "Bearer" in describe_side(TOKENS)


def test_a_generator_timeout_does_not_repeat_its_command_line(tmp_path: Path) -> None:
    """A generator that outlives its timeout is reported without its argv (it holds --token)."""
    argv = ["pair", "--url", "ws://127.0.0.1:9", "--token", "not.a.secret", "--no-progress"]
    with pytest.raises(RuntimeError, match="timed out") as raised:
        run_generator(argv, tmp_path / "r.json", tmp_path / "g.log", cpus=None, timeout_s=0.01)
    assert "not.a.secret" not in str(raised.value)
