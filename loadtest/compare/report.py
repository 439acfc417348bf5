"""Numbers into words: what each report table shows, the notes beside its numbers, and the
markdown of ``compare.md`` (I/O-free).

:mod:`loadtest.compare.aggregate` gives the rows; this module says which metrics each job shows
(:func:`job_metrics`, :func:`redis_job_metrics`), how each metric is shown (:data:`METRICS`),
the notes where the sides differ by design, and renders the tables and the whole report. An
opt-in side's table (:class:`~loadtest.compare.plan.Extra`) gets its metrics, notes, headline
against the bound and section from one set of helpers (:func:`extra_job_metrics`,
:func:`extra_notes`, :func:`extra_headline`, :func:`extra_section`); each side adds its words
(the tokens' and stage timing's here, the history's in :mod:`loadtest.compare.history`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from loadtest.compare.aggregate import (
    BASELINE_TABLE,
    REDIS_TABLE,
    Cell,
    Row,
    Run,
    Table,
)
from loadtest.compare.deployments import RedisSource, describe_side
from loadtest.compare.plan import (
    EXTRAS,
    UNBATCHED_1,
    Extra,
    Job,
    Plan,
    Variant,
    build_jobs,
    consumer_procs,
    producer_procs,
)
from loadtest.compare.processes import SERVER_COMMANDS
from loadtest.compare.relay import POLICY_EFFECTS, default, effective, env_name
from loadtest.compare.sides import (
    ALL_SIDES,
    BASELINE,
    BROADCAST,
    MEMORY,
    NOTRACING,
    REDIS_SIDES,
    TOKENS,
)
from loadtest.lean import LEAN_BATCH_MESSAGES, LEAN_TICK_NS
from loadtest.schedule import DEFAULT_MIN_DELIVERED_RATIO, DEFAULT_P99_BOUND_MS


@dataclass(frozen=True)
class Metric:
    """How to show one metric: its label, unit and decimal digits."""

    label: str
    unit: str
    digits: int


METRICS: Final[Mapping[str, Metric]] = {
    "server_cpu_us_per_msg": Metric("server CPU per delivered msg", "µs", 1),
    "server_cpu_us_per_msg_connected": Metric("… once all are connected", "µs", 1),
    "redis_cpu_us_per_msg": Metric("… of which redis-server", "µs", 1),
    "p50_ms": Metric("latency p50", "ms", 2),
    "p99_ms": Metric("latency p99", "ms", 2),
    "max_ms": Metric("latency max", "ms", 2),
    "delivered_ratio": Metric("delivered / expected", "", 4),
    "delivered_per_s": Metric("delivered msg/s", "/s", 0),
    "max_sustained_per_s": Metric("max sustained 1→1", "msg/s", 0),
    "rss_per_connection_bytes": Metric("idle RSS per connection", "bytes", 0),
    "connect_rate_per_s": Metric("connect rate while ramping", "/s", 0),
    "server_cpu_ms_per_connect": Metric("server CPU per connection set up", "ms", 3),
    "server_cpu_percent_connecting": Metric("server CPU while ramping", "% core", 0),
    "rss_growth_mb": Metric("server RSS growth", "MiB", 1),
    "rss_max_mb": Metric("server RSS max", "MiB", 1),
    "generator_cpu_percent": Metric("generator CPU (in window)", "% core", 0),
    "resume_p50_ms": Metric("resume p50", "ms", 1),
    "resume_p99_ms": Metric("resume p99", "ms", 1),
    "resume_max_ms": Metric("resume max", "ms", 1),
}


def job_metrics(jobs: Sequence[Job]) -> list[tuple[str, list[str]]]:
    """Return which metrics the baseline table shows for each job (fan-outs are in their own
    table: :func:`fanout_job_metrics`)."""
    shown = {
        "pair": ["server_cpu_us_per_msg", "p50_ms", "p99_ms", "generator_cpu_percent"],
        "roundtrip": ["p50_ms", "p99_ms", "server_cpu_us_per_msg", "generator_cpu_percent"],
        "max": ["max_sustained_per_s", "generator_cpu_percent"],
        "slow": ["rss_growth_mb", "rss_max_mb", "p99_ms", "generator_cpu_percent"],
        "connections": [
            "rss_per_connection_bytes",
            "server_cpu_ms_per_connect",
            "connect_rate_per_s",
            "server_cpu_percent_connecting",
            "generator_cpu_percent",
        ],
    }
    return [(job.key, shown[job.scenario]) for job in jobs if job.scenario in shown]


def fanout_job_metrics(jobs: Sequence[Job]) -> list[tuple[str, list[str]]]:
    """Return which metrics the fan-out table shows for each (``fanout``) job."""
    shown = [
        "delivered_per_s",
        "server_cpu_us_per_msg",
        "server_cpu_us_per_msg_connected",
        "p50_ms",
        "p99_ms",
        "delivered_ratio",
    ]
    shown.append("generator_cpu_percent")
    return [(job.key, shown) for job in jobs if job.scenario == "fanout"]


#: How each sender writes, for notes and the summary (from :mod:`loadtest.lean`'s constants).
SENDER_WRITES: Final[Mapping[str, str]] = {
    "unbatched": "one message per write, each at its own scheduled time",
    "batched": (
        f"every message due in a {LEAN_TICK_NS / 1e6:g} ms tick in one write "
        f"(≤ {LEAN_BATCH_MESSAGES})"
    ),
    "trio-websocket": "one send_message per message (trio-websocket)",
}


def describe_variant(variant: Variant) -> str:
    """How ``variant``'s producers write: ``1 producer: one message per write, ...``."""
    who = (
        "1 producer"
        if variant.producers == 1
        else f"{variant.producers} producers sharing the rate"
    )
    return f"{who}: {SENDER_WRITES[variant.sender]}"


