"""The ``resume`` scenario: how long a consumer coming back takes to get what it missed.

Against a running relay, each repeat, on a channel of its own (``<prefix>.<run id>.<n>``):

1. a consumer asking for the ``triorelay.v1`` framing learns the fresh channel's position
   (epoch and offset) from its ``subscribed`` frame, and leaves;
2. while no consumer is attached, a producer (``?ack=id``) publishes ``missed`` messages in
   one write and waits for every ack: the channel's history then holds each of them;
3. timed: a consumer asks for the framing with ``?since=<that position>``. The clock runs from
   opening its TCP connection (the handshake request follows at once) to the last replayed
   message. The ``subscribed`` frame must say that exactly ``missed`` messages follow, and
   after the clock stops every replayed frame is checked (:class:`~loadtest.replay.ReplayCheck`):
   each at the next offset, each the message published there. Anything else fails the run with
   :class:`~loadtest.replay.ResumeError`, saying what came instead.

Every connection is a lean wsproto client (:class:`~loadtest.lean.LeanWebSocket`), the
cheapest reader the generator has: its own parsing of the replayed frames is inside the
timing, as it is for any client. Repeats are :data:`PAUSE_S` apart, so each one times a relay
that is done with the last, and the first ``warmup`` of them are not timed (a fresh relay's
one-time costs are not a resume's). The result is the usual JSON (:mod:`loadtest.report`): the
summary's latency is the resume time, and ``extra.resume_ms`` has its p50/p99/max from the
samples themselves (``extra.samples_ms``, in run order), with the handshake's and the
``subscribed`` frame's share beside it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import trio

from loadtest.clients import CONNECTION_ERRORS
from loadtest.codec import encode, new_run_id, padding_for
from loadtest.endpoints import endpoint_url
from loadtest.engine import ProgressFn, sample_loop
from loadtest.lean import LEAN_CONNECT_ERRORS, LeanClosedError, LeanWebSocket
from loadtest.monitor import Sampling
from loadtest.replay import (
    SUBPROTOCOL,
    ReplayCheck,
    ResumeError,
    Subscribed,
    parse_subscribed,
    timing_summary,
)
from loadtest.report import build_result, run_summary
from loadtest.stats import RoleStats
from loadtest.tokens import TokenIn, token_headers, token_param, token_url

#: The channels' prefix without ``--channel``.
DEFAULT_CHANNEL_PREFIX: Final = "loadtest.resume"
#: Pause between repeats, so that each one times a relay done with the last one's connections.
PAUSE_S: Final = 0.05
#: Connections each repeat opens one after the other: the position, the producer, the resume.
CONNECTIONS_PER_REPEAT: Final = 3
#: What ends a run at the repeat it happened in: a wrong or undone resume, a broken connection.
REPEAT_FAILURES: Final[tuple[type[Exception], ...]] = (ResumeError, *CONNECTION_ERRORS)


@dataclass(frozen=True)
class ResumeTiming:
    """One timed resume, in nanoseconds from opening its TCP connection: to the handshake's
    ``101``, to the ``subscribed`` frame, and to the last replayed message."""

    handshake_ns: int
    subscribed_ns: int
    total_ns: int


@dataclass(frozen=True)
class _Target:
    """Where one repeat connects, and how it presents the token."""

    producer: str
    consumer: str
    token: str | None
    token_in: TokenIn
    connect_timeout_s: float

    async def open(self, url: str, *, framed: bool) -> LeanWebSocket:
        """Connect to ``url`` (with the token; offering the framing if ``framed``)."""
        try:
            lean = await LeanWebSocket.open(
                token_url(url, self.token, self.token_in),
                connect_timeout_s=self.connect_timeout_s,
                headers=token_headers(self.token, self.token_in),
                subprotocols=[SUBPROTOCOL] if framed else [],
            )
        except LEAN_CONNECT_ERRORS as error:
            raise ResumeError(f"cannot connect to {_path(url)}: {error!r}") from None
        if framed and lean.subprotocol != SUBPROTOCOL:
            await lean.aclose()
            raise ResumeError(
                f"{_path(url)} did not choose {SUBPROTOCOL}: not a relay with positions"
            )
        return lean


async def learn_position(target: _Target) -> Subscribed:
    """Connect a framed consumer, read the channel's position from ``subscribed``, leave."""
    lean = await target.open(target.consumer, framed=True)
    try:
        frames = await lean.receive_messages()
    except LeanClosedError as error:
        raise ResumeError(f"the consumer learning the position was closed: {error}") from None
    finally:
        await lean.aclose()
    return parse_subscribed(frames[0])


async def publish_missed(target: _Target, run: str, missed: int, padding: str) -> None:
    """Publish messages ``0 .. missed - 1`` of producer 0 in one write; return once each is
    acked (in the channel's history)."""
    lean = await target.open(target.producer, framed=False)
    acks = 0
    try:
        now = time.monotonic_ns()
        await lean.send_texts([encode(run, 0, n, now, padding) for n in range(missed)])
        while acks < missed:
            acks += len(await lean.receive_messages())
    except LeanClosedError as error:
        raise ResumeError(f"the producer was closed after {acks} acks: {error}") from None
    finally:
        await lean.aclose()


