"""The writers' side of tracing (:mod:`triorelay.tracing`): the last two stages of a traced
message, timed per consumer, its trace notice for consumers that asked, and the trace log.

A consumer's buffer counts the traced items it holds (``ConsumerBuffer.traced``), so a writer
whose batch holds none pays one integer test per batch.
"""

from __future__ import annotations

import logging

from triorelay.envelopes import Payload
from triorelay.hub import Consumer, Item, Traced
from triorelay.tracing import now_ns

trace_log = logging.getLogger("triorelay.trace")


def take_traced(consumer: Consumer, items: list[Item]) -> list[Traced]:
    """The traced items of a batch the writer just took (none without a look, usually)."""
    buffer = consumer.buffer
    if buffer is None or not buffer.traced:
        return []
    traced = [item for item in items if type(item) is Traced]
    buffer.traced = max(0, buffer.traced - len(traced))
    return traced


def unwrap(items: list[Item]) -> list[Payload]:
    """A raw consumer's batch with its traced items as the payloads they carry."""
    return [item.payload if type(item) is Traced else item for item in items]  # type: ignore[misc]


def written(consumer: Consumer, traced: list[Traced], taken_ns: int) -> list[str]:
    """The batch holding ``traced`` is on the socket: time their last stages; log the traces
    producers asked for (once per message: the first consumer to write it); return the trace
    notices this consumer asked for."""
    written_ns = now_ns()
    notices: list[str] = []
    channel = consumer.channel_name
    for item in traced:
        trace = item.trace
        consumer.traced_written(trace, taken_ns, written_ns)
        if trace.trace_id is None:
            continue  # a sample: the histograms only
        if consumer.traces:
            notices.append(trace.notice(channel, item.offset, taken_ns, written_ns))
        if item.logged:
            continue  # once per message and relay, not once per consumer
        item.logged = True
        accept, broker, queue, write = trace.stages(taken_ns, written_ns)
        trace_log.info(
            "trace %s channel=%s offset=%d consumer=%d accept=%.6f broker=%.6f queue=%.6f "
            "write=%.6f",
            trace.trace_id,
            channel,
            item.offset,
            consumer.id,
            accept,
            broker,
            queue,
            write,
        )
    return notices