def fanout_notes(jobs: Sequence[Job]) -> dict[tuple[str, str], str]:
    """Return the notes of the fan-out table: both sides deliver every message to every
    consumer, and how the asyncio side does it."""
    notes: dict[tuple[str, str], str] = {}
    for job in jobs:
        if job.scenario != "fanout":
            continue
        notes[(job.key, "delivered_per_s")] = (
            f"both deliver every message to every consumer; {BROADCAST}: FastAPI's tutorial "
            "loop, `await connection.send_text(message)` for each consumer in turn"
        )
        notes[(job.key, "server_cpu_us_per_msg")] = (
            f"per delivery; {describe_variant(UNBATCHED_1)}, echoed to it by both"
        )
        notes[(job.key, "server_cpu_us_per_msg_connected")] = (
            "per delivery, the server's CPU from every consumer connected to the last "
            "delivery: the consumers' connect and close left out"
        )
    return notes


def redis_job_metrics(jobs: Sequence[Job]) -> list[tuple[str, list[str]]]:
    """Return which metrics the Redis table shows for each job."""
    traffic = ["server_cpu_us_per_msg", "redis_cpu_us_per_msg", "p50_ms", "p99_ms", "max_ms"]
    shown = {
        "pair": [*traffic, "delivered_ratio", "generator_cpu_percent"],
        "max": ["max_sustained_per_s", "generator_cpu_percent"],
        "fanout": ["delivered_per_s", *traffic, "generator_cpu_percent"],
    }
    return [(job.key, shown[job.scenario]) for job in jobs if job.scenario in shown]


def extra_job_metrics(jobs: Sequence[Job]) -> list[tuple[str, list[str]]]:
    """Return which metrics the table of an opt-in side shows for each (``pair``) job."""
    shown = ["server_cpu_us_per_msg", "p50_ms", "p99_ms", "delivered_ratio"]
    return [(job.key, [*shown, "generator_cpu_percent"]) for job in jobs if job.scenario == "pair"]


def extra_notes(
    jobs: Sequence[Job], extra: Extra, about: Callable[[Job], str]
) -> dict[tuple[str, str], str]:
    """Return the notes of ``extra``'s table: ``about(job)`` on every ``pair`` row's server
    CPU, and the bound on :attr:`Extra.key`'s."""
    notes: dict[tuple[str, str], str] = {}
    for job in jobs:
        if job.scenario != "pair":
            continue
        note = about(job)
        if job.key == extra.key:
            note += f"; bound {bound_text(extra)}"
        notes[(job.key, "server_cpu_us_per_msg")] = note
    return notes


