"""Two relay builds and the asyncio sides, side by side in one run: server CPU per message.

``loadtest compare`` measures one build of the relay (this checkout's) against the asyncio
baseline. To tell what a change did, this runs the same ``compare`` jobs (its plan, generator
command lines, pinning and fresh servers) on two builds of the relay, ``before`` and
``after`` (each a ``src`` directory put first on the relay's ``PYTHONPATH``), and on the
asyncio side of each job, alternating every side within each repeat. It prints, per job, the
median server CPU per delivered message of each side and the ratios after/asyncio,
before/asyncio and after/before, and writes them as JSON.

Make the ``before`` tree from a commit with ``git archive``::

    mkdir -p /tmp/before && git archive main src | tar -x -C /tmp/before
    python tools/ab_compare.py --before /tmp/before/src --after src \
        --scenarios pair,fanout --pair-variants unbatched:1 --pair-rates 2000,5000,10000 \
        --fanout 100x100,1000x10 --repeats 3 --duration-seconds 5

Runs the generator's own check too: a run where the generator was the bottleneck is left
out of the medians (``*`` marks a cell all of whose runs were).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from loadtest.compare.deployments import RedisSource
from loadtest.compare.plan import Job, Step, build_jobs, build_plan
from loadtest.compare.processes import REPO_ROOT, pinning
from loadtest.compare.runner import add_arguments, measure
from loadtest.compare.sides import ASYNCIO_SIDES, MEMORY
from loadtest.limits import raise_fd_limit

BUILDS = ("after", "before")


def _with_build(job: Job, src: Path) -> Job:
    """``job`` with its relays importing triorelay from ``src`` (this checkout's loadtest)."""
    pythonpath = os.pathsep.join((str(src.resolve()), str(REPO_ROOT)))
    return dataclasses.replace(job, triorelay_env={**job.triorelay_env, "PYTHONPATH": pythonpath})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/ab_compare.py", description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="src dir of the old build")
    parser.add_argument("--after", type=Path, required=True, help="src dir of the new build")
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.no_redis = True
    pins = pinning()
    plan = build_plan(args)
    # Servers inherit this limit: a fan-out needs a socket per consumer.
    raise_fd_limit(4 * max(*(c for c, _ in plan.fanouts), 256) + 1024)
    if pins is not None:
        plan = dataclasses.replace(plan, generator_cores=len(pins[1]))
    jobs = [job for job in build_jobs(plan) if job.scenario in ("pair", "fanout")]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = Path(args.out) if args.out else REPO_ROOT / "loadtest" / "results" / f"ab-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    redis = RedisSource(skipped="not used")
    cells: dict[str, dict[str, list[float]]] = {}
    bound: dict[str, dict[str, int]] = {}
    runs: list[dict[str, object]] = []
    for repeat in range(plan.repeats):
        for job in jobs:
            asyncio_side = next(side for side in job.sides if side in ASYNCIO_SIDES)
            builds = BUILDS if repeat % 2 == 0 else BUILDS[::-1]
            order = (builds[0], asyncio_side, builds[1])
            for label in order:
                src = args.after if label == "after" else args.before
                side = asyncio_side if label == asyncio_side else MEMORY
                run_job = job if side != MEMORY else _with_build(job, src)
                step = Step(repeat, run_job, side)
                (workdir / label).mkdir(exist_ok=True)
                run, _ = measure(step, plan, workdir / label, pins, redis)
                per_msg = run.metrics.get("server_cpu_us_per_msg")
                name = "asyncio" if label in ASYNCIO_SIDES else label
                runs.append(
                    {
                        "repeat": repeat + 1,
                        "job": job.key,
                        "side": name,
                        "us_per_msg": per_msg,
                        "p50_ms": run.metrics.get("p50_ms"),
                        "generator_bound": run.generator_bound,
                    }
                )
                print(
                    f"{repeat + 1} {job.key:<28} {name:<8} {per_msg} us/msg"
                    + (" (generator-bound)" if run.generator_bound else ""),
                    flush=True,
                )
                if per_msg is None:
                    continue
                if run.generator_bound:
                    bound.setdefault(job.key, {}).setdefault(name, 0)
                    bound[job.key][name] += 1
                    continue
                cells.setdefault(job.key, {}).setdefault(name, []).append(per_msg)
    summary = {}
    print(f"\n{'job':<28} {'after':>8} {'before':>8} {'asyncio':>8} a/asy  b/asy  a/b")
    for job in jobs:
        medians = {
            name: statistics.median(values) for name, values in cells.get(job.key, {}).items()
        }
        after, before, base = (medians.get(n) for n in ("after", "before", "asyncio"))

        def ratio(x: float | None, y: float | None) -> float | None:
            return None if x is None or not y else round(x / y, 3)

        row = {
            "us_per_msg": medians,
            "runs": {name: len(values) for name, values in cells.get(job.key, {}).items()},
            "generator_bound_runs": bound.get(job.key, {}),
            "after/asyncio": ratio(after, base),
            "before/asyncio": ratio(before, base),
            "after/before": ratio(after, before),
        }
        summary[job.key] = row
        print(
            f"{job.key:<28} {after or 0:8.1f} {before or 0:8.1f} {base or 0:8.1f} "
            f"{row['after/asyncio']}  {row['before/asyncio']}  {row['after/before']}"
        )
    print("\nper repeat (after/asyncio, before/asyncio): ", end="")
    for job in jobs:
        for repeat in range(1, plan.repeats + 1):
            got = {
                str(r["side"]): r["us_per_msg"]
                for r in runs
                if r["job"] == job.key and r["repeat"] == repeat and not r["generator_bound"]
            }
            asyncio_cpu = got.get("asyncio")
            if isinstance(asyncio_cpu, float) and asyncio_cpu:
                mine = (got.get("after"), got.get("before"))
                ratios = [f"{x / asyncio_cpu:.2f}" if isinstance(x, float) else "-" for x in mine]
                print(f"\n  {job.key} #{repeat}: {' / '.join(ratios)}", end="")
    print()
    out = {"jobs": summary, "runs": runs}
    (workdir / "ab.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwritten: {workdir / 'ab.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
