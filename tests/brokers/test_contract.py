"""The broker contract (:mod:`triorelay.brokers.base`), the same cases on every broker.

Each test runs once on :class:`~triorelay.brokers.MemoryBroker` and once on
:class:`~triorelay.brokers.redis.RedisBroker` with a redis-server of its own (the ``backend``
fixture), through the interface only. Queue delivery is a hub's business with the memory
broker (it has no queues of its own), so the queue cases run through a real :class:`Hub`.
"""

from __future__ import annotations

import json

import trio

from tests.brokers.conftest import HANG_GUARD_SECONDS, Backend, Deliveries
from triorelay.envelopes import Payload

QUEUE = {"channels": {"jobs.*": {"mode": "queue"}}}
MIXED: list[Payload] = ["text", b"\x00binary\xff", "", b"", "ünïcødé", b"last"]


async def test_run_signals_readiness_and_the_broker_is_ready(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """``await nursery.start(broker.run)`` returns with the broker ready (its backend is up)."""
    broker = backend.broker(Deliveries())
    with trio.fail_after(HANG_GUARD_SECONDS):
        await nursery.start(broker.run)
    assert broker.ready is True


async def test_run_ends_when_cancelled(backend: Backend) -> None:
    """Cancelling the task that runs the broker ends it: no background work outlives it."""
    broker = backend.broker(Deliveries())
    with trio.fail_after(HANG_GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(broker.run)
            nursery.cancel_scope.cancel()


async def test_statistics_name_the_kind_and_readiness(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """``statistics()`` is a JSON object with the broker's ``kind`` and its ``ready`` state."""
    broker = backend.broker(Deliveries())
    assert broker.statistics()["ready"] is broker.ready  # before run, too
    with trio.fail_after(HANG_GUARD_SECONDS):
        await nursery.start(broker.run)
    stats = broker.statistics()
    assert stats["kind"] == backend.kind
    assert stats["ready"] is True
    assert json.loads(json.dumps(stats)) == stats


async def test_publish_numbers_a_channels_messages_from_1_in_order(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """Successive publishes on a channel get 1, 2, 3, ... appended to ``published``."""
    broker = await backend.start_broker(nursery, Deliveries())
    published: list[int] = []
    with trio.fail_after(HANG_GUARD_SECONDS):
        for text in ("one", "two", "three"):
            await broker.publish("news", "broadcast", [text], published)
    assert published == [1, 2, 3]


async def test_publishing_several_payloads_appends_each_number_in_order(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """One publish of several payloads appends their numbers, contiguous, after what
    ``published`` already held."""
    broker = await backend.start_broker(nursery, Deliveries())
    published: list[int] = []
    with trio.fail_after(HANG_GUARD_SECONDS):
        await broker.publish("news", "broadcast", ["a", "b", "c"], published)
        assert published == [1, 2, 3]
        await broker.publish("news", "broadcast", [b"d", b"e"], published)
    assert published == [1, 2, 3, 4, 5]


async def test_channels_are_numbered_independently(backend: Backend, nursery: trio.Nursery) -> None:
    """Each channel has a sequence of its own."""
    broker = await backend.start_broker(nursery, Deliveries())
    on_a: list[int] = []
    on_b: list[int] = []
    with trio.fail_after(HANG_GUARD_SECONDS):
        await broker.publish("a", "broadcast", ["1", "2"], on_a)
        await broker.publish("b", "broadcast", ["1"], on_b)
        await broker.publish("a", "broadcast", ["3"], on_a)
    assert (on_a, on_b) == ([1, 2, 3], [1])


async def test_queue_publishes_are_numbered_from_1_in_order(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """Queue mode numbers a channel's messages as broadcast does."""
    broker = await backend.start_broker(nursery, Deliveries(), **QUEUE)
    published: list[int] = []
    with trio.fail_after(HANG_GUARD_SECONDS):
        await broker.publish("jobs.a", "queue", ["j1", "j2"], published)
        await broker.publish("jobs.a", "queue", [b"j3"], published)
    assert published == [1, 2, 3]


async def test_a_watched_channel_delivers_everything_published_after_wait_watching(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """Once ``wait_watching`` returns, every message published on the channel reaches
    ``deliver`` under its name, in order, text as ``str`` and binary as ``bytes``."""
    deliveries = Deliveries()
    broker = await backend.start_broker(nursery, deliveries)
    broker.watch("news")
    published: list[int] = []
    with trio.fail_after(HANG_GUARD_SECONDS):
        await broker.wait_watching("news")
        for batch in (MIXED[:3], MIXED[3:4], MIXED[4:]):
            await broker.publish("news", "broadcast", batch, published)
        got = await deliveries.wait_for(len(MIXED))
    assert got == [("news", payload) for payload in MIXED]
    assert [type(item) for _, item in got] == [type(payload) for payload in MIXED]
    assert published == list(range(1, len(MIXED) + 1))


async def test_each_watched_channel_is_delivered_in_its_own_order(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """Interleaved publishes on two watched channels: each channel's deliveries keep its
    publish order, under its own name."""
    deliveries = Deliveries()
    broker = await backend.start_broker(nursery, deliveries)
    published: list[int] = []
    with trio.fail_after(HANG_GUARD_SECONDS):
        for name in ("a", "b"):
            broker.watch(name)
            await broker.wait_watching(name)
        for i in range(10):
            await broker.publish("a" if i % 2 else "b", "broadcast", [f"m{i}"], published)
        got = await deliveries.wait_for(10)
    assert [item for name, item in got if name == "a"] == [f"m{i}" for i in range(1, 10, 2)]
    assert [item for name, item in got if name == "b"] == [f"m{i}" for i in range(0, 10, 2)]


async def test_a_consumer_gets_what_is_published_after_it_joined_and_nothing_before(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """Through a hub: a message published before the channel's first consumer joined is not
    delivered to it; the next one is."""
    hub = await backend.start_hub(nursery)
    with trio.fail_after(HANG_GUARD_SECONDS), hub.attach_producer("news") as producer:
        assert await producer.publish("before") == 1
        with hub.attach_consumer("news") as consumer:
            await hub.broker.wait_watching("news")
            assert await producer.publish("after") == 2
            assert await consumer.receive() == "after"


async def test_each_queue_message_reaches_exactly_one_consumer(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """Through a hub: three consumers of a queue channel share 30 messages, each message
    received by exactly one of them."""
    hub = await backend.start_hub(nursery, **QUEUE)
    count = 30
    got: dict[int, list[Payload]] = {}
    all_in = trio.Event()

    async def consume(index: int, *, task_status: trio.TaskStatus[None]) -> None:
        with hub.attach_consumer("jobs.a") as consumer:
            await hub.broker.wait_watching("jobs.a")
            task_status.started()
            mine = got.setdefault(index, [])
            while True:
                mine.append(await consumer.receive())
                await consumer.acknowledge()
                if sum(map(len, got.values())) == count:
                    all_in.set()

    with trio.fail_after(HANG_GUARD_SECONDS):
        async with trio.open_nursery() as consumers:
            for index in range(3):
                await consumers.start(consume, index)
            with hub.attach_producer("jobs.a") as producer:
                published: list[int] = []
                await producer.publish_many([f"job{i}" for i in range(count)], published)
            await all_in.wait()
            consumers.cancel_scope.cancel()
    assert published == list(range(1, count + 1))
    delivered = [message for messages in got.values() for message in messages]
    assert sorted(delivered) == sorted(f"job{i}" for i in range(count))  # each exactly once