def bound_text(extra: Extra) -> str:
    """``≤ 1.10x (history ≤ 10 % more server CPU per message)``, from ``extra``'s bound."""
    sign = "≤" if extra.inclusive else "<"
    share = round(100 * (extra.bound - 1), 6)
    return (
        f"{sign} {extra.bound:.2f}x ({extra.cost} {sign} {share:g} % more server CPU per message)"
    )


def extra_headline(rows: Sequence[Row], extra: Extra) -> str:
    """``server CPU per delivered message, <ratio>, at <rate> msg/s: **1.02x**, within the
    bound <bound>: pass`` (or ``**over** ...: **fail**``): the ratio of ``extra``'s table on
    :attr:`Extra.key`, against its bound."""
    label = extra.table.ratios[0][0]
    found = [
        row.ratios.get(label)
        for row in rows
        if row.job_key == extra.key and row.metric == "server_cpu_us_per_msg"
    ]
    value = found[0] if found else None
    head = f"server CPU per delivered message, {label}, at {extra.rate} msg/s"
    if value is None:
        return f"{head}: not measured; bound {bound_text(extra)}"
    verdict = "within" if extra.within(value) else "**over**"
    result = "pass" if extra.within(value) else "**fail**"
    return f"{head}: **{format_ratio(value)}**, {verdict} the bound {bound_text(extra)}: {result}"


def lean_writes() -> str:
    """How the generator's lean producer writes, from :mod:`loadtest.lean`'s constants."""
    return (
        f"1 lean producer → 1 consumer: one write per {LEAN_TICK_NS / 1e6:g} ms tick with every "
        f"message due (≤ {LEAN_BATCH_MESSAGES}), echo acks"
    )


def extra_section(
    plan: Plan,
    extra: Extra,
    rows: Sequence[Row],
    *,
    sides: str,
    notes: Sequence[str] = (),
    headlines: Sequence[str] = (),
    tables: Sequence[str] = (),
) -> str:
    """The section of ``compare.md`` for ``extra`` (empty without a table to show).

    With ``rows`` (of its table): the headline against the bound, ``sides`` (what each side
    is) with the ratio, the rates and how the generator writes, then the table. ``headlines``
    follow the headline, ``notes`` the rates, and ``tables`` (markdown) the table: what else
    the section shows (the resume of ``--history``).
    """
    if not rows and not tables:
        return ""
    label, numerator, denominator = extra.table.ratios[0]
    lines = [f"## {extra.table.title}\n"]
    if rows:
        lines.append(f"- {extra_headline(rows, extra)}")
    lines += [f"- {headline}" for headline in headlines]
    if rows:
        lines.append(
            f"- {sides}; ratios are {label} (`{numerator}` over `{denominator}`), measured in "
            "the same run with the sides alternating"
        )
        lines.append(
            f"- rates: {', '.join(str(r) for r in plan.extra_pair_rates(extra.side))} msg/s "
            f"1→1; generator: {lean_writes()}"
        )
    lines += [f"- {note}" for note in notes]
    out = "\n".join(lines) + "\n\n"
    if rows:
        out += f"{render_table(rows, extra.table)}\n"
    return out + "".join(f"{table}\n" for table in tables)


def tokens_notes(jobs: Sequence[Job]) -> dict[tuple[str, str], str]:
    """Return the notes of the tokens table: where verification happens, and the bound."""
    return extra_notes(
        jobs, EXTRAS[TOKENS], lambda job: "token verified once per connection, at connect"
    )


def tokens_section(plan: Plan, rows: Sequence[Row]) -> str:
    """The tokens section of ``compare.md`` (empty without rows)."""
    return extra_section(
        plan,
        EXTRAS[TOKENS],
        rows,
        sides=f"`{TOKENS}`: {describe_side(TOKENS)}; `{MEMORY}`: the same relay without a key "
        "(anonymous clients on loopback)",
    )


