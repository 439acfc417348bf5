"""Numbers into words: what each table shows, the notes, the markdown tables and ``compare.md``."""

from __future__ import annotations

from dataclasses import replace

from sample_runs import pair_run, redis_runs

from loadtest.compare.aggregate import FANOUT_TABLE, REDIS_TABLE, aggregate
from loadtest.compare.deployments import RedisSource, find_redis
from loadtest.compare.plan import FULL, QUICK, TRAFFIC_BUFFER_MESSAGES, Variant, build_jobs
from loadtest.compare.relay import default, relay_env
from loadtest.compare.report import (
    SENDER_WRITES,
    describe_variant,
    design_notes,
    fanout_job_metrics,
    fanout_notes,
    format_value,
    job_metrics,
    redis_job_metrics,
    redis_notes,
    render_report,
    render_runs,
    render_table,
)
from loadtest.compare.sides import (
    REDIS_2RELAYS,
)
from loadtest.schedule import DEFAULT_P99_BOUND_MS


def test_render_table_has_a_header_and_one_line_per_row() -> None:
    """The table shows both sides, the ratio and the note; missing values are dashes."""
    runs = [pair_run("triorelay", 0, 1.5), pair_run("asyncio", 0, None)]
    rows = aggregate(runs, [("pair@2000", ["p99_ms"])], {("pair@2000", "p99_ms"): "why"})
    lines = render_table(rows).splitlines()
    assert lines[0] == "| scenario | metric | triorelay | asyncio | triorelay/asyncio | note |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == "| pair@2000 | latency p99 (ms) | 1.50 | — | — | why |"
    assert len(lines) == 3


def test_aggregate_flags_a_side_whose_runs_were_all_generator_bound() -> None:
    """If every run of a side was generator-bound, the median uses them and is flagged."""
    runs = [pair_run("triorelay", 0, 7.0, bound=True), pair_run("asyncio", 0, 2.0)]
    (row,) = aggregate(runs, [("pair@2000", ["p99_ms"])])
    assert row.cells["triorelay"].generator_bound
    assert row.cells["triorelay"].median == 7.0
    assert not row.cells["asyncio"].generator_bound
    assert "7.00 ⚠gen" in render_table([row])


def test_render_redis_table_shows_three_sides_and_two_ratios() -> None:
    """Header names each side and each ratio; a side without a value is a dash, not a zero."""
    runs = [r for r in redis_runs() if r.side != REDIS_2RELAYS]
    rows = aggregate(runs, [("pair@1000", ["p99_ms"])], table=REDIS_TABLE)
    lines = render_table(rows, REDIS_TABLE).splitlines()
    assert lines[0] == (
        "| scenario | metric | triorelay | triorelay+redis | triorelay+redis-2relays "
        "| redis/memory | 2relays/memory | note |"
    )
    assert lines[2] == "| pair@1000 | latency p99 (ms) | 2.00 | 6.00 | — | 3.00x | — |  |"


def test_render_runs_lists_generator_cpu_and_flags() -> None:
    """The per-run table shows every run, bound ones in bold."""
    runs = [pair_run("triorelay", 0, 1.0, bound=True)]
    runs[0].flags.append("generator_bound")
    text = render_runs(runs)
    assert "| 1 | pair@2000 | triorelay | — | — | 40 | **yes** | generator_bound |" in text


def test_format_value_uses_separators() -> None:
    """Thousands separators and fixed decimals; None is a dash."""
    assert format_value(12345.678, 1) == "12,345.7"
    assert format_value(None, 1) == "—"


def test_redis_table_shows_latency_max_and_redis_cpu() -> None:
    """p50/p99/max latency and redis-server's share of the CPU for 1→1 and fan-out."""
    metrics = dict(redis_job_metrics(build_jobs(FULL)))
    for key in ("pair@1000 batched 1→1", "fanout 1→100"):
        assert {"p50_ms", "p99_ms", "max_ms", "redis_cpu_us_per_msg"} <= set(metrics[key])
    assert "slow" not in metrics


def test_redis_notes_say_whose_cpu_is_counted() -> None:
    """On someone else's Redis the server CPU is the relays' only, and the note says so."""
    jobs = build_jobs(FULL)
    key = "pair@1000 batched 1→1"
    ours = redis_notes(jobs, redis_cpu_counted=True)[(key, "server_cpu_us_per_msg")]
    theirs = redis_notes(jobs, redis_cpu_counted=False)[(key, "server_cpu_us_per_msg")]
    assert "redis-server" in ours
    assert "relay(s) only" in theirs
    ladder = redis_notes(jobs, redis_cpu_counted=True)[("max batched 1→1", "max_sustained_per_s")]
    assert "redis 250,500,750" in ladder


