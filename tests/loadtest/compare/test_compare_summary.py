"""The summary that leads the report: unbatched 1→1 first, every line labelled with how its
producers wrote, fan-out against the broadcast loop, and what limited each max run."""

from __future__ import annotations

from dataclasses import replace

from loadtest.compare.aggregate import BASELINE_TABLE, FANOUT_TABLE, Run, aggregate
from loadtest.compare.plan import (
    BATCHED_1,
    FULL,
    ROUNDTRIP_KEY,
    UNBATCHED_1,
    UNBATCHED_100,
    max_key,
    pair_key,
)
from loadtest.compare.sides import BASELINE, BROADCAST, MEMORY
from loadtest.compare.summary import Limits, max_limits, summary_lines, summary_section

PLAN = replace(
    FULL,
    scenarios=("pair", "max", "fanout"),
    pair_rates=(2000, 5000),
    pair_variants=(BATCHED_1, UNBATCHED_1, UNBATCHED_100),
    max_variants=(UNBATCHED_1,),
    fanouts=((100, 200),),
)


def _run(key: str, side: str, metric: str, value: float, **kwargs: object) -> Run:
    bound = bool(kwargs.pop("bound", False))
    return Run(key, side, 0, {metric: value}, bound, 50.0, **kwargs)  # type: ignore[arg-type]


def _pair_runs() -> list[Run]:
    runs = []
    for variant, ours, theirs in ((UNBATCHED_1, 150.0, 120.0), (BATCHED_1, 50.0, 100.0)):
        for rate in PLAN.pair_rates:
            key = pair_key(variant, rate)
            runs.append(_run(key, MEMORY, "server_cpu_us_per_msg", ours))
            runs.append(_run(key, BASELINE, "server_cpu_us_per_msg", theirs, bound=rate == 5000))
    return runs


def _rows(runs: list[Run]) -> list:  # type: ignore[type-arg]
    keys = sorted({r.job_key for r in runs})
    return aggregate(runs, [(key, ["server_cpu_us_per_msg"]) for key in keys])


def test_the_headline_leads_and_each_line_is_labelled_across_the_rates() -> None:
    """unbatched 1→1 comes first even when given second; one line per figure, the rates
    side by side, ⚠gen where every run of a side was generator-bound."""
    lines = summary_lines(PLAN, _rows(_pair_runs()))
    cpu = [line for line in lines if line.figure.startswith("server CPU per message")]
    assert [line.what for line in cpu] == ["unbatched 1→1", "batched 1→1"]
    first = cpu[0]
    assert first.figure == "server CPU per message at 2,000 / 5,000 msg/s"
    assert first.triorelay == "150.0 / 150.0 µs"
    assert first.asyncio == "120.0 / 120.0 ⚠gen µs"
    assert first.ratio == "1.25x / 1.25x"
    assert cpu[1].ratio == "0.50x / 0.50x"
    # 100→1 did not run here: no line for it rather than a line of dashes.
    assert not [line for line in lines if line.what == UNBATCHED_100.label]


def test_a_rate_that_did_not_run_is_a_dash() -> None:
    """One rate missing out of two: its place in the line is a dash."""
    runs = [r for r in _pair_runs() if r.job_key != pair_key(UNBATCHED_1, 5000)]
    (first, *_) = summary_lines(PLAN, _rows(runs))
    assert first.triorelay == "150.0 / — µs"
    assert first.ratio == "1.25x / —"


def test_the_serial_round_trip_follows_the_pair_lines() -> None:
    """roundtrip: its p50, p99 and CPU per message against the baseline, after every pair
    line and before max."""
    plan = replace(PLAN, scenarios=("pair", "roundtrip", "max"))
    runs = _pair_runs()
    for metric, ours, theirs in (("p50_ms", 0.2, 0.25), ("p99_ms", 0.4, 0.5)):
        runs += [
            _run(ROUNDTRIP_KEY, MEMORY, metric, ours),
            _run(ROUNDTRIP_KEY, BASELINE, metric, theirs),
        ]
    runs.append(_run(ROUNDTRIP_KEY, MEMORY, "server_cpu_us_per_msg", 90.0))
    runs.append(_run(ROUNDTRIP_KEY, BASELINE, "server_cpu_us_per_msg", 100.0))
    metrics = ["server_cpu_us_per_msg", "p50_ms", "p99_ms"]
    keys = sorted({r.job_key for r in runs})
    lines = summary_lines(plan, aggregate(runs, [(key, metrics) for key in keys]))
    serial = [line for line in lines if line.what == "unbatched 1→1, one message in flight"]
    assert [line.figure for line in serial] == [
        "serial round trip p50 (producer → consumer)",
        "serial round trip p99",
        "server CPU per message",
    ]
    assert [line.ratio for line in serial] == ["0.80x", "0.80x", "0.90x"]
    assert serial[0].triorelay == "0.20 ms"
    after = lines[lines.index(serial[-1]) + 1 :]
    assert not [line for line in after if line.figure.endswith("msg/s")]  # pair lines first


