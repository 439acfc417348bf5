"""``python -m loadtest compare``: triorelay against the asyncio baseline, side by side.

For every measurement both servers are started fresh (the baseline keeps leftovers and zombie
consumers between runs): triorelay with ``python -m triorelay serve`` (Hypercorn's trio worker,
one process) and the baseline with ``python -m loadtest.baseline`` (uvicorn). Each run is one
``python -m loadtest SCENARIO ...`` generator process. With two or more CPUs the server is pinned
to CPU 0 and the generator (its threads and worker processes inherit it) to CPU 1.

Sides alternate (triorelay, asyncio, triorelay, asyncio ...) for ``--repeats`` rounds; the
report (``compare.md``, ``compare.json``, PNG charts, and every raw result under ``runs/``)
shows medians and triorelay/asyncio ratios. The pure parts live in :mod:`loadtest.comparison`,
process handling in :mod:`loadtest.processes`, the charts in :mod:`loadtest.plots`.

This runner is synchronous on purpose: it only starts processes and waits for them, so it
never competes with the generator for the CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from loadtest.comparison import (
    SIDES,
    Job,
    Run,
    Step,
    aggregate,
    alternation,
    extract_metrics,
    generator_cpu_percent,
    is_generator_bound,
    render_runs,
    render_table,
)
from loadtest.processes import REPO_ROOT, pinning, run_generator, start_server

logger = logging.getLogger(__name__)

#: Per-consumer buffer for triorelay in the traffic scenarios (not ``slow``): deep enough that a
#: scheduling hiccup of the pinned generator does not get a consumer disconnected mid-benchmark.
TRAFFIC_BUFFER_MESSAGES: Final = 4096


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
    scenarios=("pair", "max", "fanout", "slow", "connections"),
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
)


def build_jobs(plan: Plan) -> list[Job]:
    """Return the jobs of ``plan`` in run order."""
    run = ("--drain-seconds", str(plan.drain_s), "--no-progress")
    # Both sides echo every message to its producer (the baseline always does; triorelay on
    # ?ack=echo), so they do the same work per message.
    echo = {"triorelay": ("--ack", "echo")}
    deep = {"TRIORELAY_CONSUMER_BUFFER_MESSAGES": str(TRAFFIC_BUFFER_MESSAGES)}
    # One lean producer in a worker process, the consumer in the main one: the cheapest generator.
    lean = ("--lean", "--producer-procs", "1")
    jobs: list[Job] = []
    argv: tuple[str, ...]
    if "pair" in plan.scenarios:
        for rate in plan.pair_rates:
            argv = ("--rate", str(rate), "--duration-seconds", str(plan.duration_s), *lean, *run)
            jobs.append(Job(f"pair@{rate}", "pair", argv, echo, deep))
    if "max" in plan.scenarios:
        steps = ",".join(str(s) for s in plan.max_steps)
        argv = ("--steps", steps, "--max-rate", str(max(plan.max_steps)))
        argv += ("--duration-seconds", str(plan.max_step_s), *lean, *run)
        jobs.append(Job("max", "max", argv, echo, deep))
    if "fanout" in plan.scenarios:
        for consumers, rate in plan.fanouts:
            argv = ("--consumers", str(consumers), "--rate", str(rate))
            argv += ("--duration-seconds", str(plan.duration_s), *run)
            jobs.append(Job(f"fanout 1→{consumers}", "fanout", argv, echo, deep))
    if "slow" in plan.scenarios:
        argv = ("--consumers", "1", "--stalled", "1", "--payload-bytes", "4096")
        argv += ("--rate", str(plan.slow_rate), "--duration-seconds", str(plan.slow_s))
        argv += ("--sample-interval-seconds", "0.25", *run)
        side = {"triorelay": echo["triorelay"], "asyncio": ("--delivery", "competing")}
        jobs.append(Job("slow", "slow", argv, side))
    if "connections" in plan.scenarios:
        argv = ("--connections", str(plan.connections), "--hold-seconds", "1", "--no-progress")
        jobs.append(Job("connections", "connections", argv))
    return jobs


def job_metrics(jobs: Sequence[Job]) -> list[tuple[str, list[str]]]:
    """Return which metrics the report shows for each job."""
    shown = {
        "pair": ["server_cpu_us_per_msg", "p50_ms", "p99_ms", "generator_cpu_percent"],
        "max": ["max_sustained_per_s", "generator_cpu_percent"],
        "fanout": ["delivered_per_s", "server_cpu_us_per_msg", "p99_ms", "generator_cpu_percent"],
        "slow": ["rss_growth_mb", "rss_max_mb", "p99_ms", "generator_cpu_percent"],
        "connections": ["rss_per_connection_bytes"],
    }
    return [(job.key, shown[job.scenario]) for job in jobs]


def design_notes(jobs: Sequence[Job]) -> dict[tuple[str, str], str]:
    """Return the notes shown beside numbers where the two servers differ by design."""
    notes: dict[tuple[str, str], str] = {}
    for job in jobs:
        if job.scenario == "pair":
            notes[(job.key, "server_cpu_us_per_msg")] = (
                "both echo each message to its producer (triorelay ?ack=echo)"
            )
        if job.scenario == "fanout":
            notes[(job.key, "delivered_per_s")] = (
                "baseline gives each message to ONE consumer (one global queue): compare "
                "deliveries/s, not messages; triorelay delivers to all"
            )
            notes[(job.key, "server_cpu_us_per_msg")] = "per delivery"
        if job.scenario == "slow":
            notes[(job.key, "rss_growth_mb")] = (
                "triorelay buffers ≤ 256 msgs per consumer, then closes the stalled one "
                "(1013); the baseline's queue is unbounded"
            )
        if job.scenario == "max":
            notes[(job.key, "max_sustained_per_s")] = (
                "p99 ≤ 50 ms and ≥ 99 % delivered; ladder "
                + ",".join(job.argv[job.argv.index("--steps") + 1].split(","))
                + " msg/s (— : not even the first step)"
            )
    return notes


def _timeout_for(plan: Plan) -> float:
    longest = max(plan.duration_s, plan.slow_s, plan.max_step_s * (len(plan.max_steps) + 1))
    return 120.0 + 4 * (longest + plan.drain_s) * max(1, len(plan.max_steps))


def measure(
    step: Step, plan: Plan, workdir: Path, pins: tuple[set[int], set[int]] | None
) -> tuple[Run, dict[str, Any]]:
    """Measure one step on a fresh server; return the flat :class:`Run` and the raw result."""
    server_cpus, generator_cpus = pins if pins else (None, None)
    stem = f"{step.repeat + 1}-{step.job.key.replace(' ', '_')}-{step.side}"
    env = step.job.triorelay_env if step.side == "triorelay" else None
    server = start_server(step.side, workdir / f"{stem}.server.log", cpus=server_cpus, env=env)
    try:
        argv = [*step.job.argv_for(step.side), "--url", server.url]
        argv += ["--server-pid", str(server.proc.pid)]
        cpu0 = server.cpu_seconds()
        result, gen_cpu_s = run_generator(
            argv,
            workdir / f"{stem}.json",
            workdir / f"{stem}.generator.log",
            cpus=generator_cpus,
            timeout_s=_timeout_for(plan),
        )
        server_cpu_s = server.cpu_seconds() - cpu0
    finally:
        server.stop()
    metrics = extract_metrics(result, server_cpu_s=server_cpu_s)
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


def render_report(
    rows_md: str, runs_md: str, *, plan: Plan, pins: tuple[set[int], set[int]] | None, wall_s: float
) -> str:
    """Return ``compare.md``."""
    if pins:
        pin_text = f"server pinned to CPU {sorted(pins[0])}, generator to CPU {sorted(pins[1])}"
    else:
        pin_text = "**not pinned**: fewer than 2 CPUs, server and generator share the machine"
    return (
        "# triorelay vs the asyncio baseline\n\n"
        f"- {plan.repeats} repeat(s), sides alternating (triorelay, asyncio, ...), a fresh server "
        "process per run; medians over repeats; ratio = triorelay / asyncio\n"
        f"- {pin_text}; {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n"
        "- triorelay: `python -m triorelay serve` (Hypercorn trio worker); baseline: "
        "`python -m loadtest.baseline` (FastAPI on uvicorn)\n"
        f"- triorelay per-consumer buffer {TRAFFIC_BUFFER_MESSAGES} msgs in pair/max/fanout, "
        "default (256) in slow\n"
        "- server CPU per message = server CPU seconds over the whole run (connect, send, drain) "
        "/ delivered messages\n"
        "- ⚠gen: every run of that side was generator-bound, so the figure is the generator's "
        "limit, not the server's; generator-bound runs are left out of the other medians\n"
        f"- wall time {wall_s:.0f} s\n\n"
        "## Results\n\n"
        f"{rows_md}\n"
        "Charts: `latency.png` (pair latency vs offered rate), `throughput.png`, "
        "`slow_memory.png` (server RSS over time with a stalled consumer).\n\n"
        "## Every run\n\n"
        f"{runs_md}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``compare`` options to ``parser``."""
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 3; quick 1)")
    parser.add_argument("--quick", action="store_true", help="reduced set, under 2 minutes")
    parser.add_argument(
        "--out", type=Path, default=None, help="output dir (default loadtest/results/<timestamp>)"
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
    parser.add_argument("--fanout", default=None, help="CONSUMERSxRATE,... e.g. 100x100,1000x10")
    parser.add_argument("--slow-seconds", type=float, default=None)
    parser.add_argument("--slow-rate", type=int, default=None)
    parser.add_argument("--connections", type=int, default=None, help="idle connections")
    parser.add_argument("--drain-seconds", type=float, default=None)
    parser.add_argument("-v", "--verbose", action="count", default=0)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s.strip())