#: What the stage timing table measures: what the two sides do alike, for its section.
TRACING_ALIKE: Final = (
    "metrics themselves cost nothing per message, on either side: `GET /metrics` reads the "
    "relay's own counters and statistics when it is scraped (nothing scrapes during these "
    "runs), and they are counted alike with or without stage timing",
    "so this measures the **sampling**: the checks every untraced message goes through "
    "(whether its producer asked for traces; in the broker, the channel and each consumer's "
    f"writer, whether it is traced) run on both sides, and `{NOTRACING}` skips only the "
    "countdown per producer read and the sampled messages' work (clock reads at each stage, "
    "a traced item to every consumer, the histogram observations)",
)


def tracing_notes(jobs: Sequence[Job]) -> dict[tuple[str, str], str]:
    """Return the notes of the stage timing table: how the generator writes, what each side
    samples, and the bound at :data:`~loadtest.compare.plan.TRACING_PAIR_RATE`."""
    return extra_notes(jobs, EXTRAS[NOTRACING], lambda job: f"{lean_writes()}; {_sampled(job)}")


def _sampled(job: Job) -> str:
    """``triorelay times 1 msg in 64 per producer ..., triorelay-notracing none``: the
    sampling of ``job``'s relay with stage timing; both make the per-message checks."""
    every = effective("latency_sample_messages", job.triorelay_env)
    return (
        f"{MEMORY} times 1 msg in {every} per producer through its stages, {NOTRACING} none "
        "(both check every message for a trace; metrics are read at scrape time)"
    )


def tracing_section(plan: Plan, rows: Sequence[Row]) -> str:
    """The stage timing section of ``compare.md`` (empty without rows): the headline against
    issue #14's bound, what each side samples, how the generator writes, what both do alike
    (:data:`TRACING_ALIKE`), and the table."""
    setting = "latency_sample_messages"
    return extra_section(
        plan,
        EXTRAS[NOTRACING],
        rows,
        sides=f"`{MEMORY}`: the in-memory relay with triorelay's default sampling "
        f"(`{env_name(setting)}` at its default, {default(setting)}: one message in "
        f"{default(setting)} of each producer timed through its stages into the stage-latency "
        f"histograms); `{NOTRACING}`: "
        f"{describe_side(NOTRACING)}",
        notes=TRACING_ALIKE,
    )


def design_notes(jobs: Sequence[Job]) -> dict[tuple[str, str], str]:
    """Return the notes shown beside numbers where the two servers differ by design.

    Every setting and threshold they name is the one the job ran with: its argv, its relay
    environment, or else the generator's and triorelay's defaults.
    """
    notes: dict[tuple[str, str], str] = {}
    for job in jobs:
        if job.scenario == "pair":
            ack = last_value(job.side_argv.get(MEMORY, ()), "--ack")
            echo = (
                "both echo each message to its producer (triorelay ?ack=echo)"
                if ack == "echo"
                else f"the baseline echoes each message; triorelay ?ack={ack or 'default'}"
            )
            writes = f"{describe_variant(job.variant)}; " if job.variant else ""
            notes[(job.key, "server_cpu_us_per_msg")] = writes + echo
        if job.scenario == "roundtrip":
            notes[(job.key, "p50_ms")] = (
                "one message in flight: the producer writes it (one write), the consumer's "
                "receipt stops the clock, the producer reads its echo before the next; "
                f"{last_value(job.argv, '--rounds')} rounds per run"
            )
        if job.scenario == "connections":
            notes[(job.key, "server_cpu_ms_per_connect")] = (
                f"{last_value(job.argv, '--connections')} idle producers opened by the lean "
                "client: the server's CPU over the ramp / connections"
            )
        if job.scenario == "slow":
            notes[(job.key, "rss_growth_mb")] = (
                f"triorelay buffers {_consumer_bound(job)}, then {_slow_policy(job)}; the "
                "baseline's queue is unbounded"
            )
        if job.scenario == "max":
            writes = f"{describe_variant(job.variant)}; " if job.variant else ""
            notes[(job.key, "max_sustained_per_s")] = (
                f"{writes}{_sustained(job)}; ladder {last_value(job.argv, '--steps')} msg/s "
                "(— : not even the first step)"
            )
    return notes


