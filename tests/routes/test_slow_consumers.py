"""Slow-consumer policies on a real server, with a consumer whose socket stops reading.

The stalled consumer is a :class:`RawWebSocket` with a 4 KiB receive buffer that does not read
until told; messages are 64 KiB so the kernel's buffers fill after a few dozen.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from tests.conftest import StartRelay
from tests.helpers import RawWebSocket, RunningRelay

pytestmark = pytest.mark.both_paths


MESSAGE_BYTES = 64 * 1024
COUNT = 400  # 25 MiB: far more than the loopback socket buffers and the relay's buffer hold


def message(i: int) -> str:
    return f"{i:06d}".ljust(MESSAGE_BYTES, ".")


async def _start(start_relay: StartRelay, policy: str) -> RunningRelay:
    return await start_relay(
        slow_consumer_policy=policy,
        consumer_buffer_messages=8,
        max_message_bytes=MESSAGE_BYTES,
        # Long enough that a stalled consumer can still read its close frame in these tests.
        close_timeout_seconds=30,
        graceful_timeout_seconds=40,
    )


async def _publish_all(relay: RunningRelay, fast_received: list[str | bytes]) -> dict[str, Any]:
    """Publish COUNT messages in lockstep with a fast consumer that reads each one.

    Lockstep keeps the fast consumer's buffer near empty, so only the stalled one can overflow.
    Returns the channel's statistics while the producer is still attached.
    """
    async with (
        relay.websocket("/ws/consumer/feed") as fast,
        relay.websocket("/ws/producer/feed?ack=id") as producer,
    ):
        for i in range(COUNT):
            await producer.send_message(message(i))
            assert json.loads(await producer.get_message()) == {"id": i + 1}
            fast_received.append(await fast.get_message())
        return await relay.channel("feed")


async def test_disconnect_policy_closes_the_slow_consumer_with_1013(
    start_relay: StartRelay,
) -> None:
    """disconnect: the stalled consumer is evicted (1013); producer and others carry on."""
    relay = await _start(start_relay, "disconnect")
    slow = await RawWebSocket.connect(relay.port, "/ws/consumer/feed")
    fast_received: list[str | bytes] = []
    stats = await _publish_all(relay, fast_received)
    assert fast_received == [message(i) for i in range(COUNT)]
    assert stats["disconnected_slow"] == 1
    assert stats["dropped"] > 0
    assert stats["consumers"] == 1  # the evicted one is gone, the fast one remains
    received, code, reason = await slow.read_until_closed()
    slow.close()
    assert code == 1013
    assert reason is not None
    assert "too slow" in reason
    assert received == [message(i) for i in range(len(received))], "a prefix, in order"
    assert len(received) < COUNT


async def test_drop_newest_keeps_the_oldest_and_counts_the_rest(
    start_relay: StartRelay,
) -> None:
    """drop_newest: the stalled consumer keeps a prefix; the loss is counted and notified."""
    relay = await _start(start_relay, "drop_newest")
    slow = await RawWebSocket.connect(relay.port, "/ws/consumer/feed?notices=true")
    fast_received: list[str | bytes] = []
    async with relay.websocket("/ws/producer/feed?ack=none") as late:
        stats = await _publish_all(relay, fast_received)
        assert fast_received == [message(i) for i in range(COUNT)]
        dropped = stats["dropped"]
        assert dropped > 0
        assert stats["disconnected_slow"] == 0
        consumers = [c for c in stats["connections"] if c["role"] == "consumer"]
        assert sorted(c["dropped"] for c in consumers) == [0, dropped], "only the slow one lost"
        # The stalled consumer now reads: what it kept, in order, with a notice before each gap.
        received: list[str | bytes] = []
        data = 0
        while data < COUNT - dropped:
            new = await slow.read_messages(1)
            received += new
            data += sum(not str(m).startswith("{") for m in new)
        await late.send_message("after the gap")
        while received[-1] != "after the gap":
            received += await slow.read_messages(1)
    slow.close()
    assert received[-1] == "after the gap"
    kept = [int(str(m)[:6]) for m in received[:-1] if not str(m).startswith("{")]
    notices = [json.loads(m) for m in received if str(m).startswith("{")]
    assert kept == sorted(kept)
    assert len(kept) == COUNT - dropped
    assert kept[0] == 0, "the oldest messages are kept"
    assert kept[-1] < COUNT - 1, "the newest were dropped"
    assert sum(n["count"] for n in notices) == dropped
    assert notices[-1]["total"] == dropped


async def test_drop_oldest_keeps_the_newest(start_relay: StartRelay) -> None:
    """drop_oldest: the stalled consumer ends with the newest messages, in order."""
    relay = await _start(start_relay, "drop_oldest")
    slow = await RawWebSocket.connect(relay.port, "/ws/consumer/feed")
    fast_received: list[str | bytes] = []
    stats = await _publish_all(relay, fast_received)
    dropped = stats["dropped"]
    assert dropped > 0
    received = await slow.read_messages(COUNT - dropped)
    slow.close()
    assert received[-1] == message(COUNT - 1), "the newest message survived"
    indices = [int(str(m)[:6]) for m in received]
    assert indices == sorted(indices)
    assert received[0] == message(0), "what reached the socket before the stall came first"


async def test_block_policy_backpressures_the_producer(start_relay: StartRelay) -> None:
    """block: the producer waits for the stalled consumer; once it reads, nothing is lost."""
    relay = await _start(start_relay, "block")
    slow = await RawWebSocket.connect(relay.port, "/ws/consumer/feed")
    acked = 0

    async with trio.open_nursery() as nursery:

        async def produce() -> None:
            nonlocal acked
            async with relay.websocket("/ws/producer/feed?ack=id") as producer:

                async def send_all() -> None:
                    for i in range(COUNT):
                        await producer.send_message(message(i))

                nursery.start_soon(send_all)
                for _ in range(COUNT):
                    await producer.get_message()
                    acked += 1

        nursery.start_soon(produce)
        # Everything settles with the producer blocked: no task can make progress.
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        stats = await relay.channel("feed")
        assert acked < COUNT
        assert stats["messages_in"] < COUNT
        assert stats["buffered"] == 8 == stats["peak_buffered"]
        assert stats["dropped"] == 0
        received = await slow.read_messages(COUNT)
        slow.close()
    assert acked == COUNT
    assert received == [message(i) for i in range(COUNT)]


async def test_a_consumer_that_stalls_midstream_gets_every_message_once_in_order(
    start_relay: StartRelay,
) -> None:
    """A consumer that reads, stops reading, then reads again: the messages the relay wrote
    to its socket while it read (directly, on the fast path), those that waited in its buffer
    once the socket was full (a frame cut by the full socket among them), and those after it
    caught up all arrive once, in order, each counted once (fast path and plain ASGI)."""
    count = 150  # 9.4 MiB: more than the loopback buffers hold, less than its buffer
    relay = await start_relay(
        slow_consumer_policy="disconnect",
        consumer_buffer_messages=count,
        consumer_buffer_bytes=count * MESSAGE_BYTES,
        max_message_bytes=MESSAGE_BYTES,
    )
    slow = await RawWebSocket.connect(relay.port, "/ws/consumer/feed")
    received: list[str | bytes] = []
    async with relay.websocket("/ws/producer/feed?ack=id") as producer:

        async def publish(numbers: range) -> None:
            for i in numbers:
                await producer.send_message(message(i))
                assert json.loads(await producer.get_message()) == {"id": i + 1}

        for i in range(10):  # read as they come
            await publish(range(i, i + 1))
            received += await slow.read_messages(1)
        await publish(range(10, count))  # not read: the socket fills, then the buffer
        stalled = await relay.channel("feed")
        received += await slow.read_messages(count - 10)
        for i in range(count, count + 10):  # caught up: read as they come again
            await publish(range(i, i + 1))
            received += await slow.read_messages(1)
        stats = await relay.channel("feed")
    slow.close()
    assert received == [message(i) for i in range(count + 10)]
    assert stalled["peak_buffered"] > 0, "the stall reached the relay's buffer"
    assert (stats["dropped"], stats["disconnected_slow"], stats["buffered"]) == (0, 0, 0)
    assert stats["messages_out"] == count + 10
    consumer = next(c for c in stats["connections"] if c["role"] == "consumer")
    assert (consumer["messages_out"], consumer["bytes_out"]) == (
        count + 10,
        (count + 10) * MESSAGE_BYTES,
    )
