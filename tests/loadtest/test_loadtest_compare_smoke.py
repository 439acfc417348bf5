"""``python -m loadtest compare`` end to end, seconds long, against both real servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.cli import build_parser, main
from loadtest.compare import FULL, QUICK, build_jobs, build_plan
from loadtest.comparison import SIDES
from loadtest.plots import PLOT_FILES

pytestmark = pytest.mark.timeout(60)


def test_compare_writes_both_sides_ratios_and_charts(tmp_path: Path) -> None:
    """A tiny pair + slow comparison writes compare.json (both sides, ratios), .md and PNGs."""
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--scenarios", "pair,slow",
            "--pair-rates", "200",
            "--duration-seconds", "0.5",
            "--slow-seconds", "0.5",
            "--slow-rate", "200",
            "--drain-seconds", "0.5",
            "--repeats", "1",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["sides"] == list(SIDES)
    assert {(r["job"], r["side"]) for r in report["runs"]} == {
        (job, side) for job in ("pair@200", "slow") for side in SIDES
    }
    cpu = next(
        r
        for r in report["rows"]
        if r["job"] == "pair@200" and r["metric"] == "server_cpu_us_per_msg"
    )
    for side in SIDES:
        assert cpu[side]["median"] > 0
    assert cpu["ratio_triorelay_over_asyncio"] > 0
    assert "| pair@200 | server CPU per delivered msg (µs) |" in (out / "compare.md").read_text()
    for name in PLOT_FILES:
        assert (out / name).read_bytes().startswith(b"\x89PNG")


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
        "pair@2000", "pair@5000", "pair@10000", "max", "fanout 1→100", "fanout 1→1000", "slow",
        "connections",
    ]  # fmt: skip


def test_unknown_scenario_is_refused() -> None:
    """A typo in --scenarios is an error (2), not a silently empty comparison."""
    assert main(["compare", "--scenarios", "pair,nope"]) == 2
