"""The ``roundtrip`` scenario: one message in flight at a time, producer to consumer.

Against a running server, one producer and one consumer, both lean wsproto clients
(:class:`~loadtest.lean.LeanWebSocket`: the cheapest the generator has, so that its own time
weighs as little as it can in what is measured), on one channel (``--channel``, default the
plain endpoints, which the baseline serves too). Each round:

1. the producer writes one message (one frame, one write);
2. timed: from just before that write to the consumer's receipt of the message, which must be
   the one just sent (this run's id and the round's sequence number), or the run fails with
   :class:`RoundTripError`, saying what came instead;
3. the producer reads its echo (``?ack=echo``: every triorelay producer here asks for it, and
   the baseline always echoes), untimed, so that the next round starts once the server has
   finished with this one: nothing else is ever in flight.

This is the latency of a quiet channel: no batching anywhere, every message a read of its own
and a write of its own on each side, and each wake-up paid in full (what a chat message or a
button press costs), unlike ``pair``, whose open-loop rates let the work of one message overlap
the next. The first ``warmup`` rounds are done and checked the same way but not timed. The
result is the usual JSON (:mod:`loadtest.report`): the summary's latency is the delivery time,
and ``extra.roundtrip_ms`` has its p50/p99/max from the samples themselves.
"""

from __future__ import annotations

import os
import time
from typing import Any, Final

import trio

from loadtest.clients import CONNECTION_ERRORS
from loadtest.codec import CodecError, decode, encode, new_run_id, padding_for
from loadtest.endpoints import endpoint_url
from loadtest.engine import ProgressFn, sample_loop
from loadtest.lean import LEAN_CONNECT_ERRORS, LeanClosedError, LeanWebSocket
from loadtest.monitor import Sampling
from loadtest.replay import timing_summary
from loadtest.report import build_result, run_summary
from loadtest.stats import RoleStats
from loadtest.tokens import TokenIn, token_headers, token_param, token_url

#: How often the progress bar is told (rounds).
PROGRESS_EVERY: Final = 100
#: The two connections of a run: the producer and the consumer.
CONNECTIONS: Final = 2
#: What ends a run at the round it happened in, besides a wrong delivery.
CONNECTION_FAILURES: Final[tuple[type[Exception], ...]] = (LeanClosedError, *CONNECTION_ERRORS)


class RoundTripError(Exception):
    """A round that did not deliver the message just sent, or a connection that failed."""


def check_delivery(messages: list[str | bytes], run: str, seq: int) -> None:
    """Raise :class:`RoundTripError` unless ``messages`` is exactly message ``seq`` of ``run``."""
    if len(messages) != 1:
        raise RoundTripError(f"round {seq}: {len(messages)} messages came instead of one")
    message = messages[0]
    try:
        header = decode(message if isinstance(message, str) else message.decode())
    except (CodecError, UnicodeDecodeError):
        raise RoundTripError(f"round {seq}: not a load-test message: {message[:80]!r}") from None
    if (header.run, header.seq) != (run, seq):
        raise RoundTripError(f"round {seq}: message {header.seq} of run {header.run} came instead")


async def _open(url: str, token: str | None, token_in: TokenIn, timeout_s: float) -> LeanWebSocket:
    try:
        return await LeanWebSocket.open(
            token_url(url, token, token_in),
            connect_timeout_s=timeout_s,
            headers=token_headers(token, token_in),
        )
    except LEAN_CONNECT_ERRORS as error:
        raise RoundTripError(f"cannot connect to {url.partition('?')[0]}: {error!r}") from None


