"""What ``python -m loadtest compare`` measures: the plan, its jobs, and their run order.

I/O-free: :class:`Plan` (``FULL``, ``QUICK``, or either with command-line overrides) becomes the
list of :class:`Job` s to run, each on the sides it makes sense for, and :func:`alternation`
orders them. Vocabulary: a *job* is one scenario configuration (``pair@5000 unbatched 1→1``;
how its producers write and how many share the rate is its :class:`Variant`), run on fresh
servers once per side (see :mod:`loadtest.compare.sides`) and repeat.
:mod:`loadtest.compare.runner` runs them.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from loadtest.compare.aggregate import (
    HISTORY_TABLE,
    MEMORY_IDLE_RATIO,
    REDIS_IDLE_RATIO,
    REDIS_TABLE,
    RESUME_TABLE,
    TOKENS_TABLE,
    TRACING_TABLE,
    Table,
)
from loadtest.compare.relay import default, relay_env
from loadtest.compare.sides import (
    ALL_SIDES,
    BASELINE,
    BROADCAST,
    DEFAULT_REDIS_SIDES,
    IDLE_SIDES,
    MEMORY,
    MEMORY_IDLE,
    NOHISTORY,
    NOTRACING,
    OPT_IN_SIDES,
    REDIS_IDLE,
    REDIS_SIDES,
    SIDES,
    TOKENS,
)
from loadtest.engine import SENDERS

#: Per-consumer buffer for triorelay in the traffic scenarios (not ``slow``): deep enough that a
#: scheduling hiccup of the pinned generator does not get a consumer disconnected mid-benchmark.
TRAFFIC_BUFFER_MESSAGES: Final = 4096
#: The 1→1 rate the tokens side always runs at (added to the pair rates when missing): the
#: rate at which verification must cost less than :data:`TOKENS_CPU_BOUND` of server CPU.
TOKENS_PAIR_RATE: Final = 5000
#: The bound on server CPU per message with tokens over without (1.05: verification costs less
#: than 5 % of server CPU per message at :data:`TOKENS_PAIR_RATE`).
TOKENS_CPU_BOUND: Final = 1.05
#: The 1→1 rate the no-history side always runs at (added to the pair rates when missing):
#: the rate at which history must cost at most :data:`HISTORY_CPU_BOUND` of server CPU.
HISTORY_PAIR_RATE: Final = 5000
#: The bound on server CPU per message with history over without (1.10: history costs at most
#: 10 % more server CPU per message at :data:`HISTORY_PAIR_RATE`, memory broker).
HISTORY_CPU_BOUND: Final = 1.10
#: The 1→1 rate the no-tracing side always runs at (added to the pair rates when missing):
#: the rate at which stage timing must cost at most :data:`TRACING_CPU_BOUND` of server CPU.
TRACING_PAIR_RATE: Final = 5000
#: The bound on server CPU per message with stage timing over without (1.05: metrics and
#: stage timing cost at most 5 % more server CPU per message at :data:`TRACING_PAIR_RATE`).
TRACING_CPU_BOUND: Final = 1.05
#: The ``resume`` job (with ``--history``): each resume replays this many missed messages...
RESUME_MISSED: Final = 1000
#: ... and must take less than this, from the handshake to the last replayed message.
RESUME_BOUND_MS: Final = 100.0
#: Resumes each run of it does first without timing them: its relay is fresh, and the first
#: resume pays one-time costs (a Redis relay's first reads) that a serving relay has paid.
RESUME_WARMUP: Final = 1
#: The key of the ``resume`` job.
RESUME_KEY: Final = "resume"
#: The key of the ``roundtrip`` job (one message in flight, producer to consumer).
ROUNDTRIP_KEY: Final = "roundtrip 1→1"
#: Rounds each run of it does first without timing them (connections and caches warm).
ROUNDTRIP_WARMUP: Final = 200
#: The most that job's producer can offer per second (one over the shortest round trip,
#: 50 µs): what its relays' publish rate limit must allow (:func:`limits_env`).
ROUNDTRIP_MAX_RATE: Final = 20_000
#: The WebSocket ping interval of every relay of a job with idle sides (longer than a run).
IDLE_PING_INTERVAL_SECONDS: Final = 3600
#: A job whose producer offers more than 1/this of the relay's default publish rate limit gets
#: the limit raised to this many times its rate: room for the burst of a generator catching up
#: after a scheduling hiccup, without the relay closing the producer with 1008.
PUBLISH_RATE_HEADROOM: Final = 2


@dataclass(frozen=True)
class Variant:
    """How the producers of a ``pair`` or ``max`` job write (a ``--sender``), and how many of
    them share its rate; one consumer gets every message."""

    sender: str
    producers: int

    @property
    def label(self) -> str:
        """``unbatched 1→1``, ``batched 1→1``, ``unbatched 100→1``: what every row shows."""
        return f"{self.sender} {self.producers}→1"

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``unbatched:100`` → ``Variant("unbatched", 100)``; ``ValueError`` when it is not a
        sender and a positive count."""
        sender, _, producers = text.strip().partition(":")
        if sender not in SENDERS or not producers.isdigit() or int(producers) < 1:
            raise ValueError(
                f"{text.strip()!r} is not SENDER:PRODUCERS (senders: {', '.join(SENDERS)})"
            )
        return cls(sender, int(producers))


