"""The relay's WebSocket endpoints against a real Hypercorn server with trio-websocket clients."""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import ConnectionClosed

from tests.conftest import StartRelay
from tests.helpers import RawWebSocket, RunningRelay, receive_n, refused_upgrade

pytestmark = pytest.mark.both_paths


async def test_drop_in_for_the_asyncio_endpoints(relay: RunningRelay) -> None:
    """/ws/producer echoes each message and /ws/consumer receives it (channel ``default``)."""
    async with relay.websocket("/ws/consumer") as consumer:
        async with relay.websocket("/ws/producer") as producer:
            await producer.send_message('{"n": 1}')
            assert await producer.get_message() == '{"n": 1}'
            assert await consumer.get_message() == '{"n": 1}'
    assert (await relay.http.get("/channels")).json() == {"channels": []}


async def test_broadcast_reaches_every_consumer_in_order(relay: RunningRelay) -> None:
    """Every consumer of a broadcast channel gets every message, in order."""
    count, consumers_count = 50, 20
    results: dict[int, list[str | bytes]] = {}
    async with trio.open_nursery() as nursery:
        consumers = [await nursery.start(_connected, relay, "/ws/consumer/news") for _ in range(20)]
        async with relay.websocket("/ws/producer/news?ack=none") as producer:
            for i in range(count):
                await producer.send_message(f"m{i}")
            for index, ws in enumerate(consumers):
                results[index] = await receive_n(ws, count)
        nursery.cancel_scope.cancel()
    assert len(results) == consumers_count
    for received in results.values():
        assert received == [f"m{i}" for i in range(count)]


async def _connected(
    relay: RunningRelay, path: str, *, task_status: trio.TaskStatus[object]
) -> None:
    async with relay.websocket(path) as ws:
        task_status.started(ws)
        await trio.sleep_forever()


async def test_queue_mode_delivers_each_message_exactly_once(start_relay: StartRelay) -> None:
    """In queue mode each message goes to exactly one consumer, none lost, work shared."""
    relay = await start_relay(channels={"jobs.*": {"mode": "queue"}})
    count = 300
    received: list[list[str | bytes]] = [[], [], []]
    all_done = trio.Event()

    async def consume(index: int, *, task_status: trio.TaskStatus[None]) -> None:
        async with relay.websocket("/ws/consumer/jobs.build") as ws:
            task_status.started()
            while True:
                received[index].append(await ws.get_message())
                if sum(map(len, received)) == count:
                    all_done.set()

    async with trio.open_nursery() as nursery:
        for index in range(3):
            await nursery.start(consume, index)
        async with relay.websocket("/ws/producer/jobs.build?ack=id") as producer:
            for i in range(count):
                await producer.send_message(f"job{i}")
                assert json.loads(await producer.get_message()) == {"id": i + 1}
        await all_done.wait()
        nursery.cancel_scope.cancel()
    everything = [m for part in received for m in part]
    assert sorted(everything) == sorted(f"job{i}" for i in range(count))
    assert len(everything) == len(set(everything)) == count
    assert all(part for part in received), "every consumer got a share"
    for part in received:  # one producer: each consumer sees its share in order
        assert part == sorted(part, key=lambda m: int(str(m)[3:]))


async def test_queue_mode_holds_messages_until_a_consumer_comes(start_relay: StartRelay) -> None:
    """A queue channel keeps messages published before any consumer, then hands them over."""
    relay = await start_relay(channels={"jobs.*": {"mode": "queue"}})
    async with relay.websocket("/ws/producer/jobs.later?ack=id") as producer:
        for i in range(5):
            await producer.send_message(f"job{i}")
            await producer.get_message()
    assert (await relay.channel("jobs.later"))["buffered"] == 5
    async with relay.websocket("/ws/consumer/jobs.later") as consumer:
        assert await receive_n(consumer, 5) == [f"job{i}" for i in range(5)]
    assert (await relay.http.get("/channels/jobs.later")).status_code == 404


async def test_per_producer_order_is_kept_for_every_consumer(relay: RunningRelay) -> None:
    """Interleaved producers: each consumer sees each producer's messages in that order."""
    per_producer = 100
    async with (
        relay.websocket("/ws/consumer/mix") as first,
        relay.websocket("/ws/consumer/mix") as second,
    ):
        async with trio.open_nursery() as nursery:
            for name in "abc":
                nursery.start_soon(_produce, relay, name, per_producer)
        for consumer in (first, second):
            received = await receive_n(consumer, 3 * per_producer)
            for name in "abc":
                mine = [m for m in received if str(m).startswith(name)]
                assert mine == [f"{name}{i}" for i in range(per_producer)]


async def _produce(relay: RunningRelay, name: str, count: int) -> None:
    async with relay.websocket("/ws/producer/mix?ack=id") as producer:
        for i in range(count):
            await producer.send_message(f"{name}{i}")
        await receive_n(producer, count)


