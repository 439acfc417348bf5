"""What ``compare`` measures: the plans, which jobs run on which sides, their order, ladders."""

from __future__ import annotations

import pytest

from loadtest.cli import build_parser, main
from loadtest.compare.aggregate import BASELINE_TABLE, REDIS_TABLE
from loadtest.compare.plan import (
    EXTRAS,
    FULL,
    QUICK,
    Job,
    alternation,
    build_jobs,
    build_plan,
    redis_table_for,
    table_jobs,
)
from loadtest.compare.sides import (
    ALL_SIDES,
    BASELINE,
    DEFAULT_SIDES,
    MEMORY,
    OPT_IN_SIDES,
    REDIS,
    REDIS_2RELAYS,
    REDIS_SIDES,
    SIDES,
)


def _sides(plan_args: list[str]) -> dict[str, tuple[str, ...]]:
    plan = build_plan(build_parser().parse_args(["compare", *plan_args]))
    return {job.key: job.sides for job in build_jobs(plan)}


def test_sides_are_triorelay_then_asyncio() -> None:
    """Ratios are triorelay over asyncio, so triorelay is the first side."""
    assert SIDES == ("triorelay", "asyncio")


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


def test_alternation_runs_each_job_on_its_own_sides() -> None:
    """The opt-in sides (tokens, no history, no tracing) run right after triorelay; Redis
    sides after the baseline."""
    jobs = [Job("p", "pair", (), sides=ALL_SIDES), Job("s", "slow", ())]
    order = [(s.job.key, s.side) for s in alternation(jobs, 1)]
    assert order == [
        ("p", "triorelay"),
        ("p", "triorelay+tokens"),
        ("p", "triorelay-nohistory"),
        ("p", "triorelay-notracing"),
        ("p", "asyncio"),
        ("p", "triorelay+redis"),
        ("p", "triorelay+redis-2relays"),
        ("s", "triorelay"),
        ("s", "asyncio"),
    ]


def test_job_argv_adds_the_side_specific_flags() -> None:
    """The baseline side gets its own flags after the shared ones."""
    job = Job("s", "slow", ("--rate", "10"), side_argv={"asyncio": ("--delivery", "competing")})
    assert job.argv_for("triorelay") == ["slow", "--rate", "10"]
    assert job.argv_for("asyncio") == ["slow", "--rate", "10", "--delivery", "competing"]


def test_table_jobs_keeps_jobs_run_on_every_side_of_the_table() -> None:
    """A job enters the Redis table only if it ran on memory and the Redis sides."""
    jobs = [Job("a", "pair", (), sides=ALL_SIDES), Job("b", "slow", ())]
    jobs.append(Job("c", "pair", (), sides=(MEMORY, *REDIS_SIDES)))
    assert [j.key for j in table_jobs(jobs, REDIS_TABLE)] == ["a", "c"]
    assert [j.key for j in table_jobs(jobs, BASELINE_TABLE)] == ["a", "b"]


def test_quick_plan_is_smaller_than_the_full_one() -> None:
    """--quick: one repeat, fewer rates, smaller fan-out, shorter runs; overrides still apply."""
    args = build_parser().parse_args(["compare", "--quick", "--pair-rates", "100,300"])
    plan = build_plan(args)
    assert plan.repeats == 1 == QUICK.repeats < FULL.repeats
    assert plan.pair_rates == (100, 300)
    assert max(c for c, _ in QUICK.fanouts) < max(c for c, _ in FULL.fanouts)
    assert QUICK.duration_s < FULL.duration_s
    keys = [job.key for job in build_jobs(FULL)]
    assert keys == [
        "pair@500", "pair@1000", "pair@2000", "pair@5000", "pair@10000", "max", "fanout 1→100",
        "fanout 1→1000", "slow", "connections",
    ]  # fmt: skip


def test_unknown_scenario_is_refused() -> None:
    """A typo in --scenarios is an error (2), not a silently empty comparison."""
    assert main(["compare", "--scenarios", "pair,nope"]) == 2


def test_full_plan_runs_redis_sides_on_pair_max_and_one_fanout() -> None:
    """Redis-only rates skip the baseline; slow, connections and the big fan-out skip Redis."""
    sides = _sides([])
    assert sides["pair@500"] == (MEMORY, REDIS, REDIS_2RELAYS)
    assert sides["pair@2000"] == DEFAULT_SIDES
    assert sides["pair@10000"] == (MEMORY, BASELINE)
    assert sides["max"] == DEFAULT_SIDES
    assert sides["fanout 1→100"] == DEFAULT_SIDES
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
        "fanout 1→10": DEFAULT_SIDES,
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


def test_redis_fanout_must_be_one_of_the_fanouts() -> None:
    """A --redis-fanout outside --fanout is refused; without one, the first fan-out runs."""
    parse = build_parser().parse_args
    with pytest.raises(ValueError, match="--redis-fanout 50x10 is not one of the fan-outs"):
        build_plan(parse(["compare", "--fanout", "100x100", "--redis-fanout", "50x10"]))
    assert build_plan(parse(["compare", "--fanout", "20x50,30x5"])).redis_fanouts == ((20, 50),)
    assert build_plan(parse(["compare"])).redis_fanouts == ((100, 100),)


def test_every_opt_in_side_has_its_extra_in_run_order() -> None:
    """EXTRAS follows OPT_IN_SIDES; each one's flag is a Plan field, off by default."""
    assert tuple(EXTRAS) == OPT_IN_SIDES
    for side, extra in EXTRAS.items():
        assert extra.side == side
        assert getattr(FULL, extra.flag) is False
        assert extra.key == f"pair@{extra.rate}"
        assert extra.table.sides == (MEMORY, side)