#: One producer writing one message per write: what most real producers do, the headline.
UNBATCHED_1: Final = Variant("unbatched", 1)
#: A hundred producers sharing the rate, each writing one message per write.
UNBATCHED_100: Final = Variant("unbatched", 100)
#: One producer writing every message due in a 1 ms tick in one write (the lean sender).
BATCHED_1: Final = Variant("batched", 1)
#: The variant every summary and table leads with.
HEADLINE: Final = UNBATCHED_1
#: The variant the tokens, history and Redis tables measure: the one their bounds were set on
#: (the only one ``compare`` ran before unbatched senders).
SIDE_TABLE_VARIANT: Final = BATCHED_1


def pair_key(variant: Variant, rate: int) -> str:
    """The key of the ``pair`` job of ``variant`` at ``rate``: ``pair@2000 unbatched 1→1``."""
    return f"pair@{rate} {variant.label}"


def max_key(variant: Variant) -> str:
    """The key of the ``max`` job of ``variant``: ``max unbatched 1→1``."""
    return f"max {variant.label}"


def parse_pair_key(key: str) -> tuple[int, str] | None:
    """``pair@2000 unbatched 1→1`` → ``(2000, "unbatched 1→1")``; ``None`` for another job."""
    if not key.startswith("pair@"):
        return None
    rate, _, label = key.removeprefix("pair@").partition(" ")
    return int(rate), label


def producer_procs(producers: int, generator_cores: int) -> int:
    """Worker processes for ``producers``: one per CPU the generator has beyond the one its
    main process (the consumers) uses, at least one, at most one per producer."""
    return max(1, min(producers, generator_cores - 1))


def consumer_procs(generator_cores: int) -> int:
    """Worker processes for a fan-out's consumers: none on one CPU (they share the main
    process), else one per CPU beyond the producer's."""
    return max(0, generator_cores - 1)


@dataclass(frozen=True)
class Extra:
    """An opt-in side (:data:`~loadtest.compare.sides.OPT_IN_SIDES`): the in-memory relay with
    one thing changed, compared with ``triorelay`` in the same run.

    With its flag (the :class:`Plan` field :attr:`flag`, ``--<flag>``) it runs on ``pair`` at
    the plan's pair rates and at :attr:`rate` (added when missing; a rate only it asks for
    runs on ``triorelay`` beside it), right after ``triorelay`` (after the opt-in sides before
    it in :data:`~loadtest.compare.sides.OPT_IN_SIDES`), with the same generator argv and job
    environment. Its :attr:`table` has one ratio; at :attr:`rate` its server CPU per message
    is judged against :attr:`bound`.
    """

    side: str
    flag: str
    table: Table
    rate: int
    bound: float
    #: Whether the bound itself passes ("at most", ``<=``) or not ("less than", ``<``).
    inclusive: bool
    #: What the ratio's excess is the cost of, for the report ("history").
    cost: str
    #: The relay settings its relay gets beside the job's environment, by name (the tokens
    #: side's secret is fresh per run: :func:`~loadtest.compare.deployments.deploy` makes it).
    settings: Mapping[str, object] = field(default_factory=dict)
    #: What :attr:`settings` do, for the report ("no channel keeps history").
    effect: str = ""

    @property
    def key(self) -> str:
        """The job the bound applies to: ``pair`` at :attr:`rate`, of the variant the opt-in
        tables measure (:data:`SIDE_TABLE_VARIANT`)."""
        return pair_key(SIDE_TABLE_VARIANT, self.rate)

    def within(self, value: float) -> bool:
        """Whether the ratio ``value`` passes :attr:`bound`."""
        return value <= self.bound if self.inclusive else value < self.bound