@pytest.mark.parametrize(
    "payload",
    ["", b"", "plain text", "unicode: héllo ✓ 𝄞", b"\x00\xff" * 1000, bytes(range(256))],
    ids=["empty-text", "empty-binary", "text", "unicode", "binary", "all-bytes"],
)
async def test_messages_relay_byte_for_byte(relay: RunningRelay, payload: str | bytes) -> None:
    """Text stays text and binary stays binary, byte for byte, empty included."""
    async with relay.websocket("/ws/consumer/raw") as consumer:
        async with relay.websocket("/ws/producer/raw") as producer:
            await producer.send_message(payload)
            echoed = await producer.get_message()
            delivered = await consumer.get_message()
    for got in (echoed, delivered):
        assert type(got) is type(payload)
        assert got == payload


async def test_ack_id_returns_channel_sequence_numbers(relay: RunningRelay) -> None:
    """?ack=id answers {"id": N} with the channel's sequence number, shared by producers."""
    async with (
        relay.websocket("/ws/producer/seq?ack=id") as first,
        relay.websocket("/ws/producer/seq?ack=id") as second,
    ):
        await first.send_message("a")
        assert json.loads(await first.get_message()) == {"id": 1}
        await second.send_message(b"b")
        assert json.loads(await second.get_message()) == {"id": 2}


async def test_ack_none_sends_nothing_back(relay: RunningRelay) -> None:
    """?ack=none: the producer gets no frame back, the consumer still gets the messages."""
    async with relay.websocket("/ws/consumer/quiet") as consumer:
        async with relay.websocket("/ws/producer/quiet?ack=none") as producer:
            for i in range(3):
                await producer.send_message(f"q{i}")
            assert await receive_n(consumer, 3) == ["q0", "q1", "q2"]
        # Closed: anything the server had sent would be buffered and returned first.
        with pytest.raises(ConnectionClosed):
            await producer.get_message()


@pytest.mark.parametrize(
    "path",
    [
        "/ws/producer/bad%20name",
        "/ws/consumer/",
        "/ws/consumer/a/b",
        "/ws/producer/" + "x" * 129,
        "/ws/consumer/caf%C3%A9",
        "/ws/producer/ok?ack=loud",
        "/ws/consumer/ok?notices=maybe",
    ],
)
async def test_bad_requests_are_refused_before_the_upgrade(relay: RunningRelay, path: str) -> None:
    """A bad channel name or query value gets HTTP 400 with a reason; nothing is created."""
    status, body = await refused_upgrade(relay.port, path)
    assert status == 400
    assert b"channel names" in body or b"must be one of" in body
    assert (await relay.http.get("/channels")).json() == {"channels": []}
    async with relay.websocket("/ws/producer/" + "x" * 128) as producer:
        await producer.send_message("still serving")
        assert await producer.get_message() == "still serving"


async def test_oversized_message_closes_1009_and_others_carry_on(
    start_relay: StartRelay,
) -> None:
    """A message over max_message_bytes closes that producer with 1009; others carry on."""
    relay = await start_relay(max_message_bytes=1024, consumer_buffer_bytes=4096)
    async with relay.websocket("/ws/consumer/big") as consumer:
        async with relay.websocket("/ws/producer/big") as other:
            producer = await RawWebSocket.connect(relay.port, "/ws/producer/big")
            await producer.send_text("x" * 1025)
            _, code, _ = await producer.read_until_closed()
            producer.close()
            assert code == 1009
            await other.send_message("y" * 1024)
            assert await consumer.get_message() == "y" * 1024


async def test_compressed_connections_relay_too(start_relay: StartRelay) -> None:
    """With compression on, a permessage-deflate consumer gets the same messages."""
    relay = await start_relay(compression=True)
    consumer = await RawWebSocket.connect(relay.port, "/ws/consumer/z", 65536, deflate=True)
    assert consumer.conn.connection is not None
    (extension,) = consumer.conn.connection._proto.extensions
    assert extension.enabled(), "the server accepted permessage-deflate"
    try:
        async with relay.websocket("/ws/producer/z?ack=none") as producer:
            await producer.send_message("a" * 1000)
            await producer.send_message(b"\x01" * 10)
            assert await consumer.read_messages(2) == ["a" * 1000, b"\x01" * 10]
    finally:
        consumer.close()


async def test_compression_is_refused_by_default(relay: RunningRelay) -> None:
    """By default a client offering permessage-deflate gets an uncompressed connection."""
    consumer = await RawWebSocket.connect(relay.port, "/ws/consumer/plain", 65536, deflate=True)
    try:
        assert consumer.conn.connection is not None
        extensions = consumer.conn.connection._proto.extensions
        assert not any(extension.enabled() for extension in extensions)
        async with relay.websocket("/ws/producer/plain?ack=none") as producer:
            await producer.send_message("x" * 1000)
            assert await consumer.read_messages(1) == ["x" * 1000]
    finally:
        consumer.close()
