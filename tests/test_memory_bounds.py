"""Memory stays bounded whatever clients do (RSS of this process, server included)."""

from __future__ import annotations

import json

import psutil

from tests.conftest import StartRelay
from tests.helpers import RawWebSocket

MiB = 1024 * 1024


async def test_flooding_past_a_consumer_that_never_reads_keeps_rss_flat(
    start_relay: StartRelay,
) -> None:
    """200 MiB published past a stalled consumer: RSS grows by about its buffer, not more."""
    relay = await start_relay(
        slow_consumer_policy="drop_oldest",
        consumer_buffer_messages=64,
        consumer_buffer_bytes=4 * MiB,
        max_message_bytes=64 * 1024,
    )
    stalled = await RawWebSocket.connect(relay.port, "/ws/consumer/flood")
    process = psutil.Process()
    message = "x" * (64 * 1024)
    try:
        async with relay.websocket("/ws/producer/flood?ack=id") as producer:
            for _ in range(100):  # warm up: buffers, allocator arenas, socket buffers
                await producer.send_message(message)
                await producer.get_message()
            before = process.memory_info().rss
            for i in range(100, 3300):
                await producer.send_message(message)
                assert json.loads(await producer.get_message()) == {"id": i + 1}
            after = process.memory_info().rss
            stats = await relay.channel("flood")
    finally:
        stalled.close()
    assert stats["dropped"] > 3000, "the stalled consumer lost what did not fit"
    assert stats["buffered"] <= 64
    assert after - before < 16 * MiB, f"RSS grew by {(after - before) / MiB:.1f} MiB"