#: Every opt-in side by name, in run order (:data:`~loadtest.compare.sides.OPT_IN_SIDES`).
EXTRAS: Final[Mapping[str, Extra]] = {
    TOKENS: Extra(
        side=TOKENS,
        flag="tokens",
        table=TOKENS_TABLE,
        rate=TOKENS_PAIR_RATE,
        bound=TOKENS_CPU_BOUND,
        inclusive=False,
        cost="verification",
    ),
    NOHISTORY: Extra(
        side=NOHISTORY,
        flag="history",
        table=HISTORY_TABLE,
        rate=HISTORY_PAIR_RATE,
        bound=HISTORY_CPU_BOUND,
        inclusive=True,
        cost="history",
        settings={"history_messages": 0},
        effect="no channel keeps history",
    ),
    NOTRACING: Extra(
        side=NOTRACING,
        flag="tracing",
        table=TRACING_TABLE,
        rate=TRACING_PAIR_RATE,
        bound=TRACING_CPU_BOUND,
        inclusive=True,
        cost="stage timing",
        settings={"latency_sample_messages": 0},
        effect="no message sampled for the stage-latency histograms",
    ),
}


@dataclass(frozen=True)
class Plan:
    """What to measure: durations, rates and sizes (see :func:`build_plan`)."""

    repeats: int
    duration_s: float
    drain_s: float
    pair_rates: tuple[int, ...]
    max_steps: tuple[int, ...]
    max_step_s: float
    fanouts: tuple[tuple[int, int], ...]  # (consumers, offered msg/s)
    slow_rate: int
    slow_s: float
    connections: int
    scenarios: tuple[str, ...]
    #: The Redis sides to run (none: memory vs baseline only).
    redis_sides: tuple[str, ...] = DEFAULT_REDIS_SIDES
    #: 1→1 rates the Redis sides run at (with the in-memory relay beside them; the baseline
    #: too where the rate is also one of ``pair_rates``).
    redis_pair_rates: tuple[int, ...] = ()
    #: The ``max`` ladder of the Redis sides (they top out far below the memory ladder's steps).
    redis_max_steps: tuple[int, ...] = ()
    #: Fan-outs the Redis sides run (each must also be one of ``fanouts``).
    redis_fanouts: tuple[tuple[int, int], ...] = ()
    #: Whether the tokens side runs (``pair`` only, at :attr:`tokens_pair_rates`).
    tokens: bool = False
    #: Whether the no-history side runs (``pair`` only, at :attr:`history_pair_rates`), and
    #: the ``resume`` job (on :attr:`resume_sides`).
    history: bool = False
    #: Resumes timed in each run of the ``resume`` job (each on a fresh channel).
    resume_repeats: int = 20
    #: Whether the no-tracing side runs (``pair`` only, at :attr:`tracing_pair_rates`).
    tracing: bool = False
    #: Messages timed in each run of ``roundtrip`` (one in flight; after its warm-up).
    roundtrip_rounds: int = 5000

    def extra_pair_rates(self, side: str) -> tuple[int, ...]:
        """The 1→1 rates of the opt-in ``side``: the pair rates and its :attr:`Extra.rate`
        (none when its flag is off or ``pair`` does not run)."""
        extra = EXTRAS[side]
        if not getattr(self, extra.flag) or "pair" not in self.scenarios:
            return ()
        return tuple(sorted({*self.pair_rates, extra.rate}))

    #: How the ``pair`` jobs against the baseline write (each at every pair rate).
    pair_variants: tuple[Variant, ...] = (UNBATCHED_1, UNBATCHED_100, BATCHED_1)
    #: How the ``max`` jobs write (each climbs the ladder against the baseline too).
    max_variants: tuple[Variant, ...] = (UNBATCHED_1, BATCHED_1)
    #: How the ``pair`` jobs of the Redis sides write (each at every Redis pair rate).
    redis_pair_variants: tuple[Variant, ...] = (SIDE_TABLE_VARIANT,)
    #: The idle consumers (each on a channel of its own) the ``triorelay+redis-idle`` side
    #: holds through each of its runs.
    redis_idle_channels: int = 10_000
    #: CPUs the generator may use (the runner sets it from its pinning): how many worker
    #: processes its producers and consumers get (:func:`producer_procs`,
    #: :func:`consumer_procs`).
    generator_cores: int = 1

    @property
    def tokens_pair_rates(self) -> tuple[int, ...]:
        """The 1→1 rates of the tokens side (:meth:`extra_pair_rates`)."""
        return self.extra_pair_rates(TOKENS)

    @property
    def history_pair_rates(self) -> tuple[int, ...]:
        """The 1→1 rates of the no-history side (:meth:`extra_pair_rates`)."""
        return self.extra_pair_rates(NOHISTORY)

    @property
    def tracing_pair_rates(self) -> tuple[int, ...]:
        """The 1→1 rates of the no-tracing side (:meth:`extra_pair_rates`)."""
        return self.extra_pair_rates(NOTRACING)

    @property
    def resume_sides(self) -> tuple[str, ...]:
        """The sides the ``resume`` job runs on: the in-memory relay and the Redis sides that
        run (none without ``history``). Whatever ``scenarios`` says: it is the history's."""
        redis = tuple(side for side in self.redis_sides if side != REDIS_IDLE)
        return (MEMORY, *redis) if self.history else ()