def _consumer_bound(job: Job) -> str:
    """``≤ N msgs or M MiB per consumer``: the buffer of each consumer of ``job``'s relays."""
    messages = effective("consumer_buffer_messages", job.triorelay_env)
    mib = int(effective("consumer_buffer_bytes", job.triorelay_env)) / 2**20
    return f"≤ {messages} msgs or {mib:g} MiB per consumer"


def _slow_policy(job: Job) -> str:
    """What ``job``'s relays do to the stalled consumer once its buffer is full."""
    policy = effective("slow_consumer_policy", job.triorelay_env)
    return f"{POLICY_EFFECTS[policy]} (policy `{policy}`)"


def _sustained(job: Job) -> str:
    """When a step of ``job`` (a ``max`` job) counts as sustained, as its generator decides."""
    p99_ms = float(last_value(job.argv, "--p99-bound-ms") or DEFAULT_P99_BOUND_MS)
    ratio = float(last_value(job.argv, "--min-delivered-ratio") or DEFAULT_MIN_DELIVERED_RATIO)
    return f"p99 ≤ {p99_ms:g} ms and ≥ {100 * ratio:g} % delivered"


def redis_notes(jobs: Sequence[Job], *, redis_cpu_counted: bool) -> dict[tuple[str, str], str]:
    """Return the notes of the Redis table: what each side's server cost includes.

    ``redis_cpu_counted`` is false on someone else's Redis (``--redis-url``): then server CPU
    is the relays' only.
    """
    with_redis = "relay(s) + redis-server" if redis_cpu_counted else "relay(s) only"
    notes: dict[tuple[str, str], str] = {}
    for job in jobs:
        if job.scenario in ("pair", "fanout"):
            notes[(job.key, "server_cpu_us_per_msg")] = (
                f"memory: 1 relay; redis: {with_redis}, all on the server CPU"
                + ("; per delivery" if job.scenario == "fanout" else "")
            )
            notes[(job.key, "p50_ms")] = (
                "redis: published to Redis and read back, even on one relay; 2relays: "
                "producer on relay A, consumers on relay B"
            )
        if job.scenario == "pair":
            notes[(job.key, "delivered_ratio")] = "< 1: messages lost or late past the drain"
        if job.scenario == "max":
            memory_ladder = last_value(job.argv, "--steps")
            redis_ladder = last_value(job.argv_for(REDIS_SIDES[0]), "--steps")
            notes[(job.key, "max_sustained_per_s")] = (
                f"{_sustained(job)}; ladder memory {memory_ladder}, redis {redis_ladder} msg/s "
                "(— : not even the first step)"
            )
    return notes