def test_report_says_why_the_redis_sides_were_skipped() -> None:
    """No Redis: the report has a Redis section with the reason, never an empty or 0 table."""
    skipped = RedisSource(skipped="no redis-server here")
    md = render_report("T1\n", "", "R\n", plan=QUICK, pins=None, redis=skipped, wall_s=1.0)
    section = md.split("## Through Redis vs in memory\n\n", 1)[1]
    assert section.startswith("**Redis sides skipped**: no redis-server here\n")
    assert "redis/memory" not in md
    ran = render_report(
        "T1\n", "T2\n", "R\n", plan=QUICK, pins=None, redis=find_redis("redis://h:1/0"), wall_s=1.0
    )
    assert "its CPU is **not** counted" in ran
    assert "T2\n" in ran.split("## Through Redis vs in memory", 1)[1]


def test_slow_and_max_notes_name_the_values_the_runs_used() -> None:
    """The slow note names triorelay's default buffer and policy; max names its thresholds."""
    notes = design_notes(build_jobs(FULL))
    slow = notes[("slow", "rss_growth_mb")]
    assert f"≤ {default('consumer_buffer_messages')} msgs" in slow
    assert f"policy `{default('slow_consumer_policy')}`" in slow
    top = notes[("max unbatched 1→1", "max_sustained_per_s")]
    assert f"p99 ≤ {DEFAULT_P99_BOUND_MS:g} ms" in top
    assert top.startswith("1 producer: one message per write, each at its own scheduled time;")
    (job,) = [j for j in build_jobs(FULL) if j.key == "slow"]
    deep = replace(job, triorelay_env=relay_env(consumer_buffer_messages=9))
    assert "≤ 9 msgs" in design_notes([deep])[("slow", "rss_growth_mb")]


def test_report_derives_commands_buffers_and_what_skips_redis() -> None:
    """The header names the server commands and each scenario's buffer from the plan."""
    md = render_report(
        "T1\n", "T2\n", "R\n", plan=QUICK, pins=None, redis=find_redis("redis://h:1/0"), wall_s=1
    )
    assert "`python -m triorelay serve`" in md
    assert "`python -m loadtest.baseline`" in md
    buffers = f"{TRAFFIC_BUFFER_MESSAGES} msgs in pair/max/fanout"
    assert buffers in md
    assert f"{default('consumer_buffer_messages')} msgs (the default) in roundtrip/slow" in md
    # QUICK has no Redis ladder.
    assert "not run on Redis: `roundtrip`, `max`, `slow`, `connections`" in md
    assert "`TRIORELAY_BROKER=redis://...`" in md
    assert "Charts:" not in md
    charted = render_report(
        "T1\n",
        "",
        "R\n",
        plan=QUICK,
        pins=None,
        redis=RedisSource(),
        wall_s=1,
        charts={"a.png": "b"},
    )
    assert "Charts: `a.png` (b).\n" in charted


def test_fanout_rows_compare_deliveries_with_the_broadcast_loop() -> None:
    """Fan-outs leave the baseline table for their own, whose notes say both deliver every
    message to every consumer, and how the generator's producer wrote."""
    jobs = build_jobs(FULL)
    assert not [key for key, _ in job_metrics(jobs) if key.startswith("fanout")]
    metrics = dict(fanout_job_metrics(jobs))
    assert set(metrics) == {"fanout 1→100", "fanout 1→1000"}
    assert {"delivered_ratio", "server_cpu_us_per_msg", "p99_ms"} <= set(metrics["fanout 1→100"])
    notes = fanout_notes(jobs)
    assert (
        "both deliver every message to every consumer" in notes[("fanout 1→100", "delivered_per_s")]
    )
    assert notes[("fanout 1→100", "server_cpu_us_per_msg")].startswith(
        "per delivery; 1 producer: one message per write"
    )
    header = render_table([], FANOUT_TABLE).splitlines()[0]
    assert header == (
        "| scenario | metric | triorelay | asyncio-broadcast | triorelay/asyncio-broadcast | note |"
    )


def test_every_pair_note_says_how_its_producers_wrote() -> None:
    """The CPU row of each pair job names its variant's writes; the header lists them all,
    the broadcast loop's command and the generator's processes."""
    notes = design_notes(build_jobs(FULL))
    assert notes[("pair@2000 batched 1→1", "server_cpu_us_per_msg")].startswith(
        "1 producer: every message due in a 1 ms tick in one write (≤ 512); both echo"
    )
    assert notes[("pair@2000 unbatched 100→1", "server_cpu_us_per_msg")].startswith(
        "100 producers sharing the rate: one message per write"
    )
    md = render_report("T\n", "", "R\n", plan=FULL, pins=None, redis=RedisSource(), wall_s=1)
    assert "`unbatched 1→1`: 1 producer: one message per write" in md
    assert "`python -m loadtest.baseline --broadcast`" in md
    assert "generator: 1 CPU(s) for its processes" in md
    assert "asyncio, asyncio-broadcast, triorelay+redis" in md  # the sides, in run order


def test_describe_variant_names_the_sender_and_the_producers() -> None:
    """One producer or many sharing the rate, and each sender's writes."""
    assert describe_variant(Variant("trio-websocket", 2)) == (
        "2 producers sharing the rate: one send_message per message (trio-websocket)"
    )
    assert "every message due in a 1 ms tick" in SENDER_WRITES["batched"]