FULL: Final = Plan(
    repeats=3,
    duration_s=5.0,
    drain_s=1.0,
    pair_rates=(2000, 5000, 10000),
    max_steps=(1000, 2000, 3000, 5000, 7500, 10000, 15000, 20000, 30000, 40000),
    max_step_s=3.0,
    fanouts=((100, 100), (1000, 10)),
    slow_rate=2000,
    slow_s=10.0,
    connections=2000,
    scenarios=("pair", "roundtrip", "max", "fanout", "slow", "connections"),
    redis_pair_rates=(500, 1000, 2000),
    redis_max_steps=(250, 500, 750, 1000, 1500, 2000, 3000, 5000),
    redis_fanouts=((100, 100),),
)
QUICK: Final = Plan(
    repeats=1,
    duration_s=2.0,
    drain_s=1.0,
    pair_rates=(2000, 10000),
    max_steps=(1000, 2000, 5000, 10000, 20000),
    max_step_s=1.0,
    fanouts=((10, 100), (100, 100)),
    slow_rate=2000,
    slow_s=3.0,
    connections=300,
    scenarios=FULL.scenarios,
    redis_pair_rates=(1000,),
    redis_max_steps=(),
    redis_fanouts=((10, 100),),
    resume_repeats=5,
    roundtrip_rounds=1000,
    max_variants=(UNBATCHED_1,),
)


@dataclass(frozen=True)
class Job:
    """One scenario configuration, run identically against both sides.

    ``argv`` is the scenario's command line for ``python -m loadtest`` (without ``--url``,
    ``--server-pid`` and ``--json-out``, which the runner adds); ``side_argv`` adds per-side
    flags (``--delivery competing`` for the baseline, where semantics differ by design).
    ``sides`` are the sides this job runs on, in run order. ``producer_rate_per_s`` and
    ``connections`` are the most any run of the job offers per producer and holds at once
    (every generator connection comes from one client, as the relay counts them): what its
    relays' limits must allow (:func:`limits_env`). ``variant`` is how its producers write.
    """

    key: str
    scenario: str
    argv: tuple[str, ...]
    side_argv: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Environment overrides for every triorelay server of this job (memory or Redis).
    triorelay_env: Mapping[str, str] = field(default_factory=dict)
    sides: tuple[str, ...] = SIDES
    producer_rate_per_s: float = 0.0
    connections: int = 0
    #: How a ``pair`` or ``max`` job's producers write (``None``: another scenario).
    variant: Variant | None = None
    #: Idle consumers (one per channel, :mod:`loadtest.idle`) held through a run, by side.
    idle_channels: Mapping[str, int] = field(default_factory=dict)

    def argv_for(self, side: str) -> list[str]:
        """Return the generator's argv for ``side``."""
        return [self.scenario, *self.argv, *self.side_argv.get(side, ())]


