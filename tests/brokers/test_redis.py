"""The Redis broker: relays sharing channels through a real redis-server of the test's own."""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from typing import Any

import coredis
import pytest
import trio
import wsproto.events as ws_events
from coredis.response.types import StreamEntry
from trio_websocket import ConnectionClosed

from tests.brokers.conftest import Deliveries
from tests.conftest import StartRelay, make_settings
from tests.helpers import RawWebSocket, RunningRelay, refused_upgrade, wait_until
from tests.redis_server import RedisServer, TcpProxy, free_port
from triorelay.brokers import broker_factory
from triorelay.brokers.redis import Backoff, RedisBroker
from triorelay.brokers.redis import streams as streams_module
from triorelay.errors import SettingsError
from triorelay.hub import Consumer, Hub

FAST_RECONNECT = {"broker_reconnect_max_seconds": 0.2, "broker_timeout_seconds": 2.0}


def broker_of(server: RunningRelay) -> RedisBroker:
    broker = server.relay.hub.broker
    assert isinstance(broker, RedisBroker)
    return broker


async def test_broadcast_reaches_consumers_on_every_relay(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """A producer on relay A reaches consumers on A and on B, every message in order."""
    a = await start_relay(broker=redis_server.url)
    b = await start_relay(broker=redis_server.url)
    async with (
        a.websocket("/ws/consumer/news") as on_a,
        b.websocket("/ws/consumer/news") as on_b,
        a.websocket("/ws/producer/news?ack=id") as producer,
    ):
        for i in range(100):
            await producer.send_message(f"m{i}" if i % 2 else f"m{i}".encode())
        acks = [json.loads(await producer.get_message())["id"] for _ in range(100)]
        assert acks == list(range(1, 101))  # the channel's sequence, shared by every relay
        expected = [f"m{i}" if i % 2 else f"m{i}".encode() for i in range(100)]
        for consumer in (on_a, on_b):
            with trio.fail_after(10):
                assert [await consumer.get_message() for _ in range(100)] == expected


async def test_each_producers_order_is_kept_across_relays(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """Two producers on two relays at once: every consumer gets all, each producer in order."""
    a = await start_relay(broker=redis_server.url)
    b = await start_relay(broker=redis_server.url)
    count = 200
    async with (
        a.websocket("/ws/consumer/mix") as on_a,
        b.websocket("/ws/consumer/mix") as on_b,
        a.websocket("/ws/producer/mix?ack=none") as from_a,
        b.websocket("/ws/producer/mix?ack=none") as from_b,
    ):

        async def produce(producer: object, tag: str) -> None:
            for i in range(count):
                await producer.send_message(f"{tag}{i}")  # type: ignore[attr-defined]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce, from_a, "a")
            nursery.start_soon(produce, from_b, "b")
        for consumer in (on_a, on_b):
            with trio.fail_after(10):
                got = [await consumer.get_message() for _ in range(2 * count)]
            for tag in "ab":
                mine = [m for m in got if isinstance(m, str) and m.startswith(tag)]
                assert mine == [f"{tag}{i}" for i in range(count)]


async def test_redis_restart_keeps_consumers_reports_the_gap_and_resumes(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """Redis down: consumers stay, producers get 1013, new clients 503, /healthz 503;
    back: a gap notice, /healthz 200, and delivery resumes."""
    server = await start_relay(broker=redis_server.url, **FAST_RECONNECT)
    broker = broker_of(server)
    async with (
        server.websocket("/ws/consumer/live?notices=true") as consumer,
        server.websocket("/ws/producer/live?ack=id") as producer,
    ):
        await producer.send_message("before")
        assert json.loads(await producer.get_message()) == {"id": 1}
        assert await consumer.get_message() == "before"

        await redis_server.kill()
        with trio.fail_after(10):
            await broker.wait_ready(False)
        health = await server.http.get("/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "broker unavailable"
        assert health.json()["broker"]["ready"] is False
        await producer.send_message("during")
        with pytest.raises(ConnectionClosed) as closed:
            await producer.get_message()
        assert closed.value.reason.code == 1013
        assert "broker is unavailable" in (closed.value.reason.reason or "")
        status, body = await refused_upgrade(server.port, "/ws/producer/live")
        assert (status, b"broker is unavailable" in body) == (503, True)
        status, _ = await refused_upgrade(server.port, "/ws/consumer/other")
        assert status == 503
        response = await server.http.post("/channels/live/messages", content=b"x")
        assert response.status_code == 503

        await redis_server.start()  # same port, empty: what it held is gone
        with trio.fail_after(10):
            await broker.wait_ready(True)
        assert (await server.http.get("/healthz")).status_code == 200
        with trio.fail_after(10):
            notice = json.loads(await consumer.get_message())
        assert notice["triorelay"] == "gap"
        assert notice["count"] is None
        assert "restarted" in notice["reason"]
        async with server.websocket("/ws/producer/live?ack=id") as again:
            await again.send_message("after")
            assert json.loads(await again.get_message()) == {"id": 1}  # Redis starts over
        with trio.fail_after(10):
            assert await consumer.get_message() == "after"
    stats = (await server.http.get("/healthz")).json()["broker"]
    assert stats["reconnects"] == 1
    assert stats["gaps"] == 1


async def test_a_sequence_jump_is_reported_with_its_size(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """Messages trimmed before this relay read them: a gap notice with the exact count."""
    server = await start_relay(broker=redis_server.url)
    async with server.websocket("/ws/consumer/jump?notices=true") as consumer:
        async with server.websocket("/ws/producer/jump?ack=id") as producer:
            await producer.send_message("one")
            assert json.loads(await producer.get_message()) == {"id": 1}
        assert await consumer.get_message() == "one"
        # What a relay sees when 4 messages were trimmed from the stream before it read them.
        async with coredis.Redis.from_url(redis_server.url) as client:
            epoch = (await client.hget("triorelay:meta:jump", "e")).decode()
            await client.xadd("triorelay:ch:jump", {"p": "six", "t": "1"}, identifier=f"{epoch}-6")
            await client.publish("triorelay:n:jump", "")  # as the publish script notifies
        with trio.fail_after(10):
            notice = json.loads(await consumer.get_message())
            assert await consumer.get_message() == "six"
        assert notice == {
            "triorelay": "gap",
            "count": 4,
            "reason": "messages trimmed before this relay read them",
        }
        stats = (await server.http.get("/channels/jump")).json()
        assert (stats["gaps"], stats["dropped"]) == (1, 4)


async def test_a_stream_that_expired_goes_on_in_the_same_epoch_without_a_gap(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """The channel's stream expired (no publish for its time to live) but not its position:
    offsets go on from the last one, in the same epoch; nothing was missed, so no gap."""
    server = await start_relay(broker=redis_server.url)
    async with server.websocket("/ws/consumer/idle?notices=true") as consumer:
        async with server.websocket("/ws/producer/idle?ack=id") as producer:
            for text in ("one", "two"):
                await producer.send_message(text)
                await producer.get_message()
            assert [await consumer.get_message() for _ in range(2)] == ["one", "two"]
            async with coredis.Redis.from_url(redis_server.url) as client:
                await client.delete(["triorelay:ch:idle"])
            await producer.send_message("fresh")
            assert json.loads(await producer.get_message()) == {"id": 3}
        with trio.fail_after(10):
            assert await consumer.get_message() == "fresh"
    assert broker_of(server).gaps == 0


async def test_the_relay_starts_and_waits_while_redis_is_down(start_relay: StartRelay) -> None:
    """No Redis at start-up: the relay serves, answers 503, and connects once Redis is up."""
    redis = RedisServer(free_port())
    server = await start_relay(broker=redis.url, **FAST_RECONNECT)
    assert (await server.http.get("/healthz")).status_code == 503
    status, _ = await refused_upgrade(server.port, "/ws/consumer/later")
    assert status == 503
    await redis.start()
    try:
        with trio.fail_after(10):
            await broker_of(server).wait_ready(True)
        assert (await server.http.get("/healthz")).status_code == 200
        async with (
            server.websocket("/ws/consumer/later") as consumer,
            server.websocket("/ws/producer/later") as producer,
        ):
            await producer.send_message("hello")
            with trio.fail_after(10):
                assert await consumer.get_message() == "hello"
    finally:
        await redis.kill()


async def test_http_publish_reaches_consumers_on_another_relay(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """POST on relay A is delivered to a consumer on relay B, with the shared sequence."""
    a = await start_relay(broker=redis_server.url)
    b = await start_relay(broker=redis_server.url)
    async with b.websocket("/ws/consumer/http") as consumer:
        response = await a.http.post(
            "/channels/http/messages", content="hi", headers={"content-type": "text/plain"}
        )
        assert (response.status_code, response.json()) == (202, {"id": 1})
        with trio.fail_after(10):
            assert await consumer.get_message() == "hi"


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    """Reconnection delays double from the base to the cap, and start over after a success."""
    backoff = Backoff(0.05, 0.3)
    assert [backoff.next() for _ in range(5)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    backoff.reset()
    assert backoff.next() == 0.05


def test_broker_urls_are_checked() -> None:
    """A broker that is neither memory nor a redis:// or rediss:// URL is refused at start."""
    with pytest.raises(SettingsError, match="use 'memory' or a redis://"):
        make_settings(broker="amqp://localhost")


QUEUE = {"channels": {"jobs.*": {"mode": "queue"}}}


async def drained(client: coredis.Redis[Any], key: str) -> None:
    """Every message of queue ``key`` is acknowledged and deleted (the last ack follows the
    last delivery by a round trip, so this waits for it)."""

    async def empty() -> bool:
        return await client.xlen(key) == 0

    await wait_until(empty)


async def test_queue_gives_each_message_to_exactly_one_consumer_anywhere(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """Queue mode over Redis: 4 consumers on 2 relays share 200 messages, each once."""
    a = await start_relay(broker=redis_server.url, **QUEUE)
    b = await start_relay(broker=redis_server.url, **QUEUE)
    count = 200
    got: dict[str, list[str | bytes]] = {}
    done = trio.Event()

    async def consume(server: RunningRelay, tag: str) -> None:
        async with server.websocket("/ws/consumer/jobs.a") as consumer:
            mine = got.setdefault(tag, [])
            while True:
                mine.append(await consumer.get_message())
                if sum(map(len, got.values())) == count:
                    done.set()

    async with trio.open_nursery() as nursery:
        for tag, server in (("a1", a), ("a2", a), ("b1", b), ("b2", b)):
            nursery.start_soon(consume, server, tag)
        async with a.websocket("/ws/producer/jobs.a?ack=id") as producer:
            for i in range(count):
                await producer.send_message(f"job{i}")
            acks = [json.loads(await producer.get_message())["id"] for _ in range(count)]
        assert acks == list(range(1, count + 1))
        with trio.fail_after(20):
            await done.wait()
        nursery.cancel_scope.cancel()
    delivered = [m for messages in got.values() for m in messages]
    assert sorted(delivered) == sorted(f"job{i}" for i in range(count))  # each exactly once
    assert got.get("a1", []) or got.get("a2", [])
    assert got.get("b1", []) or got.get("b2", [])


async def test_a_full_redis_queue_holds_its_producers_back(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """queue_buffer_messages bounds the backlog in Redis: the producer waits for consumers."""
    server = await start_relay(broker=redis_server.url, queue_buffer_messages=5, **QUEUE)
    async with (
        server.websocket("/ws/producer/jobs.b?ack=id") as producer,
        coredis.Redis.from_url(redis_server.url) as client,
    ):
        for i in range(5):
            await producer.send_message(f"job{i}")
        assert [json.loads(await producer.get_message())["id"] for _ in range(5)] == [1, 2, 3, 4, 5]
        for i in range(5, 10):
            await producer.send_message(f"job{i}")
        # The relay has the 6th message in hand (a publish under way) but Redis refuses it.
        await wait_until(
            lambda: server.relay.hub.connection_statistics("jobs.b")[0].messages_in > 5
        )
        assert await client.xlen("triorelay:q:jobs.b") == 5
        async with server.websocket("/ws/consumer/jobs.b") as consumer:
            with trio.fail_after(10):
                got = [await consumer.get_message() for _ in range(10)]
                acks = [json.loads(await producer.get_message())["id"] for _ in range(5)]
        assert got == [f"job{i}" for i in range(10)]
        assert acks == [6, 7, 8, 9, 10]
        await drained(client, "triorelay:q:jobs.b")


async def test_a_queue_consumer_that_leaves_gives_its_message_back_at_once(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """A consumer leaves holding a message it could not send: another relay gets it at once
    (not after the claim time: the relay gives it back)."""
    settings = {"broker": redis_server.url, "redis_claim_idle_seconds": 600, **QUEUE}
    a = await start_relay(**settings)
    b = await start_relay(**settings)
    padding = "x" * 65536
    async with coredis.Redis.from_url(redis_server.url) as client:
        stalled = await RawWebSocket.connect(a.port, "/ws/consumer/jobs.c")  # never reads
        try:
            async with a.websocket("/ws/producer/jobs.c?ack=id") as producer:
                for i in range(20):
                    await producer.send_message(f"job{i}:{padding}")
                for _ in range(20):
                    await producer.get_message()

            async def pending() -> int:
                summary: Any = await client.xpending("triorelay:q:jobs.c", "triorelay")
                return int(summary.pending)

            await wait_until(pending)
            waiting = await client.xlen("triorelay:q:jobs.c")  # not yet handed to a socket
        finally:
            stalled.close()
        async with b.websocket("/ws/consumer/jobs.c") as consumer:
            with trio.fail_after(10):
                got = [await consumer.get_message() for _ in range(waiting)]
        assert len(set(got)) == waiting
        await drained(client, "triorelay:q:jobs.c")


async def test_many_waiting_queue_consumers_do_not_starve_publishes(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """80 queue consumers waiting on one relay (more than coredis's 64-connection pool):
    publishes still go through, and every message is delivered once."""
    server = await start_relay(broker=redis_server.url, **QUEUE)
    count = 80
    got: list[str | bytes] = []
    all_in = trio.Event()

    async def consume(task_status: trio.TaskStatus[None]) -> None:
        async with server.websocket("/ws/consumer/jobs.p") as consumer:
            task_status.started()
            while True:
                got.append(await consumer.get_message())
                if len(got) == count:
                    all_in.set()

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            await nursery.start(consume)
        async with server.websocket("/ws/producer/jobs.p?ack=id") as producer:
            for i in range(count):
                await producer.send_message(f"job{i}")
            with trio.fail_after(10):
                for _ in range(count):
                    await producer.get_message()
                await all_in.wait()
        nursery.cancel_scope.cancel()
    assert sorted(got) == sorted(f"job{i}" for i in range(count))


async def test_a_burst_from_one_producer_is_published_in_order_in_one_batch(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """50 messages in one TCP write (one batch, one Redis round trip): acked with consecutive
    ids and delivered in order on another relay."""
    a = await start_relay(broker=redis_server.url)
    b = await start_relay(broker=redis_server.url)
    async with b.websocket("/ws/consumer/burst") as consumer:
        producer = await RawWebSocket.connect(a.port, "/ws/producer/burst?ack=id", 65536)
        try:
            await producer.send_events(
                *(ws_events.TextMessage(data=f"m{i}") for i in range(25)),
                *(ws_events.BytesMessage(data=f"m{i}".encode()) for i in range(25, 50)),
            )
            with trio.fail_after(10):
                acks = [json.loads(m)["id"] for m in await producer.read_messages(50)]
        finally:
            producer.close()
        assert acks == list(range(1, 51))
        with trio.fail_after(10):
            got = [await consumer.get_message() for _ in range(50)]
        assert got == [f"m{i}" for i in range(25)] + [f"m{i}".encode() for i in range(25, 50)]


async def test_a_stalled_consumer_on_another_relay_is_evicted_and_holds_nothing_up(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """Through Redis the per-consumer policy still applies: a consumer that stops reading on
    relay B is closed with 1013 once its buffer is full; B's other consumer gets everything."""
    size, count = 64 * 1024, 400  # 25 MiB: far more than socket buffers and the buffer hold
    a = await start_relay(broker=redis_server.url, max_message_bytes=size)
    b = await start_relay(
        broker=redis_server.url,
        max_message_bytes=size,
        consumer_buffer_messages=8,
        close_timeout_seconds=30,  # the stalled consumer can still read its close frame
        graceful_timeout_seconds=40,
    )
    stalled = await RawWebSocket.connect(b.port, "/ws/consumer/feed")
    try:
        async with (
            b.websocket("/ws/consumer/feed") as fast,
            a.websocket("/ws/producer/feed?ack=id") as producer,
        ):
            for i in range(count):  # in lockstep with the fast consumer
                await producer.send_message(f"{i:06d}".ljust(size, "."))
                await producer.get_message()
                with trio.fail_after(10):
                    assert (await fast.get_message())[:6] == f"{i:06d}"
            stats = await b.channel("feed")
        _, code, reason = await stalled.read_until_closed()
    finally:
        stalled.close()
    assert (code, "too slow" in (reason or "")) == (1013, True)
    assert stats["disconnected_slow"] == 1


async def test_a_partitioned_redis_is_noticed_and_survived(
    start_relay: StartRelay,
    redis_server: RedisServer,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis unreachable without the connection closing (a partition): the blocked read is
    bounded, so the relay notices (503), fails publishes (1013), and resumes when it heals."""
    monkeypatch.setattr(streams_module, "_BLOCK_MILLISECONDS", 200)
    proxy = TcpProxy(redis_server.port)
    await nursery.start(proxy.run)
    server = await start_relay(
        broker=f"redis://127.0.0.1:{proxy.port}/0",
        broker_timeout_seconds=0.5,
        broker_reconnect_max_seconds=0.2,
    )
    broker = broker_of(server)
    async with server.websocket("/ws/consumer/cut") as consumer:
        async with server.websocket("/ws/producer/cut") as producer:
            await producer.send_message("before")
            assert await producer.get_message() == "before"
        assert await consumer.get_message() == "before"

        proxy.cut()
        with trio.fail_after(10):
            await broker.wait_ready(False)
        assert (await server.http.get("/healthz")).status_code == 503

        proxy.mend()
        with trio.fail_after(10):
            await broker.wait_ready(True)
        async with server.websocket("/ws/producer/cut") as producer:
            await producer.send_message("after")
            assert await producer.get_message() == "after"
        with trio.fail_after(10):
            assert await consumer.get_message() == "after"


async def test_a_read_for_a_channel_left_and_joined_again_is_not_delivered() -> None:
    """What the reader read for a consumer that left is not given to the next one to join
    (it starts after what was published before it): the read's watch must be current."""
    delivered: list[object] = []

    async def deliver(
        name: str, item: object, offset: int, epoch: str, trace: object = None
    ) -> None:
        delivered.append(item)

    streams = RedisBroker(make_settings(broker="redis://127.0.0.1:1/0"), deliver).streams
    entry = StreamEntry(
        identifier=b"1-0", field_values=OrderedDict([(b"p", b"old"), (b"t", b"1"), (b"s", b"1")])
    )
    streams.watch("c")
    old_watch = streams._watches["c"]
    streams.unwatch("c")
    streams.watch("c")  # joined again: a new watch
    await streams._deliver("c", old_watch, (entry,))
    assert delivered == []
    await streams._deliver("c", streams._watches["c"], (entry,))
    assert delivered == ["old"]


async def test_queue_consumers_before_any_publish_make_the_group_and_wait_quietly(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """Two queue consumers of a channel nothing was published on yet (Redis answers NOGROUP)
    create the consumer group (one of them finds it made: BUSYGROUP) and its stream, which
    expires as a published one would, and wait for messages, with no error recorded."""
    settings = make_settings(broker=redis_server.url, **QUEUE)
    hub = Hub(settings, broker_factory(settings))
    await nursery.start(hub.broker.run)
    key = "triorelay:q:jobs.new"
    async with coredis.Redis.from_url(redis_server.url) as client:
        with hub.attach_consumer("jobs.new") as first, hub.attach_consumer("jobs.new") as second:
            received: list[str | bytes] = []

            async def receive_one(consumer: Consumer) -> None:
                received.append(await consumer.receive())
                await consumer.acknowledge()

            async def groups() -> Any:
                if not await client.exists([key]):
                    return None
                return await client.xinfo_groups(key)

            nursery.start_soon(receive_one, first)
            nursery.start_soon(receive_one, second)
            made: Any = await wait_until(groups)
            assert [group[b"name"] for group in made] == [b"triorelay"]
            assert 0 < await client.pttl(key) <= 3600 * 1000
            with hub.attach_producer("jobs.new") as producer:
                assert await producer.publish("first") == 1
                assert await producer.publish("second") == 2
            await wait_until(lambda: len(received) == 2)
        assert sorted(received) == ["first", "second"]
    assert hub.broker.statistics()["last_error"] is None


#: A consumer id no hub connection has, for a consumer that read a queue outside the hub.
GONE_READER = 1_000_000


async def test_a_release_for_a_queue_that_is_gone_holds_up_no_other_release(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """Giving back for a queue whose stream is gone (expired, or Redis restarted: NOGROUP)
    is done at once, so the release queued after it still gives its message back at once."""
    settings = make_settings(broker=redis_server.url, redis_claim_idle_seconds=600, **QUEUE)
    hub = Hub(settings, broker_factory(settings))
    await nursery.start(hub.broker.run)
    gone = hub.broker.queue("jobs.gone")
    assert gone is not None
    await hub.broker.publish("jobs.gone", "queue", ["taken"], [])
    await gone.take(GONE_READER)  # a consumer of it, to be released
    async with coredis.Redis.from_url(redis_server.url) as client:
        await client.delete(["triorelay:q:jobs.gone"])
    with hub.attach_producer("jobs.live") as producer:
        assert await producer.publish("job") == 1
    with trio.fail_after(10):
        with hub.attach_consumer("jobs.live") as leaving:
            assert await leaving.receive() == "job"  # taken, not acknowledged
            gone.release(GONE_READER)  # queued first
        with hub.attach_consumer("jobs.live") as consumer:  # the claim time is 600 s
            assert await consumer.receive() == "job"
            await consumer.acknowledge()
    assert hub.broker.statistics()["last_error"] is None


async def test_a_release_redis_refuses_is_dropped_and_holds_up_no_other_release(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """A release Redis refuses (the queue's key is a string: WRONGTYPE, whatever the retry)
    is dropped and counted, so the release queued after it still gives its message back."""
    settings = make_settings(broker=redis_server.url, redis_claim_idle_seconds=600, **QUEUE)
    hub = Hub(settings, broker_factory(settings))
    await nursery.start(hub.broker.run)
    broken = hub.broker.queue("jobs.broken")
    assert broken is not None
    with hub.attach_producer("jobs.live") as producer:
        assert await producer.publish("job") == 1
    await hub.broker.publish("jobs.broken", "queue", ["taken"], [])
    await broken.take(GONE_READER)  # a consumer of it, to be released
    async with coredis.Redis.from_url(redis_server.url) as client:
        await client.delete(["triorelay:q:jobs.broken"])
        await client.set("triorelay:q:jobs.broken", "not a stream")
        with trio.fail_after(10):
            with hub.attach_consumer("jobs.live") as leaving:
                assert await leaving.receive() == "job"  # taken, not acknowledged
                broken.release(GONE_READER)  # queued first
            with hub.attach_consumer("jobs.live") as consumer:  # the claim time is 600 s
                assert await consumer.receive() == "job"
                await consumer.acknowledge()
    statistics = hub.broker.statistics()
    assert statistics["queue_releases_dropped"] == 1
    assert "wrong kind of value" in statistics["last_error"]


async def test_queue_releases_past_max_connections_are_dropped_and_counted(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """A queue consumer that never read has nothing to release; of those that did, at most
    ``max_connections`` releases wait to be written: one more is dropped and counted."""
    settings = make_settings(broker=redis_server.url, max_connections=2, **QUEUE)
    broker = broker_factory(settings)(Deliveries().deliver)
    await nursery.start(broker.run)
    queue = broker.queue("jobs.q")
    assert isinstance(broker, RedisBroker)
    assert queue is not None
    with trio.fail_after(10):
        await broker.publish("jobs.q", "queue", ["a", "b", "c"], [])
        for consumer in (1, 2, 3):
            await queue.take(consumer)
        queue.release(9)  # never read
        for consumer in (1, 2, 3):
            queue.release(consumer)
        dropped = broker.statistics()["queue_releases_dropped"]
        await broker.flush()
    assert dropped == 1


async def test_queue_consumers_past_the_blocking_bound_wait_their_turn(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """redis_max_blocking_connections=2 and 3 waiting queue consumers: 2 block in Redis, the
    third waits in the relay (counted in statistics) and takes its turn when one returns;
    every message is delivered once and no error is recorded."""
    settings = make_settings(broker=redis_server.url, redis_max_blocking_connections=2, **QUEUE)
    hub = Hub(settings, broker_factory(settings))
    await nursery.start(hub.broker.run)
    count = 9
    send_got, got = trio.open_memory_channel[tuple[int, str | bytes]](count)

    async def consume(index: int, *, task_status: trio.TaskStatus[None]) -> None:
        with hub.attach_consumer("jobs.bound") as consumer:
            task_status.started()
            while True:
                message = await consumer.receive()
                await consumer.acknowledge()
                await send_got.send((index, message))

    def waiting_as_bounded() -> bool:
        stats = hub.broker.statistics()
        return (stats["blocking_reads"], stats["blocking_reads_waiting"]) == (2, 1)

    received: dict[int, list[str | bytes]] = {0: [], 1: [], 2: []}
    async with coredis.Redis.from_url(redis_server.url) as client, trio.open_nursery() as inner:
        for index in range(3):
            await inner.start(consume, index)
        await wait_until(waiting_as_bounded)
        info: Any = await client.info("clients")
        # The two queue consumers (the broadcast reader waits on a subscription instead).
        assert info["blocked_clients"] == 2
        with trio.fail_after(10), hub.attach_producer("jobs.bound") as producer:
            for i in range(count):  # in lockstep: each message finds the consumers waiting
                await producer.publish(f"job{i}")
                index, message = await got.receive()
                received[index].append(message)
        await wait_until(waiting_as_bounded)
        inner.cancel_scope.cancel()
    delivered = [message for messages in received.values() for message in messages]
    assert sorted(delivered) == sorted(f"job{i}" for i in range(count))  # each exactly once
    assert all(received.values())  # the one past the bound got its turns too
    assert hub.broker.statistics()["last_error"] is None


async def test_a_channel_not_watched_is_not_delivered(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """The reader reads only watched channels: a publish on another channel reaches Redis
    but not ``deliver``, while the watched channel's later message does."""
    deliveries = Deliveries()
    broker = RedisBroker(make_settings(broker=redis_server.url), deliveries.deliver)
    await nursery.start(broker.run)
    broker.watch("watched")
    published: list[int] = []
    with trio.fail_after(10):
        await broker.wait_watching("watched")
        await broker.publish("unwatched", "broadcast", ["not for us"], published)
        await broker.publish("watched", "broadcast", ["for us"], published)
        assert await deliveries.wait_for(1) == [("watched", "for us")]
    assert published == [1, 1]
    async with coredis.Redis.from_url(redis_server.url) as client:
        assert await client.xlen("triorelay:ch:unwatched") == 1


async def test_a_malformed_stream_entry_is_skipped_counted_and_reading_goes_on(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """An entry no relay wrote (no sequence number, an unknown type) is skipped and counted;
    the consumer gets the messages around it, and the reader keeps running."""
    relay = await start_relay(broker=redis_server.url)
    async with (
        relay.websocket("/ws/consumer/odd") as consumer,
        relay.websocket("/ws/producer/odd?ack=id") as producer,
        coredis.Redis.from_url(redis_server.url) as client,
    ):
        await producer.send_message("before")
        assert await consumer.get_message() == "before"
        # Entries of another writer, at offsets 2 and 3 of the channel's epoch.
        epoch = (await client.hget("triorelay:meta:odd", "e")).decode()
        await client.xadd("triorelay:ch:odd", {"p": "x"}, identifier=f"{epoch}-2")  # no "t"
        await client.xadd("triorelay:ch:odd", {"p": "x", "t": "9"}, identifier=f"{epoch}-3")
        await client.hincrby("triorelay:meta:odd", "o", 2)
        await producer.send_message("after")
        with trio.fail_after(10):
            assert await consumer.get_message() == "after"
        assert broker_of(relay).statistics()["malformed_entries"] == 2
        assert relay.relay.supervisor.tasks["broker"].restarts == 0


async def test_a_publish_during_a_short_outage_waits_for_redis_and_succeeds(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """Redis down for less than broker_timeout_seconds: the producer's publish waits for the
    reconnection and is acknowledged; the producer is not closed."""
    server = await start_relay(broker=redis_server.url, broker_timeout_seconds=8)
    broker = broker_of(server)
    async with (
        server.websocket("/ws/consumer/brief?notices=true") as consumer,
        server.websocket("/ws/producer/brief?ack=id") as producer,
    ):
        await producer.send_message("before")
        assert json.loads(await producer.get_message()) == {"id": 1}
        assert await consumer.get_message() == "before"
        await redis_server.kill()
        with trio.fail_after(10):
            await broker.wait_ready(False)
        await producer.send_message("during")
        await redis_server.start()  # empty: its sequence starts again
        with trio.fail_after(10):
            ack = json.loads(await producer.get_message())
        assert ack == {"id": 1}
        assert not producer.closed
        with trio.fail_after(10):
            got = [await consumer.get_message() for _ in range(2)]
        assert json.loads(got[0])["triorelay"] == "gap"
        assert got[1] == "during"


async def test_a_client_that_wants_redis_cuts_the_reconnection_backoff_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """want_ready() ends the wait for the next connection attempt at once, but never sooner
    than RETRY_MIN_SECONDS after the last one."""
    from triorelay.brokers.redis.connection import RETRY_MIN_SECONDS, RedisConnection

    connection = RedisConnection(make_settings(broker="redis://127.0.0.1:1/0"))
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        done = trio.Event()

        async def wait() -> None:
            await connection._until_next_attempt(30)
            done.set()

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        connection.want_ready()
        with trio.fail_after(1):
            await done.wait()
        assert trio.current_time() - started == pytest.approx(RETRY_MIN_SECONDS)


async def test_a_redis_queue_with_a_backlog_never_expires(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """A queue holding messages has no time to live (its producers were acknowledged); once
    its last message is acknowledged, its keys expire again."""
    relay = await start_relay(broker=redis_server.url, redis_stream_ttl_seconds=60, **QUEUE)
    async with coredis.Redis.from_url(redis_server.url) as client:
        async with relay.websocket("/ws/producer/jobs.keep?ack=id") as producer:
            await producer.send_message("job")
            assert json.loads(await producer.get_message()) == {"id": 1}
        assert await client.pttl("triorelay:q:jobs.keep") == -1  # no expiry while it holds one
        assert await client.pttl("triorelay:qseq:jobs.keep") == -1
        async with relay.websocket("/ws/consumer/jobs.keep") as consumer:
            assert await consumer.get_message() == "job"
            await drained(client, "triorelay:q:jobs.keep")
            ttl = await wait_until(
                lambda: _pttl(client, "triorelay:q:jobs.keep"), timeout_seconds=10
            )
        assert 0 < ttl <= 60_000


async def _pttl(client: Any, key: str) -> int | None:
    ttl = int(await client.pttl(key))
    return ttl if ttl > 0 else None


async def test_a_redis_at_maxmemory_is_reported_as_such(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """Redis refusing writes at maxmemory: the producer gets 1013 and HTTP 503 with that
    reason, counted in /healthz, and the relay stays connected."""
    relay = await start_relay(broker=redis_server.url)
    async with coredis.Redis.from_url(redis_server.url) as client:
        await client.config_set({"maxmemory-policy": "noeviction"})  # Redis 6.2: one at a time
        await client.config_set({"maxmemory": "1"})
        answer = await relay.http.post("/channels/full/messages", content=b"x")
        assert answer.status_code == 503
        assert "out of memory" in answer.json()["error"]
        async with relay.websocket("/ws/producer/full?ack=id") as producer:
            await producer.send_message("x")
            with pytest.raises(ConnectionClosed) as closed:
                await producer.get_message()
        assert closed.value.reason.code == 1013
        assert "out of memory" in (closed.value.reason.reason or "")
        stats = broker_of(relay).statistics()
        assert (stats["out_of_memory"], stats["ready"]) == (2, True)
        await client.config_set({"maxmemory": "0"})
        assert (await relay.http.post("/channels/full/messages", content=b"x")).status_code == 202


async def test_a_blocked_channel_does_not_hold_up_other_channels_on_redis(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """Under ``block``, a stalled consumer of one channel holds up that channel only: the
    relay's reader goes on delivering every other channel at once."""
    relay = await start_relay(
        broker=redis_server.url,
        ping_interval_seconds=None,
        channels={"slow.*": {"slow_consumer_policy": "block", "consumer_buffer_messages": 1}},
    )
    stalled = await RawWebSocket.connect(relay.port, "/ws/consumer/slow.x")  # never reads
    try:
        async with (
            relay.websocket("/ws/consumer/fast.x") as fast,
            relay.websocket("/ws/producer/slow.x?ack=none") as slow_producer,
            relay.websocket("/ws/producer/fast.x?ack=none") as fast_producer,
        ):
            big = "x" * 256 * 1024
            for _ in range(60):  # 15 MiB: more than the stalled socket holds
                await slow_producer.send_message(big)

            # The stalled channel's delivery now waits (block_timeout_seconds is 30 s): its
            # consumer's buffer is full and the relay has more of its messages in hand.
            async def slow_is_blocked() -> bool:
                stats = await relay.channel("slow.x")
                return bool(stats["buffered"] == 1 and stats["messages_delivered"] >= 2)

            await wait_until(slow_is_blocked)
            for i in range(20):
                await fast_producer.send_message(f"fast{i}")
            with trio.fail_after(5):
                got = [await fast.get_message() for _ in range(20)]
            assert got == [f"fast{i}" for i in range(20)]
    finally:
        stalled.close()


async def test_a_publish_under_way_when_redis_restarts_is_sent_again_and_acknowledged(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """Redis restarts under a live producer (its next publish races the relay noticing):
    the publish waits for the new Redis, is sent again there, and is acknowledged."""
    server = await start_relay(broker=redis_server.url, broker_timeout_seconds=8)
    async with server.websocket("/ws/producer/race?ack=id") as producer:
        await producer.send_message("before")
        assert json.loads(await producer.get_message()) == {"id": 1}
        for i in range(3):
            await redis_server.kill()
            await producer.send_message(f"during{i}")  # at once: the relay may not know yet
            await redis_server.start()
            with trio.fail_after(10):
                assert json.loads(await producer.get_message()) == {"id": 1}  # a new Redis
        assert not producer.closed


async def test_a_publish_cut_by_a_broken_connection_is_sent_again_only_to_a_new_redis() -> None:
    """A publish whose connection broke is sent once more when the Redis it reconnected to
    restarted (a new run_id: the first try's write is gone), never to the same Redis."""
    from triorelay.brokers.redis.connection import ConnectionLost

    async def deliver(
        name: str, item: object, offset: int, epoch: str, trace: object = None
    ) -> None:
        raise AssertionError("nothing is read here")

    broker = RedisBroker(make_settings(broker="redis://127.0.0.1:1/0"), deliver)
    connection = broker.connection
    connection._ready, connection._run_id = True, "first"
    tries: list[str] = []

    async def publish_across_a_restart(what: str) -> int:
        tries.append(what)
        if len(tries) == 1:
            connection._run_id = "second"  # reconnected to a Redis that restarted
            raise ConnectionLost("the broker is unavailable: message not published")
        return 7

    assert await broker._once_more_after_a_restart(publish_across_a_restart, "m") == 7
    assert tries == ["m", "m"]

    tries.clear()

    async def publish_to_the_same_redis(what: str) -> int:
        tries.append(what)
        raise ConnectionLost("the broker is unavailable: message not published")

    with pytest.raises(ConnectionLost):
        await broker._once_more_after_a_restart(publish_to_the_same_redis, "m")
    assert tries == ["m"]


async def test_per_queue_claim_times_are_bounded(
    start_relay: StartRelay, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next-claim time kept per queue name never exceeds MAX_CLAIM_TIMES entries, however
    many queue names consumers have read."""
    from triorelay.brokers.redis import queues as queues_module

    monkeypatch.setattr(queues_module, "MAX_CLAIM_TIMES", 5)
    relay = await start_relay(broker=redis_server.url, **QUEUE)
    queues = broker_of(relay).queues
    for i in range(12):
        name = f"jobs.n{i}"
        with contextlib.suppress(coredis.exceptions.StreamConsumerGroupError):
            await queues._claim(name, queues.key(name), queues.consumer_name(1))  # no group yet
        assert len(queues._next_claim) <= 5
    assert len(queues._next_claim) >= 1