def build_plan(args: argparse.Namespace) -> Plan:
    """Return the plan for ``args``: FULL or QUICK with the given overrides."""
    base = QUICK if args.quick else FULL
    fanouts = base.fanouts
    if args.fanout:
        fanouts = tuple(
            (int(c), int(r)) for c, r in (item.split("x") for item in args.fanout.split(","))
        )
    scenarios = base.scenarios
    if args.scenarios:
        scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
        unknown = set(scenarios) - set(FULL.scenarios)
        if unknown:
            raise ValueError(f"unknown scenarios: {', '.join(sorted(unknown))}")

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

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
    )


def run_compare(plan: Plan, out: Path) -> dict[str, Any]:
    """Run every step of ``plan``, write the report files into ``out`` and return compare.json."""
    from loadtest.cli import raise_fd_limit
    from loadtest.plots import write_plots

    out.mkdir(parents=True, exist_ok=True)
    workdir = out / "runs"
    workdir.mkdir(exist_ok=True)
    # Servers inherit this limit: fan-out and connections need thousands of sockets.
    raise_fd_limit(4 * max(plan.connections, *(c for c, _ in plan.fanouts), 256) + 1024)
    pins = pinning()
    jobs = build_jobs(plan)
    steps = alternation(jobs, plan.repeats)
    runs: list[Run] = []
    results: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for i, step in enumerate(steps, 1):
        logger.warning("[%d/%d] %s on %s", i, len(steps), step.job.key, step.side)
        run, result = measure(step, plan, workdir, pins)
        runs.append(run)
        results.append(result)
    wall_s = time.monotonic() - t0
    rows = aggregate(runs, job_metrics(jobs), design_notes(jobs))
    report = {
        "schema": "triorelay-compare/1",
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "plan": plan.__dict__,
        "pinning": None
        if pins is None
        else {"server": sorted(pins[0]), "generator": sorted(pins[1])},
        "cpus": os.cpu_count(),
        "sides": list(SIDES),
        "rows": [row.to_dict() for row in rows],
        "runs": [run.to_dict() for run in runs],
        "wall_seconds": round(wall_s, 1),
    }
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    md = render_report(render_table(rows), render_runs(runs), plan=plan, pins=pins, wall_s=wall_s)
    (out / "compare.md").write_text(md)
    write_plots(out, rows, slow_series(runs, results))
    return report


def main(args: argparse.Namespace) -> int:
    """Run ``compare`` for parsed ``args``; return 0, or 1 if a run failed."""
    try:
        plan = build_plan(args)
    except ValueError as error:
        logger.error("compare: %s", error)
        return 2
    out = args.out or REPO_ROOT / "loadtest" / "results" / dt.datetime.now().strftime(
        "%Y%m%d-%H%M%S"
    )
    try:
        run_compare(plan, out)
    except (RuntimeError, subprocess.TimeoutExpired):
        logger.exception("compare failed")
        return 1
    print((out / "compare.md").read_text())
    print(f"written to {out}")
    return 0