@dataclass(frozen=True)
class Step:
    """One entry of the plan: measure ``job`` against ``side`` in repeat ``repeat`` (0-based)."""

    repeat: int
    job: Job
    side: str


def alternation(jobs: Sequence[Job], repeats: int) -> list[Step]:
    """Return the run order: for each repeat, each job, each of its sides in turn (A B A B ...).

    Alternating sides next to each other means slow drift of the machine (thermal, other load)
    hits every side alike instead of biasing whichever ran later.
    """
    return [
        Step(repeat, job, side) for repeat in range(repeats) for job in jobs for side in job.sides
    ]


def limits_env(*, producer_rate_per_s: float, connections: int) -> dict[str, str]:
    """Return the relay settings a job must raise above triorelay's defaults (usually none).

    The publish rate limit (``publish_rate_messages_per_second``, per producer connection)
    when the producer offers more than 1/:data:`PUBLISH_RATE_HEADROOM` of it, and the
    connection limits (``max_connections_per_client``, ``max_connections``) when a run holds
    more connections than they allow: every generator connection comes from one address
    (and, on the tokens side, one ``sub``).
    """
    values: dict[str, object] = {}
    if producer_rate_per_s * PUBLISH_RATE_HEADROOM > default("publish_rate_messages_per_second"):
        values["publish_rate_messages_per_second"] = producer_rate_per_s * PUBLISH_RATE_HEADROOM
    for setting in ("max_connections_per_client", "max_connections"):
        if connections > default(setting):
            values[setting] = connections
    return relay_env(**values)


def lead_with_headline(variants: Sequence[Variant]) -> tuple[Variant, ...]:
    """``variants`` with :data:`HEADLINE` first when it is one of them, else in their order."""
    return tuple(sorted(variants, key=lambda v: v != HEADLINE))


