"""What ``compare`` measures: the plans, which jobs run on which sides, their order, ladders."""

from __future__ import annotations

from dataclasses import replace

import pytest

from loadtest.cli import build_parser, main
from loadtest.compare.aggregate import BASELINE_TABLE, REDIS_TABLE
from loadtest.compare.plan import (
    BATCHED_1,
    EXTRAS,
    FULL,
    QUICK,
    UNBATCHED_1,
    Job,
    Variant,
    alternation,
    build_jobs,
    build_plan,
    consumer_procs,
    parse_pair_key,
    producer_procs,
    redis_table_for,
    table_jobs,
)
from loadtest.compare.relay import effective
from loadtest.compare.sides import (
    ALL_SIDES,
    BASELINE,
    BROADCAST,
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
    sides after the asyncio ones."""
    jobs = [Job("p", "pair", (), sides=ALL_SIDES), Job("s", "slow", ())]
    order = [(s.job.key, s.side) for s in alternation(jobs, 1)]
    assert order == [
        ("p", "triorelay"),
        ("p", "triorelay+tokens"),
        ("p", "triorelay-nohistory"),
        ("p", "triorelay-notracing"),
        ("p", "triorelay-idle"),
        ("p", "asyncio"),
        ("p", "asyncio-broadcast"),
        ("p", "triorelay+redis"),
        ("p", "triorelay+redis-2relays"),
        ("p", "triorelay+redis-idle"),
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
    assert QUICK.max_variants == (UNBATCHED_1,)
    keys = [job.key for job in build_jobs(FULL)]
    assert keys == [
        "pair@2000 unbatched 1→1", "pair@5000 unbatched 1→1", "pair@10000 unbatched 1→1",
        "pair@2000 unbatched 100→1", "pair@5000 unbatched 100→1", "pair@10000 unbatched 100→1",
        "pair@500 batched 1→1", "pair@1000 batched 1→1", "pair@2000 batched 1→1",
        "pair@5000 batched 1→1", "pair@10000 batched 1→1", "roundtrip 1→1",
        "max unbatched 1→1", "max batched 1→1",
        "fanout 1→100", "fanout 1→1000", "slow", "connections",
    ]  # fmt: skip


def test_pair_runs_every_variant_at_every_rate_headline_first() -> None:
    """Each row says how its producers wrote; unbatched 1→1 leads whatever the order given."""
    parse = build_parser().parse_args
    plan = build_plan(
        parse(["compare", "--pair-variants", "batched:1,unbatched:1", "--pair-rates", "7"])
    )
    assert plan.pair_variants == (BATCHED_1, UNBATCHED_1)
    pairs = [job for job in build_jobs(plan) if job.scenario == "pair" and BASELINE in job.sides]
    assert [job.key for job in pairs] == ["pair@7 unbatched 1→1", "pair@7 batched 1→1"]
    assert [job.variant for job in pairs] == [UNBATCHED_1, BATCHED_1]
    assert [parse_pair_key(job.key) for job in pairs] == [
        (7, "unbatched 1→1"), (7, "batched 1→1"),
    ]  # fmt: skip
    assert parse_pair_key("max unbatched 1→1") is None


def test_each_variant_sets_the_sender_and_shares_the_rate() -> None:
    """100 producers share the rate (rate/100 each, 101 connections); the sender is the
    variant's, producers in a worker process, the consumer in the main one."""
    jobs = {job.key: job for job in build_jobs(FULL)}
    many = jobs["pair@10000 unbatched 100→1"]
    args = build_parser().parse_args(["pair", "--url", "ws://x", *many.argv_for(MEMORY)[1:]])
    assert (args.sender, args.producers, args.consumers, args.rate) == ("unbatched", 100, 1, 1e4)
    assert (args.producer_procs, args.consumer_procs) == (1, 0)
    assert many.producer_rate_per_s == 100
    assert many.connections == 101
    one = jobs["pair@10000 batched 1→1"]
    args = build_parser().parse_args(["pair", "--url", "ws://x", *one.argv_for(BASELINE)[1:]])
    assert (args.sender, args.producers) == ("batched", 1)
    (top,) = [j for j in build_jobs(FULL) if j.key == "max unbatched 1→1"]
    args = build_parser().parse_args(["max", "--url", "ws://x", *top.argv_for(BASELINE)[1:]])
    assert args.sender == "unbatched"


def test_more_generator_cpus_give_producers_and_fan_out_consumers_more_processes() -> None:
    """One CPU: one producer process, fan-out consumers in the main one; four: up to three
    producer processes (never more than producers), three for a fan-out's consumers."""
    assert [producer_procs(p, 1) for p in (1, 100)] == [1, 1]
    assert [producer_procs(p, 4) for p in (1, 2, 100)] == [1, 2, 3]
    assert [consumer_procs(c) for c in (1, 2, 4)] == [0, 1, 3]
    plan = replace(FULL, generator_cores=4)
    jobs = {job.key: job for job in build_jobs(plan)}
    parse = build_parser().parse_args
    many = parse(["pair", "--url", "ws://x", *jobs["pair@2000 unbatched 100→1"].argv[0:]])
    assert many.producer_procs == 3
    fanout = parse(["fanout", "--url", "ws://x", *jobs["fanout 1→1000"].argv])
    assert (fanout.producer_procs, fanout.consumer_procs, fanout.sender) == (1, 3, "unbatched")
    assert fanout.consumer_client == "polled"  # one reader per process: the cheapest
    assert many.consumer_client == "lean"


def test_a_bad_variant_is_refused() -> None:
    """A variant is SENDER:PRODUCERS with a known sender and at least one producer."""
    parse = build_parser().parse_args
    for bad in ("nope:1", "unbatched", "unbatched:0", "batched:x"):
        with pytest.raises(ValueError, match="is not SENDER:PRODUCERS"):
            build_plan(parse(["compare", "--pair-variants", bad]))
    assert Variant.parse(" trio-websocket:3 ") == Variant("trio-websocket", 3)


def test_unknown_scenario_is_refused() -> None:
    """A typo in --scenarios is an error (2), not a silently empty comparison."""
    assert main(["compare", "--scenarios", "pair,nope"]) == 2


def test_full_plan_runs_redis_sides_on_pair_max_and_one_fanout() -> None:
    """The batched 1→1 variant carries the Redis sides (its Redis-only rates skip the
    baseline); fan-outs run against the broadcast loop; slow, connections and the big fan-out
    skip Redis."""
    sides = _sides([])
    batched = (MEMORY, BASELINE, REDIS, REDIS_2RELAYS)
    assert sides["pair@500 batched 1→1"] == (MEMORY, REDIS, REDIS_2RELAYS)
    assert sides["pair@2000 batched 1→1"] == batched
    assert sides["pair@10000 batched 1→1"] == (MEMORY, BASELINE)
    assert sides["pair@2000 unbatched 1→1"] == sides["pair@2000 unbatched 100→1"] == SIDES
    assert sides["max batched 1→1"] == batched
    assert sides["max unbatched 1→1"] == SIDES
    assert sides["fanout 1→100"] == (MEMORY, BROADCAST, REDIS, REDIS_2RELAYS)
    assert sides["fanout 1→1000"] == (MEMORY, BROADCAST)
    assert sides["slow"] == sides["connections"] == (MEMORY, BASELINE)


def test_without_redis_no_job_runs_on_redis_and_redis_only_rates_vanish() -> None:
    """--no-redis: every pair and max variant against the baseline, fan-outs against the
    broadcast loop."""
    sides = _sides(["--no-redis"])
    assert len([key for key in sides if key.startswith("pair@")]) == 9
    assert not [key for key in sides if "@500 " in key or "@1000 " in key]
    assert all(
        s == ((MEMORY, BROADCAST) if key.startswith("fanout") else (MEMORY, BASELINE))
        for key, s in sides.items()
    )


def test_side_tables_keep_a_job_of_their_variant_when_it_is_not_planned() -> None:
    """Without batched 1→1 among the variants, the Redis sides still get its jobs (without
    the baseline)."""
    sides = _sides(["--pair-variants", "unbatched:1", "--max-variants", "unbatched:1"])
    assert sides["pair@2000 unbatched 1→1"] == SIDES
    assert sides["pair@2000 batched 1→1"] == (MEMORY, REDIS, REDIS_2RELAYS)
    assert sides["max batched 1→1"] == (MEMORY, REDIS, REDIS_2RELAYS)


def test_quick_plan_runs_short_redis_steps() -> None:
    """--quick adds one 1→1 rate and the small fan-out on Redis, no max (it stays short)."""
    sides = _sides(["--quick"])
    on_redis = {key: s for key, s in sides.items() if REDIS in s or REDIS_2RELAYS in s}
    assert on_redis == {
        "pair@1000 batched 1→1": (MEMORY, REDIS, REDIS_2RELAYS),
        "fanout 1→10": (MEMORY, BROADCAST, REDIS, REDIS_2RELAYS),
    }
    assert QUICK.redis_max_steps == ()


def test_redis_sides_climb_their_own_max_ladder() -> None:
    """The last --steps wins in argparse: the Redis sides' ladder comes after the shared one."""
    (job,) = [j for j in build_jobs(FULL) if j.key == "max batched 1→1"]
    args = build_parser().parse_args(["max", "--url", "ws://x", *job.argv_for(REDIS)[1:]])
    assert args.steps == "250,500,750,1000,1500,2000,3000,5000"
    assert args.max_rate == 5000
    assert args.ack == "echo"
    memory = build_parser().parse_args(["max", "--url", "ws://x", *job.argv_for(MEMORY)[1:]])
    assert memory.steps.startswith("1000,2000")


def test_roundtrip_runs_the_same_command_on_the_relay_and_the_baseline() -> None:
    """One message in flight on both sides alike (its producer asks for the echo itself);
    --roundtrip-rounds sets how many are timed, and the relay lets one producer go that fast."""
    (job,) = [j for j in build_jobs(FULL) if j.scenario == "roundtrip"]
    assert job.sides == SIDES
    argv = ["roundtrip", "--rounds", "5000", "--warmup", "200", "--no-progress"]
    assert job.argv_for(MEMORY) == job.argv_for(BASELINE) == argv
    assert float(effective("publish_rate_messages_per_second", job.triorelay_env)) >= 20_000
    plan = build_plan(build_parser().parse_args(["compare", "--roundtrip-rounds", "300"]))
    (job,) = [j for j in build_jobs(plan) if j.scenario == "roundtrip"]
    assert job.argv[:2] == ("--rounds", "300")
    assert QUICK.roundtrip_rounds < FULL.roundtrip_rounds


def test_connections_are_held_by_the_lean_client_on_both_sides() -> None:
    """The cheap handshake, so that the server, not the generator, limits the connect rate."""
    (job,) = [j for j in build_jobs(FULL) if j.scenario == "connections"]
    assert job.sides == SIDES
    assert job.argv_for(MEMORY) == job.argv_for(BASELINE)
    assert job.argv[-4:] == ("--role", "producer", "--client", "lean")


def test_every_triorelay_side_echoes_and_gets_the_deep_buffer() -> None:
    """Redis sides do the same work per message as the in-memory relay."""
    (job,) = [j for j in build_jobs(FULL) if j.key == "pair@1000 batched 1→1"]
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
        assert extra.key == f"pair@{extra.rate} batched 1→1"
        assert extra.table.sides == (MEMORY, side)


def test_idle_side_holds_idle_channels_and_runs_the_redis_variants() -> None:
    """With the idle side, the Redis pair jobs of every Redis variant run on it and on its
    in-memory control, hold the idle consumers there only, and raise the connection limits."""
    args = ["--scenarios", "pair", "--pair-rates", "2000", "--pair-variants", "batched:1"]
    args += ["--redis-pair-rates", "2000", "--redis-sides", "triorelay+redis,triorelay+redis-idle"]
    args += ["--redis-pair-variants", "unbatched:1,batched:1", "--redis-idle-channels", "6000"]
    plan = build_plan(build_parser().parse_args(["compare", *args]))
    jobs = {job.key: job for job in build_jobs(plan)}
    unbatched, batched = jobs["pair@2000 unbatched 1→1"], jobs["pair@2000 batched 1→1"]
    idle = ("triorelay+redis", "triorelay+redis-idle")
    assert unbatched.sides == ("triorelay", "triorelay-idle", *idle)
    assert batched.sides == ("triorelay", "triorelay-idle", "asyncio", *idle)
    for job in (unbatched, batched):
        assert job.idle_channels == {"triorelay-idle": 6000, "triorelay+redis-idle": 6000}
        assert job.triorelay_env["TRIORELAY_MAX_CONNECTIONS_PER_CLIENT"] == "6002"
        assert job.triorelay_env["TRIORELAY_PING_INTERVAL_SECONDS"] == "3600"
    table = redis_table_for(plan)
    assert table.sides == ("triorelay", "triorelay-idle", *idle)
    labels = [label for label, _, _ in table.ratios]
    assert labels == ["redis/memory", "idle/redis", "memory idle/memory"]
    assert plan.resume_sides == ()