def test_the_idle_connections_have_their_three_lines() -> None:
    """connections: RSS and CPU per connection and the connect rate, against the baseline."""
    plan = replace(PLAN, scenarios=("connections",), connections=10_000)
    values = {
        "rss_per_connection_bytes": (26_000.0, 31_000.0),
        "server_cpu_ms_per_connect": (0.45, 0.5),
        "connect_rate_per_s": (1500.0, 1200.0),
    }
    runs = [
        _run("connections", side, metric, pair[i])
        for metric, pair in values.items()
        for i, side in enumerate((MEMORY, BASELINE))
    ]
    lines = summary_lines(plan, aggregate(runs, [("connections", list(values))]))
    assert [(line.what, line.figure, line.ratio) for line in lines] == [
        ("10,000 idle producers", "idle RSS per connection", "0.84x"),
        ("10,000 idle producers", "server CPU per connection set up", "0.90x"),
        ("10,000 idle producers", "connect rate while ramping", "1.25x"),
    ]


def test_fanout_lines_compare_with_the_broadcast_loop() -> None:
    """The fan-out lines take the fan-out table, whose asyncio side is the broadcast loop."""
    key = "fanout 1→100"
    metrics = ["server_cpu_us_per_msg", "server_cpu_us_per_msg_connected"]
    runs = [
        _run(key, MEMORY, metrics[0], 20.0),
        _run(key, BROADCAST, metrics[0], 40.0),
        _run(key, MEMORY, metrics[1], 9.0),
        _run(key, BROADCAST, metrics[1], 12.0),
    ]
    rows = aggregate(runs, [(key, metrics)], table=FANOUT_TABLE)
    whole, connected = summary_lines(PLAN, [], rows)
    assert whole.what == f"fan-out 1→100 at 200 msg/s, unbatched (asyncio: {BROADCAST})"
    assert (whole.figure, whole.ratio) == ("server CPU per delivery (whole run)", "0.50x")
    assert (connected.figure, connected.ratio) == (
        "server CPU per delivery, once all are connected",
        "0.75x",
    )


def test_max_limits_count_what_stopped_each_side() -> None:
    """Per side, how many runs the server, the generator or nothing limited."""
    key = max_key(UNBATCHED_1)
    runs = [
        _run(key, MEMORY, "max_sustained_per_s", 1.0, limited_by="server"),
        _run(key, MEMORY, "max_sustained_per_s", 1.0, limited_by="server"),
        _run(key, BASELINE, "max_sustained_per_s", 1.0, limited_by="generator"),
        _run(key, BASELINE, "max_sustained_per_s", 1.0, limited_by="server"),
    ]
    assert max_limits(PLAN, runs) == [
        Limits(key, MEMORY, server=2, generator=0, none=0),
        Limits(key, BASELINE, server=1, generator=1, none=0),
    ]
    assert max_limits(PLAN, runs)[0].found_own_limit
    assert not max_limits(PLAN, runs)[1].found_own_limit


def test_the_section_says_plainly_when_a_limit_was_not_found() -> None:
    """The markdown leads with the headline in bold and says which side's own limit the
    generator hid; compare.json gets the same lines and counts."""
    key = max_key(UNBATCHED_1)
    runs = [
        *_pair_runs(),
        _run(key, MEMORY, "max_sustained_per_s", 9000.0, limited_by="server"),
        _run(key, BASELINE, "max_sustained_per_s", 7000.0, limited_by="generator"),
    ]
    rows = aggregate(
        runs,
        [(k, ["server_cpu_us_per_msg"]) for k in sorted({r.job_key for r in _pair_runs()})]
        + [(key, ["max_sustained_per_s"])],
    )
    md, data = summary_section(PLAN, rows, [], runs)
    assert md.startswith("## Summary\n")
    assert "| **unbatched 1→1** | server CPU per message at 2,000 / 5,000 msg/s |" in md
    assert "| unbatched 1→1 | highest sustained rate" not in md  # the headline is bold
    assert (
        "| **unbatched 1→1** | highest sustained rate | 9,000 msg/s | 7,000 msg/s | 1.29x |" in md
    )
    assert f"- `{MEMORY}` on `{key}`: its own limit (`limited_by: server` in 1 of 1 runs)" in md
    assert f"**`{BASELINE}` on `{key}`: could not find its own limit**: the generator" in md
    assert data["max_limits"][1] == {
        "job_key": key, "side": BASELINE, "server": 0, "generator": 1, "none": 0,
        "found_own_limit": False,
    }  # fmt: skip
    assert data["lines"][0]["what"] == "unbatched 1→1"


def test_nothing_to_summarize_is_no_section() -> None:
    """Without pair, max or fan-out results the report has no summary section."""
    md, data = summary_section(replace(PLAN, scenarios=("slow",)), [], [], [])
    assert md == ""
    assert data == {"lines": [], "max_limits": []}
    assert BASELINE_TABLE.sides == (MEMORY, BASELINE)