def build_jobs(plan: Plan) -> list[Job]:
    """Return the jobs of ``plan`` in run order.

    ``pair`` runs each of ``plan.pair_variants`` at each pair rate against the baseline (the
    headline variant first, then by variant and rate), and ``max`` each of
    ``plan.max_variants``. ``fanout`` runs against the broadcast loop (``asyncio-broadcast``:
    every consumer gets every message), not the queue baseline. The variant
    :data:`SIDE_TABLE_VARIANT` also carries the other tables: its ``pair`` and ``max`` jobs
    run on the Redis sides of ``plan.redis_sides`` (``max`` with its own ladder), and so do
    the fan-outs of ``plan.redis_fanouts``; rates only the Redis table asks for run on the
    in-memory relay and the Redis sides alone. Each opt-in side whose flag is on
    (:data:`EXTRAS`: ``plan.tokens``, ``plan.history``, ``plan.tracing``) runs its ``pair``
    jobs at its :meth:`Plan.extra_pair_rates` too (a rate only it asks for runs on the
    in-memory relay beside it); with ``plan.history``, a ``resume`` job (last) runs on
    :attr:`Plan.resume_sides`, with triorelay's default history. Producers run in
    :func:`producer_procs` worker processes, a fan-out's consumers in :func:`consumer_procs`;
    each job's relays get :func:`limits_env` for its rates and connections.
    """
    run = ("--drain-seconds", str(plan.drain_s), "--no-progress")
    cores = plan.generator_cores
    extra_rates = {side: set(plan.extra_pair_rates(side)) for side in OPT_IN_SIDES}
    # Every side echoes every message to its producer (the asyncio sides always do; triorelay
    # on ?ack=echo), so they do the same work per message.
    extras = [side for side, rates in extra_rates.items() if rates]
    triorelay_sides = (MEMORY, *extras, *plan.redis_sides)
    echo = {side: ("--ack", "echo") for side in triorelay_sides}
    deep = relay_env(consumer_buffer_messages=TRAFFIC_BUFFER_MESSAGES)
    redis = plan.redis_sides
    idle = plan.redis_idle_channels if REDIS_IDLE in redis else 0

    def writes(variant: Variant) -> tuple[str, ...]:
        # The producers in worker processes, the consumer in the main one.
        procs = producer_procs(variant.producers, cores)
        return (
            "--sender", variant.sender, "--producers", str(variant.producers),
            "--producer-procs", str(procs),
        )  # fmt: skip

    def sides(*chosen_sides: str) -> tuple[str, ...]:
        chosen = {MEMORY, *chosen_sides}
        if REDIS_IDLE in chosen:
            chosen.add(MEMORY_IDLE)  # its control: the same idle consumers, no Redis
        return tuple(side for side in ALL_SIDES if side in chosen)

    def job(
        key: str,
        scenario: str,
        argv: tuple[str, ...],
        side_argv: Mapping[str, tuple[str, ...]],
        env: Mapping[str, str],
        on: tuple[str, ...],
        *,
        rate: float,
        connections: int,
        variant: Variant | None = None,
    ) -> Job:
        held: dict[str, int] = {side: idle for side in IDLE_SIDES if idle and side in on}
        connections += max(held.values(), default=0)
        limits = limits_env(producer_rate_per_s=rate, connections=connections)
        env = {**env, **limits}
        if held:
            # Thousands of consumers connected within seconds are all pinged within a second
            # of each other 20 s later: a burst that would land in some runs and not others.
            env |= relay_env(ping_interval_seconds=IDLE_PING_INTERVAL_SECONDS)
        return Job(key, scenario, argv, side_argv, env, on, rate, connections, variant, held)

    jobs: list[Job] = []
    argv: tuple[str, ...]
    if "pair" in plan.scenarios:
        redis_rates = set(plan.redis_pair_rates) if redis else set()
        own_rates = redis_rates.union(*extra_rates.values())
        variants = lead_with_headline(plan.pair_variants)
        if own_rates and SIDE_TABLE_VARIANT not in variants:
            variants += (SIDE_TABLE_VARIANT,)
        if redis_rates:
            variants += tuple(v for v in plan.redis_pair_variants if v not in variants)
        for variant in variants:
            baseline_rates = set(plan.pair_rates) if variant in plan.pair_variants else set()
            extras_of = extra_rates if variant == SIDE_TABLE_VARIANT else {}
            on_redis_rates = redis_rates if variant in plan.redis_pair_variants else set()
            for rate in sorted(baseline_rates.union(on_redis_rates, *extras_of.values())):
                argv = ("--rate", str(rate), "--duration-seconds", str(plan.duration_s))
                argv += (*writes(variant), *run)
                on_extras = [s for s, rates in extras_of.items() if rate in rates]
                on = sides(
                    *([BASELINE] if rate in baseline_rates else []),
                    *(redis if rate in on_redis_rates else []),
                    *on_extras,
                )
                jobs.append(
                    job(
                        pair_key(variant, rate), "pair", argv, echo, deep, on,
                        rate=rate / variant.producers, connections=variant.producers + 1,
                        variant=variant,
                    )
                )  # fmt: skip
    if "roundtrip" in plan.scenarios:
        argv = ("--rounds", str(plan.roundtrip_rounds), "--warmup", str(ROUNDTRIP_WARMUP))
        # One message in flight (its rate one over the round trip, a few thousand a second),
        # so a relay with its default buffers.
        jobs.append(
            job(
                ROUNDTRIP_KEY, "roundtrip", (*argv, "--no-progress"), {}, {}, SIDES,
                rate=ROUNDTRIP_MAX_RATE, connections=2,
            )
        )  # fmt: skip
    if "max" in plan.scenarios:
        on_redis = bool(redis and plan.redis_max_steps)
        variants = lead_with_headline(plan.max_variants)
        if on_redis and SIDE_TABLE_VARIANT not in variants:
            variants += (SIDE_TABLE_VARIANT,)
        steps = ",".join(str(s) for s in plan.max_steps)
        for variant in variants:
            argv = ("--steps", steps, "--max-rate", str(max(plan.max_steps)))
            argv += ("--duration-seconds", str(plan.max_step_s), *writes(variant), *run)
            side_argv: dict[str, tuple[str, ...]] = dict(echo)
            with_redis = on_redis and variant == SIDE_TABLE_VARIANT
            if with_redis:
                # The last --steps/--max-rate wins: the Redis sides climb their own ladder.
                ladder = ",".join(str(s) for s in plan.redis_max_steps)
                own = ("--steps", ladder, "--max-rate", str(max(plan.redis_max_steps)))
                side_argv.update({side: (*echo[side], *own) for side in redis})
            top = max((*plan.max_steps, *(plan.redis_max_steps if with_redis else ())))
            on = sides(
                *([BASELINE] if variant in plan.max_variants else []),
                *(redis if with_redis else []),
            )
            jobs.append(
                job(
                    max_key(variant), "max", argv, side_argv, deep, on,
                    rate=top / variant.producers, connections=variant.producers + 1,
                    variant=variant,
                )
            )  # fmt: skip
    if "fanout" in plan.scenarios:
        for consumers, rate in plan.fanouts:
            argv = ("--consumers", str(consumers), "--rate", str(rate))
            argv += ("--duration-seconds", str(plan.duration_s), "--sender", "unbatched")
            argv += ("--producer-procs", "1", "--consumer-procs", str(consumer_procs(cores)))
            # One reader for all of a process's consumers: the lean client's task per
            # connection would fill the generator's core before the server's (loadtest/polled.py).
            argv += ("--consumer-client", "polled", *run)
            on_redis = bool(redis) and (consumers, rate) in plan.redis_fanouts
            on = sides(BROADCAST, *(redis if on_redis else []))
            key = f"fanout 1→{consumers}"
            jobs.append(
                job(key, "fanout", argv, echo, deep, on, rate=rate, connections=consumers + 1)
            )
    if "slow" in plan.scenarios:
        argv = ("--consumers", "1", "--stalled", "1", "--payload-bytes", "4096")
        argv += ("--rate", str(plan.slow_rate), "--duration-seconds", str(plan.slow_s))
        argv += ("--sender", "unbatched", "--producer-procs", "1")
        argv += ("--sample-interval-seconds", "0.25", *run)
        side = {MEMORY: echo[MEMORY], BASELINE: ("--delivery", "competing")}
        # A producer, a consumer and a stalled one.
        jobs.append(job("slow", "slow", argv, side, {}, SIDES, rate=plan.slow_rate, connections=3))
    if "connections" in plan.scenarios:
        argv = ("--connections", str(plan.connections), "--hold-seconds", "1", "--no-progress")
        # The lean client's handshake is cheap enough that the server, not the generator,
        # limits the connect rate (trio-websocket's is not); producers, so that the probe's
        # echo round trip is not also a fan-out to every held connection.
        argv += ("--role", "producer", "--client", "lean")
        # The idle connections, and the probe that measures a round trip while they are held.
        held = plan.connections + 1
        jobs.append(
            job("connections", "connections", argv, {}, {}, SIDES, rate=0, connections=held)
        )
    if plan.resume_sides:
        argv = ("--missed", str(RESUME_MISSED), "--repeats", str(plan.resume_repeats))
        argv += ("--warmup", str(RESUME_WARMUP), "--no-progress")
        # One connection at a time (position, producer, resume); the producer writes all the
        # missed messages at once, a burst well within the default publish rate's second.
        on = sides(*(redis if redis else []))
        jobs.append(job(RESUME_KEY, "resume", argv, {}, {}, on, rate=0, connections=2))
    return jobs


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s.strip())