async def _rounds(
    producer: LeanWebSocket,
    consumer: LeanWebSocket,
    *,
    run: str,
    total: int,
    warmup: int,
    padding: str,
    round_timeout_s: float,
    stats: RoleStats,
    samples_ns: list[int],
    progress: ProgressFn | None,
) -> None:
    counters = stats.counters
    for seq in range(total):
        text = encode(run, 0, seq, time.monotonic_ns(), padding)
        with trio.move_on_after(round_timeout_s) as waited:
            start = time.perf_counter_ns()
            await producer.send_texts([text])
            delivered = await consumer.receive_messages()
            took = time.perf_counter_ns() - start
            check_delivery(delivered, run, seq)
            echoed = await producer.receive_messages()
        if waited.cancelled_caught:
            raise RoundTripError(f"round {seq}: nothing within {round_timeout_s:g} s")
        check_delivery(echoed, run, seq)  # the echo is the same message
        counters.sent += 1
        counters.delivered += 1
        counters.acks += 1
        if seq >= warmup:
            samples_ns.append(took)
            stats.latency.record_ns(took)
        if progress is not None and (seq % PROGRESS_EVERY == 0 or seq == total - 1):
            progress((seq + 1) / total)


async def run_roundtrip(
    *,
    url: str,
    channel: str | None = None,
    rounds: int = 5000,
    warmup: int = 200,
    payload_bytes: int = 128,
    server_pid: int | None = None,
    sample_interval_s: float = 0.5,
    connect_timeout_s: float = 10.0,
    progress: ProgressFn | None = None,
    token: str | None = None,
    token_in: TokenIn = "header",
) -> dict[str, Any]:
    """Time ``rounds`` deliveries, one message in flight (see the module); return the result.

    ``warmup`` rounds come first, untimed. Each round has ``connect_timeout_s`` to deliver its
    message and echo it. Raises :class:`RoundTripError` at the first round that delivers
    anything but its message, or at a failed connection; ``ValueError`` for ``rounds`` below 1
    or a negative ``warmup``.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError("--rounds must be at least 1, --warmup at least 0")
    run = new_run_id(os.urandom(4))
    padding = padding_for(payload_bytes)
    stats = RoleStats()
    samples_ns: list[int] = []
    sampling = Sampling.of(server_pid)
    total = warmup + rounds
    consumer = await _open(
        endpoint_url(url, "consumer", channel), token, token_in, connect_timeout_s
    )
    failure: RoundTripError | None = None
    started = time.monotonic()
    try:
        producer = await _open(
            endpoint_url(url, "producer", channel, ack="echo"), token, token_in, connect_timeout_s
        )
        stats.counters.connected += CONNECTIONS
        stop_sampling = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_loop, sampling.samplers, sample_interval_s, stop_sampling)
            try:
                await _rounds(
                    producer, consumer, run=run, total=total, warmup=warmup, padding=padding,
                    round_timeout_s=connect_timeout_s, stats=stats, samples_ns=samples_ns,
                    progress=progress,
                )  # fmt: skip
            except RoundTripError as error:
                failure = error
            except CONNECTION_FAILURES as error:
                failure = RoundTripError(f"a connection failed: {error!r}")
            finally:
                stop_sampling.set()
                await producer.aclose()
    finally:
        await consumer.aclose()
    if failure is not None:
        raise failure  # here, not in the nursery: a RoundTripError, not an ExceptionGroup
    stats.counters.offered = total
    elapsed_s = time.monotonic() - started
    summary = run_summary(
        stats,
        expected=total,
        duration_s=elapsed_s,
        server_samples=sampling.server,
        generator_samples=sampling.generator,
    )
    ms = [ns / 1e6 for ns in samples_ns]
    return build_result(
        scenario="roundtrip",
        url=url,
        channel=channel,
        server_pid=server_pid,
        params={
            "rounds": rounds,
            "warmup": warmup,
            "payload_bytes": payload_bytes,
            "connect_timeout_s": connect_timeout_s,
            "sample_interval_s": sample_interval_s,
            "token_in": token_param(token, token_in),
        },
        summary=summary,
        extra={"roundtrip_ms": timing_summary(ms), "writes": "one message per write"},
    )