def last_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of the last ``flag`` in ``argv`` (the one argparse keeps), ``None`` without."""
    at = [i for i, arg in enumerate(argv) if arg == flag]
    return argv[at[-1] + 1] if at else None


def format_value(value: float | None, digits: int) -> str:
    """Return ``value`` with ``digits`` decimals and thousands separators, ``—`` for ``None``."""
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _format_cell(cell: Cell, metric: Metric) -> str:
    text = format_value(cell.median, metric.digits)
    if cell.generator_bound and cell.median is not None:
        text += " ⚠gen"
    return text


def render_table(rows: Sequence[Row], table: Table = BASELINE_TABLE) -> str:
    """Return the markdown table of ``rows``: job, metric, each side's median, ratios, note.

    A ``⚠gen`` mark means every run of that side was generator-bound: the figure is the
    generator's limit, not the server's.
    """
    labels = [label for label, _num, _den in table.ratios]
    header = ["scenario", "metric", *table.sides, *labels, "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        metric = METRICS[row.metric]
        ratios = [format_ratio(row.ratios.get(label)) for label in labels]
        cells = [_format_cell(row.cells[s], metric) for s in table.sides]
        label = f"{metric.label} ({metric.unit})" if metric.unit else metric.label
        lines.append("| " + " | ".join([row.job_key, label, *cells, *ratios, row.note]) + " |")
    return "\n".join(lines) + "\n"


def format_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _flags(run: Run) -> str:
    limited = [f"limited_by: {run.limited_by}"] if run.limited_by else []
    return ", ".join([*run.flags, *limited])


def render_runs(runs: Sequence[Run]) -> str:
    """Return the per-run markdown table: server CPU, generator CPU and flags of every run
    (and what limited a ``max`` run)."""
    lines = [
        "| repeat | scenario | side | server CPU (s) | generator CPU (s) | generator CPU (% core) "
        "| gen-bound | flags |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.repeat + 1} | {r.job_key} | {r.side} | "
            f"{format_value(r.metrics.get('server_cpu_s'), 2)} | "
            f"{format_value(r.metrics.get('generator_cpu_s'), 2)} | "
            f"{format_value(r.generator_cpu_percent, 0)} | "
            f"{'**yes**' if r.generator_bound else 'no'} | {_flags(r) or '—'} |"
        )
    return "\n".join(lines) + "\n"


def render_report(
    rows_md: str,
    redis_md: str,
    runs_md: str,
    *,
    plan: Plan,
    pins: tuple[set[int], set[int]] | None,
    redis: RedisSource,
    wall_s: float,
    charts: Mapping[str, str] | None = None,
    tokens_rows: Sequence[Row] = (),
    history_md: str = "",
    tracing_rows: Sequence[Row] = (),
    summary_md: str = "",
    fanout_md: str = "",
) -> str:
    """Return ``compare.md``; ``redis_md`` is the Redis table (empty when no job has one).

    ``charts`` maps each chart file written beside it to what it shows; ``tokens_rows`` are
    the tokens table's rows (none: the tokens side did not run, and there is no section);
    ``history_md`` is the history section (:func:`loadtest.compare.history.history_section`,
    empty when ``--history`` was not given); ``tracing_rows`` are the stage timing table's
    rows (none: the no-tracing side did not run, and there is no section); ``summary_md`` the
    summary that leads the report (:func:`loadtest.compare.summary.summary_section`),
    ``fanout_md`` the fan-out table (empty when no fan-out ran).
    """
    if pins:
        pin_text = (
            f"every server process (relays, asyncio apps, redis-server) pinned to CPU "
            f"{sorted(pins[0])}, the generator's processes to CPU {sorted(pins[1])}"
        )
    else:
        pin_text = "**not pinned**: fewer than 2 CPUs, server and generator share the machine"
    jobs = build_jobs(plan)
    if redis_md:
        sides = "; ".join(f"`{side}`: {describe_side(side)}" for side in plan.redis_sides)
        on_redis = {job.scenario for job in jobs if set(REDIS_SIDES) & set(job.sides)}
        skipped = [f"`{s}`" for s in plan.scenarios if s not in on_redis]
        redis_section = (
            f"## {REDIS_TABLE.title}\n\n"
            f"- {redis.describe()}\n"
            f"- {sides}; ratios are over the in-memory relay (`{MEMORY}`)\n"
            + (f"- not run on Redis: {', '.join(skipped)}; " if skipped else "- ")
            + "broadcast channels only (queue mode over Redis is measured by the tests, not "
            "here)\n\n"
            f"{redis_md}\n"
        )
    elif not redis.available:
        redis_section = f"## {REDIS_TABLE.title}\n\n{redis.describe()}\n\n"
    else:
        redis_section = ""
    planned = {side for job in jobs for side in job.sides}
    order = ", ".join(side for side in ALL_SIDES if side in planned)
    chart_text = ", ".join(f"`{name}` ({what})" for name, what in (charts or {}).items())
    return (
        "# triorelay vs the asyncio baseline, and through Redis\n\n"
        f"- {plan.repeats} repeat(s), sides alternating within each job "
        f"({order}, where the job runs on them), fresh server "
        "processes per run; medians over repeats\n"
        f"- {pin_text}; {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n"
        f"- {MEMORY}: `python {' '.join(SERVER_COMMANDS[MEMORY])}` (Hypercorn trio worker); "
        f"{BASELINE}: `python {' '.join(SERVER_COMMANDS[BASELINE])}` (FastAPI on uvicorn, one "
        f"global queue: each message to one consumer); {BROADCAST}: "
        f"`python {' '.join(SERVER_COMMANDS[BROADCAST])}` (FastAPI's tutorial broadcast loop on "
        "uvicorn: every consumer gets every message), the asyncio side of the fan-outs\n"
        f"- {_variants(plan)}\n"
        f"- {_generator(plan)}\n"
        f"- {_buffers(jobs)}\n"
        f"- {_limits(jobs)}\n"
        "- server CPU per message = CPU seconds of every server process over the whole run "
        "(connect, send, drain) / delivered messages\n"
        "- ⚠gen: every run of that side was generator-bound, so the figure is the generator's "
        "limit, not the server's; generator-bound runs are left out of the other medians\n"
        f"- wall time {wall_s:.0f} s\n\n"
        f"{summary_md}"
        f"## {BASELINE_TABLE.title}\n\n"
        f"{rows_md}\n"
        f"{fanout_md}"
        f"{redis_section}"
        f"{tokens_section(plan, tokens_rows)}"
        f"{history_md}"
        f"{tracing_section(plan, tracing_rows)}"
        + (f"Charts: {chart_text}.\n\n" if chart_text else "")
        + "## Every run\n\n"
        f"{runs_md}"
    )


def _variants(plan: Plan) -> str:
    """How the producers of each ``pair`` and ``max`` variant write, by the label every row
    shows."""
    variants = dict.fromkeys(job.variant for job in build_jobs(plan) if job.variant is not None)
    described = "; ".join(f"`{v.label}`: {describe_variant(v)}" for v in variants)
    return f"producers (pair, max; one consumer): {described or 'none planned'}"


def _generator(plan: Plan) -> str:
    """The generator's processes: where producers and consumers run, and the CPUs they share."""
    cores = plan.generator_cores
    fanout = consumer_procs(cores)
    return (
        f"generator: {cores} CPU(s) for its processes; producers in worker processes "
        f"({producer_procs(1, cores)} for 1 producer, {producer_procs(100, cores)} for 100), "
        "the pair/max consumer in the main one, a fan-out's consumers in "
        + (f"{fanout} worker process(es)" if fanout else "the main one")
        + "; consumers read with the lean wsproto client, a fan-out's with the polled one "
        "(one reader for every consumer of a process, `--consumer-client polled`)"
    )