def _variants(text: str) -> tuple[Variant, ...]:
    return tuple(dict.fromkeys(Variant.parse(item) for item in text.split(",") if item.strip()))


def _fanouts(text: str) -> tuple[tuple[int, int], ...]:
    return tuple((int(c), int(r)) for c, r in (item.split("x") for item in text.split(",")))


def build_plan(args: argparse.Namespace) -> Plan:
    """Return the plan for ``args``: FULL or QUICK with the given overrides.

    Raises ``ValueError`` for an unknown scenario or Redis side, a variant that is not
    ``SENDER:PRODUCERS``, or a ``--redis-fanout`` that is not one of the fan-outs. Without
    ``--redis-fanout``, the Redis sides run the default's fan-outs that are planned, else the
    first planned one.
    """
    base = QUICK if args.quick else FULL
    scenarios = base.scenarios
    if args.scenarios:
        scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
        unknown = set(scenarios) - set(FULL.scenarios)
        if unknown:
            raise ValueError(f"unknown scenarios: {', '.join(sorted(unknown))}")
    redis_sides = base.redis_sides
    if args.redis_sides:
        redis_sides = tuple(s.strip() for s in args.redis_sides.split(",") if s.strip())
        unknown = set(redis_sides) - set(REDIS_SIDES)
        if unknown:
            raise ValueError(f"unknown Redis sides: {', '.join(sorted(unknown))}")
    if args.no_redis:
        redis_sides = ()

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    fanouts = _fanouts(args.fanout) if args.fanout else base.fanouts
    if args.redis_fanout:
        redis_fanouts = _fanouts(args.redis_fanout)
        missing = [f"{c}x{r}" for c, r in redis_fanouts if (c, r) not in fanouts]
        if missing:
            raise ValueError(f"--redis-fanout {','.join(missing)} is not one of the fan-outs")
    else:
        redis_fanouts = tuple(f for f in base.redis_fanouts if f in fanouts) or fanouts[:1]
    return Plan(
        repeats=pick(args.repeats, base.repeats),
        duration_s=pick(args.duration_seconds, base.duration_s),
        drain_s=pick(args.drain_seconds, base.drain_s),
        pair_rates=_ints(args.pair_rates) if args.pair_rates else base.pair_rates,
        max_steps=_ints(args.max_steps) if args.max_steps else base.max_steps,
        max_step_s=pick(args.max_step_seconds, base.max_step_s),
        fanouts=fanouts,
        slow_rate=pick(args.slow_rate, base.slow_rate),
        slow_s=pick(args.slow_seconds, base.slow_s),
        connections=pick(args.connections, base.connections),
        scenarios=scenarios,
        redis_sides=redis_sides,
        redis_pair_rates=(
            _ints(args.redis_pair_rates) if args.redis_pair_rates else base.redis_pair_rates
        ),
        redis_max_steps=(
            _ints(args.redis_max_steps) if args.redis_max_steps else base.redis_max_steps
        ),
        redis_fanouts=redis_fanouts,
        tokens=args.tokens,
        history=args.history,
        resume_repeats=pick(args.resume_repeats, base.resume_repeats),
        roundtrip_rounds=pick(args.roundtrip_rounds, base.roundtrip_rounds),
        tracing=args.tracing,
        redis_pair_variants=(
            _variants(args.redis_pair_variants)
            if args.redis_pair_variants
            else base.redis_pair_variants
        ),
        redis_idle_channels=pick(args.redis_idle_channels, base.redis_idle_channels),
        pair_variants=_variants(args.pair_variants) if args.pair_variants else base.pair_variants,
        max_variants=_variants(args.max_variants) if args.max_variants else base.max_variants,
    )


