"""History on vs off: the history table (server CPU per message, history over none) and the
resume table (how long a consumer takes to get 1,000 missed messages back), their notes,
headlines against issue #13's bounds, and the report's section (I/O-free).

:mod:`loadtest.compare.report` renders the other tables and the whole ``compare.md``; this
module uses its metric formats and table renderer, and gives it the finished section.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from loadtest.compare.aggregate import Row, Table
from loadtest.compare.deployments import describe_side
from loadtest.compare.plan import (
    EXTRAS,
    RESUME_BOUND_MS,
    RESUME_KEY,
    RESUME_MISSED,
    RESUME_WARMUP,
    Job,
    Plan,
)
from loadtest.compare.relay import effective
from loadtest.compare.report import (
    METRICS,
    extra_notes,
    extra_section,
    format_value,
    last_value,
    lean_writes,
)
from loadtest.compare.sides import MEMORY, NOHISTORY
from loadtest.replay import SUBPROTOCOL
from loadtest.resume import PAUSE_S

#: The no-history side: its settings, rates, table and bound.
HISTORY: Final = EXTRAS[NOHISTORY]


def history_notes(jobs: Sequence[Job]) -> dict[tuple[str, str], str]:
    """Return the notes of the history table: how the generator writes, the history kept, and
    the bound at :data:`~loadtest.compare.plan.HISTORY_PAIR_RATE`."""
    return extra_notes(jobs, HISTORY, lambda job: f"{lean_writes()}; {_history_kept(job)}")


def _history_kept(job: Job) -> str:
    """``triorelay keeps the last 1000 msgs (≤ 1 MiB) per channel``: the history of ``job``'s
    relay with history."""
    messages = effective("history_messages", job.triorelay_env)
    mib = int(effective("history_bytes", job.triorelay_env)) / 2**20
    return f"{MEMORY} keeps the last {messages} msgs (≤ {mib:g} MiB) per channel, {NOHISTORY} none"


def history_section(
    plan: Plan,
    rows: Sequence[Row],
    resume_rows: Sequence[Row] = (),
    resume_table: Table | None = None,
) -> str:
    """The history section of ``compare.md`` (empty without rows): the headlines against the
    bounds, what each side keeps, how the generator writes, and the tables: ``rows`` of the
    history table, ``resume_rows`` of ``resume_table``."""
    headlines: list[str] = []
    notes: list[str] = []
    tables: list[str] = []
    if resume_rows and resume_table is not None:
        headlines.append(resume_headline(resume_rows, resume_table))
        notes.append(f"resume, on {', '.join(resume_table.sides)}: {resume_method(plan)}")
        tables.append(render_resume_table(resume_rows, resume_table))
    return extra_section(
        plan,
        HISTORY,
        rows,
        sides=f"`{MEMORY}`: the in-memory relay with triorelay's default history; "
        f"`{NOHISTORY}`: {describe_side(NOHISTORY)}",
        headlines=headlines,
        notes=notes,
        tables=tables,
    )


#: The resume table's one metric line: two medians per side.
RESUME_LABEL: Final = (
    f"resume {RESUME_MISSED:,} missed messages: handshake → last replayed, p50 / max (ms)"
)


def resume_job_metrics(jobs: Sequence[Job]) -> list[tuple[str, list[str]]]:
    """Return which metrics the resume table shows for each (``resume``) job."""
    return [
        (job.key, ["resume_p50_ms", "resume_max_ms"]) for job in jobs if job.scenario == "resume"
    ]


def resume_notes(jobs: Sequence[Job]) -> dict[tuple[str, str], str]:
    """Return the note of the resume table: the bound, and what its medians are of."""
    return {
        (job.key, "resume_max_ms"): (
            f"bound {_resume_bound()}; {last_value(job.argv, '--repeats')} resumes per run, "
            "medians over repeats of each run's p50 and max"
        )
        for job in jobs
        if job.scenario == "resume"
    }


def _resume_bound() -> str:
    """``max < 100 ms``, from :data:`RESUME_BOUND_MS`."""
    return f"max < {RESUME_BOUND_MS:g} ms"


def resume_method(plan: Plan) -> str:
    """How the ``resume`` job measures, for the report."""
    command = f"--missed {RESUME_MISSED} --repeats {plan.resume_repeats} --warmup {RESUME_WARMUP}"
    return (
        f"`python -m loadtest resume {command}` (the warm-up repeat, first on a fresh relay, "
        "done and checked but not timed); "
        "each repeat on a fresh channel: a framed consumer learns its position and leaves, a "
        "producer publishes the missed messages in one write (`?ack=id`) and waits for every "
        f"ack, then a lean wsproto consumer asking for `{SUBPROTOCOL}` with `?since=` is "
        "timed from its TCP connect to the last replayed message (every one checked in order "
        f"after the clock stops); triorelay's default history; {PAUSE_S:g} s between repeats"
    )


def resume_headline(rows: Sequence[Row], table: Table) -> str:
    """One line: each side's resume p50 / max against :data:`RESUME_BOUND_MS`."""
    cells = {row.metric: row.cells for row in rows if row.job_key == RESUME_KEY}
    parts = []
    for side in table.sides:
        p50 = cells.get("resume_p50_ms", {}).get(side)
        top = cells.get("resume_max_ms", {}).get(side)
        if p50 is None or top is None or p50.median is None or top.median is None:
            parts.append(f"`{side}` not measured")
            continue
        verdict = "within" if top.median < RESUME_BOUND_MS else "**over**"
        parts.append(f"`{side}` **{p50.median:.1f} / {top.median:.1f} ms** ({verdict})")
    head = f"resume {RESUME_MISSED:,} missed messages, handshake → last replayed, p50 / max"
    return f"{head}: {'; '.join(parts)}; bound {_resume_bound()}"


def render_resume_table(rows: Sequence[Row], table: Table) -> str:
    """Return the markdown of the resume table: one line per job, ``p50 / max`` per side."""
    header = ["scenario", "metric", *table.sides, "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_job: dict[str, dict[str, Row]] = {}
    for row in rows:
        by_job.setdefault(row.job_key, {})[row.metric] = row
    digits = METRICS["resume_p50_ms"].digits
    for key, metrics in by_job.items():
        p50, top = metrics["resume_p50_ms"], metrics["resume_max_ms"]
        cells = [
            f"{format_value(p50.cells[s].median, digits)} / "
            f"{format_value(top.cells[s].median, digits)}"
            for s in table.sides
        ]
        lines.append("| " + " | ".join([key, RESUME_LABEL, *cells, top.note]) + " |")
    return "\n".join(lines) + "\n"