def _by_scenario(jobs: Sequence[Job], setting: str, unit: str) -> str:
    """``setting``'s value on the relays of each scenario of ``jobs``, and where it is the
    default: ``4096 msgs in pair/max, 256 msgs (the default) in slow``."""
    by_value: dict[str, list[str]] = {}
    for job in jobs:
        scenarios = by_value.setdefault(effective(setting, job.triorelay_env), [])
        if job.scenario not in scenarios:
            scenarios.append(job.scenario)
    default_value = str(default(setting))
    return ", ".join(
        f"{value}{unit}{' (the default)' if value == default_value else ''} in {'/'.join(names)}"
        for value, names in by_value.items()
    )


def _buffers(jobs: Sequence[Job]) -> str:
    """The relays' per-consumer buffer in each scenario of ``jobs``, and where it is the default."""
    setting = "consumer_buffer_messages"
    values = _by_scenario(jobs, setting, " msgs")
    return f"triorelay per-consumer buffer (`{env_name(setting)}`): {values}"


def _limits(jobs: Sequence[Job]) -> str:
    """The relays' publish rate and connection limits in each scenario of ``jobs``, beside the
    most the plan needs of them (every generator connection comes from one client)."""
    rate, per_client, total = (
        "publish_rate_messages_per_second",
        "max_connections_per_client",
        "max_connections",
    )
    top_rate = max((job.producer_rate_per_s for job in jobs), default=0)
    top_connections = max((job.connections for job in jobs), default=0)
    return (
        f"triorelay limits (raised where a job needs more): publish rate per producer "
        f"(`{env_name(rate)}`) {_by_scenario(jobs, rate, ' msg/s')}, highest planned per "
        f"producer {top_rate:g} msg/s; connections per client (`{env_name(per_client)}`) "
        f"{_by_scenario(jobs, per_client, '')} and in all (`{env_name(total)}`) "
        f"{_by_scenario(jobs, total, '')}, most planned at once {top_connections} (all from "
        "one client)"
    )