async def time_resume(target: _Target, check: ReplayCheck) -> ResumeTiming:
    """Resume from ``check.since`` and time it (see the module); then check every frame."""
    url = f"{target.consumer}?{urlencode({'since': check.since.position})}"
    frames: list[str | bytes] = []
    start = time.perf_counter_ns()
    lean = await target.open(url, framed=True)
    handshake = now = time.perf_counter_ns()
    subscribed = 0
    try:
        while len(frames) < check.missed:
            batch = await lean.receive_messages()
            now = time.perf_counter_ns()
            if not subscribed:
                subscribed = now
                check.feed(batch.pop(0))  # fails at once unless exactly `missed` follow
            frames += batch
    except LeanClosedError as error:
        raise ResumeError(
            f"the resuming consumer was closed after {len(frames)} of {check.missed}: {error}"
        ) from None
    finally:
        await lean.aclose()
    for frame in frames:  # after the clock stopped: checking is not the relay's time
        check.feed(frame)
    return ResumeTiming(handshake - start, subscribed - start, now - start)


async def _repeat(target: _Target, name: str, run: str, missed: int, padding: str) -> ResumeTiming:
    """One repeat on channel ``name``: learn its position, publish, time the resume."""
    since = await learn_position(target)
    await publish_missed(target, run, missed, padding)
    check = ReplayCheck(name, since, missed, run)
    with trio.move_on_after(target.connect_timeout_s):
        return await time_resume(target, check)
    raise ResumeError(f"no last replayed message within {target.connect_timeout_s:g} s")


async def run_resume(
    *,
    url: str,
    consumer_url: str | None = None,
    channel: str | None = None,
    missed: int = 1000,
    repeats: int = 20,
    warmup: int = 1,
    payload_bytes: int = 128,
    server_pid: int | None = None,
    sample_interval_s: float = 0.5,
    connect_timeout_s: float = 10.0,
    progress: ProgressFn | None = None,
    token: str | None = None,
    token_in: TokenIn = "header",
) -> dict[str, Any]:
    """Time ``repeats`` resumes of ``missed`` messages each (see the module); return the result.

    ``warmup`` repeats come first, done and checked the same way but kept out of the times
    (``extra.warmup_ms`` has theirs): the first resume on a fresh relay pays one-time costs
    (a Redis relay's first reads and scripts), which a relay that has been serving has paid.
    Producers connect to ``url``, consumers to ``consumer_url`` (default ``url``: another relay
    on the same Redis, to resume through it). Each repeat has ``connect_timeout_s`` for its
    resume, from connecting to the last replayed message. Raises :class:`ResumeError` at the
    first repeat that does not get exactly its missed messages in order, or cannot be done;
    ``ValueError`` for ``missed`` or ``repeats`` below 1, or a negative ``warmup``.
    """
    if missed < 1 or repeats < 1 or warmup < 0:
        raise ValueError("--missed and --repeats must be at least 1, --warmup at least 0")
    run = new_run_id(os.urandom(4))
    prefix = channel or DEFAULT_CHANNEL_PREFIX
    padding = padding_for(payload_bytes)
    stats = RoleStats()
    counters = stats.counters
    timings: list[ResumeTiming] = []
    warmups: list[ResumeTiming] = []
    total = warmup + repeats
    sampling = Sampling.of(server_pid)
    failure: ResumeError | None = None
    stop_sampling = trio.Event()
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_loop, sampling.samplers, sample_interval_s, stop_sampling)
        try:
            for n in range(total):
                name = f"{prefix}.{run}.{n}"
                target = _Target(
                    producer=endpoint_url(url, "producer", name, ack="id"),
                    consumer=endpoint_url(consumer_url or url, "consumer", name),
                    token=token,
                    token_in=token_in,
                    connect_timeout_s=connect_timeout_s,
                )
                try:
                    timing = await _repeat(target, name, run, missed, padding)
                except REPEAT_FAILURES as error:
                    failure = ResumeError(f"repeat {n + 1} of {total} ({name}): {error}")
                    break
                if n < warmup:
                    warmups.append(timing)
                else:
                    timings.append(timing)
                    stats.latency.record_ns(timing.total_ns)
                counters.offered += missed
                counters.sent += missed
                counters.acks += missed
                counters.delivered += missed
                counters.connected += CONNECTIONS_PER_REPEAT
                if progress is not None:
                    progress((n + 1) / total)
                await trio.sleep(PAUSE_S)
        finally:
            stop_sampling.set()
    if failure is not None:
        raise failure  # here, not in the nursery: a ResumeError, not an ExceptionGroup
    elapsed_s = time.monotonic() - started
    summary = run_summary(
        stats,
        expected=missed * total,
        duration_s=elapsed_s,
        server_samples=sampling.server,
        generator_samples=sampling.generator,
    )
    total_ms = [t.total_ns / 1e6 for t in timings]
    return build_result(
        scenario="resume",
        url=url,
        channel=prefix,
        server_pid=server_pid,
        params={
            "missed": missed,
            "repeats": repeats,
            "warmup": warmup,
            "payload_bytes": payload_bytes,
            "consumer_url": consumer_url,
            "connect_timeout_s": connect_timeout_s,
            "sample_interval_s": sample_interval_s,
            "token_in": token_param(token, token_in),
        },
        summary=summary,
        extra={
            "resume_ms": timing_summary(total_ms),
            "handshake_ms": timing_summary([t.handshake_ns / 1e6 for t in timings]),
            "subscribed_ms": timing_summary([t.subscribed_ns / 1e6 for t in timings]),
            "samples_ms": [round(ms, 3) for ms in total_ms],
            "warmup_ms": [round(t.total_ns / 1e6, 3) for t in warmups],
            "pause_s": PAUSE_S,
        },
    )


def _path(url: str) -> str:
    """``url`` without its query (which may hold a token)."""
    return url.partition("?")[0]