def redis_table_for(plan: Plan) -> Table:
    """The Redis table for the Redis sides ``plan`` runs (one or both), with their ratios."""
    sides: tuple[str, ...] = tuple(side for side in REDIS_SIDES if side in plan.redis_sides)
    if REDIS_IDLE in sides:
        sides = (MEMORY_IDLE, *sides)
    every = (*REDIS_TABLE.ratios, REDIS_IDLE_RATIO, MEMORY_IDLE_RATIO)
    ratios = tuple(r for r in every if {r[1], r[2]} <= {MEMORY, *sides})
    return Table(REDIS_TABLE.title, (MEMORY, *sides), ratios)


def table_jobs(jobs: Sequence[Job], table: Table) -> list[Job]:
    """Return the jobs of ``jobs`` that run on every side of ``table``."""
    return [job for job in jobs if set(table.sides) <= set(job.sides)]


def extra_table_for(plan: Plan, side: str) -> Table | None:
    """The table of the opt-in ``side`` when ``plan`` runs it, else ``None``."""
    return EXTRAS[side].table if plan.extra_pair_rates(side) else None


def tokens_table_for(plan: Plan) -> Table | None:
    """The tokens table when ``plan`` runs the tokens side, else ``None``."""
    return extra_table_for(plan, TOKENS)


def history_table_for(plan: Plan) -> Table | None:
    """The history table when ``plan`` runs the no-history side, else ``None``."""
    return extra_table_for(plan, NOHISTORY)


def tracing_table_for(plan: Plan) -> Table | None:
    """The stage timing table when ``plan`` runs the no-tracing side, else ``None``."""
    return extra_table_for(plan, NOTRACING)


def resume_table_for(plan: Plan) -> Table | None:
    """The resume table for the sides ``plan`` resumes on, else ``None`` (no ``history``)."""
    if not plan.resume_sides:
        return None
    return Table(RESUME_TABLE.title, plan.resume_sides, RESUME_TABLE.ratios)
