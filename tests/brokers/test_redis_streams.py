"""The Redis broadcast path's own mechanics: notified reads, catching up, pipelined publishes."""

from __future__ import annotations

import time
from typing import Any

import coredis
import pytest
import trio
from coredis.tokens import PureToken

import triorelay.brokers.redis.lean as lean
import triorelay.brokers.redis.streams as streams_module
from tests.brokers.conftest import HANG_GUARD_SECONDS, Deliveries
from tests.conftest import make_settings
from tests.helpers import wait_until
from tests.redis_server import RedisServer
from triorelay.brokers import broker_factory
from triorelay.brokers.base import Gap
from triorelay.brokers.redis import RedisBroker
from triorelay.brokers.redis.streams import _PUBLISH
from triorelay.envelopes import Payload
from triorelay.errors import BrokerUnavailable


async def started(
    nursery: trio.Nursery, server: RedisServer, deliveries: Deliveries, **overrides: Any
) -> RedisBroker:
    settings = make_settings(broker=server.url, **overrides)
    broker = broker_factory(settings)(deliveries.deliver)
    assert isinstance(broker, RedisBroker)
    await nursery.start(broker.run)
    return broker


async def watching(broker: RedisBroker, *names: str) -> None:
    for name in names:
        broker.watch(name)
        await broker.wait_watching(name)


def payloads_of(deliveries: Deliveries, name: str) -> list[Payload]:
    return [item for channel, item in deliveries.items if channel == name]  # type: ignore[misc]


async def test_a_busy_channel_is_read_without_reading_the_idle_ones(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """With 200 idle watched channels, the messages of a busy one come in its notifications:
    once the channels are joined, no XREAD at all (let alone one naming the idle streams)."""
    deliveries = Deliveries()
    broker = await started(nursery, redis_server, deliveries)
    streams = broker.streams
    with trio.fail_after(HANG_GUARD_SECONDS):
        await watching(broker, *(f"idle{i}" for i in range(200)), "busy")
        published: list[int] = []
        # Its first message follows no read entry (the stream was empty): read from the
        # stream, after the joins' own reads (the reader does those before it listens).
        await broker.publish("busy", "broadcast", ["first"], published)
        await deliveries.wait_for(1)
        reads = streams.reads
        for i in range(50):
            await broker.publish("busy", "broadcast", [f"m{i}"], published)
        await deliveries.wait_for(51)
    assert payloads_of(deliveries, "busy") == ["first", *(f"m{i}" for i in range(50))]
    assert streams.reads == reads


async def test_a_missed_notification_is_caught_up_from_the_stream_in_order(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """A message whose notification never came (published to a notification channel nobody
    hears) is read from the stream when the next notification shows the jump: every message
    arrives, in order, with no gap reported."""
    deliveries = Deliveries()
    broker = await started(nursery, redis_server, deliveries)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await watching(broker, "c")
        published: list[int] = []
        await broker.publish("c", "broadcast", ["one"], published)
        await deliveries.wait_for(1)
        async with coredis.Redis.from_url(redis_server.url) as client:
            info: Any = await client.info("server")
            # The relay's own script, notifying a channel no relay subscribed to.
            await client.eval(
                _PUBLISH,
                keys=["triorelay:ch:c", "triorelay:meta:c"],
                args=[
                    "1000", "60000", "60000", str(time.time_ns() // 1_000_000), "1", "60000",
                    "0", info["run_id"], "triorelay:nobody:c", b"two", b"1", b"",
                ],
            )  # fmt: skip
        reads = broker.streams.reads
        await broker.publish("c", "broadcast", ["three"], published)
        await deliveries.wait_for(3)
    assert payloads_of(deliveries, "c") == ["one", "two", "three"]
    assert [offset for offset, _ in deliveries.positions] == [1, 2, 3]
    assert broker.gaps == 0
    assert broker.streams.reads == reads + 1  # the one read that caught up


async def test_what_was_published_while_the_subscription_was_down_is_read_on_reconnection(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """Redis drops the reader's subscription (its notifications for that while are lost): the
    reader reconnects and reads every watched stream once, so nothing is lost."""
    deliveries = Deliveries()
    reader = await started(nursery, redis_server, deliveries, broker_reconnect_max_seconds=0.1)
    writer = await started(nursery, redis_server, Deliveries())
    with trio.fail_after(HANG_GUARD_SECONDS):
        await watching(reader, "a", "b")
        full_reads = reader.streams.full_reads
        published: list[int] = []
        await writer.publish("a", "broadcast", ["a1"], published)
        await deliveries.wait_for(1)
        async with coredis.Redis.from_url(redis_server.url) as client:
            await client.client_kill(type_=PureToken.PUBSUB)
        for name, text in (("a", "a2"), ("b", "b3"), ("a", "a4")):
            await writer.publish(name, "broadcast", [text], published)
        await deliveries.wait_for(4)
    assert payloads_of(deliveries, "a") == ["a1", "a2", "a4"]
    assert payloads_of(deliveries, "b") == ["b3"]
    assert reader.streams.full_reads > full_reads
    assert reader.gaps == 0


async def test_concurrent_publishes_share_round_trips_each_with_its_own_order_and_errors(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """Twenty producers at once on four channels, one of them broken (its position key is
    not a hash): publishes share round trips, each producer's messages keep its order, and
    only the broken channel's producers are refused."""
    deliveries = Deliveries()
    broker = await started(nursery, redis_server, deliveries)
    async with coredis.Redis.from_url(redis_server.url) as client:
        await client.set("triorelay:meta:broken", "not a hash")
    results: dict[int, list[int]] = {}
    refused: list[int] = []

    async def produce(index: int) -> None:
        name = "broken" if index % 4 == 3 else f"ch{index % 4}"
        published: list[int] = []
        try:
            for i in range(10):
                await broker.publish(name, "broadcast", [f"p{index}-{i}"], published)
        except BrokerUnavailable:
            refused.append(index)
        results[index] = published

    pipeline = broker.streams.pipeline
    round_trips, commands = pipeline.round_trips, pipeline.commands
    with trio.fail_after(HANG_GUARD_SECONDS):
        async with trio.open_nursery() as producers:
            for index in range(20):
                producers.start_soon(produce, index)
    assert sorted(refused) == [i for i in range(20) if i % 4 == 3]
    for index, published in results.items():
        if index % 4 != 3:
            assert published == sorted(published)  # in order
            assert len(published) == 10
    per_channel = [sorted(o for i, p in results.items() if i % 4 == c for o in p) for c in range(3)]
    assert all(offsets == list(range(1, 51)) for offsets in per_channel)  # none lost, none twice
    assert pipeline.commands - commands >= 2 * (pipeline.round_trips - round_trips)


async def test_a_publish_asks_redis_nothing_but_its_script(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """The publish script is told the run id of the Redis its connection reached: no INFO per
    publish (Redis's own command counts say so)."""
    broker = await started(nursery, redis_server, Deliveries())
    async with coredis.Redis.from_url(redis_server.url) as client:

        async def calls() -> tuple[int, int]:
            stats: Any = await client.info("commandstats")
            counts = [
                stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("info", "evalsha")
            ]
            return int(counts[0]), int(counts[1])

        published: list[int] = []
        await broker.publish("c", "broadcast", ["warm"], published)  # loads the script
        before = await calls()
        for i in range(20):
            await broker.publish("c", "broadcast", [f"m{i}"], published)
        after = await calls()
    assert after[0] - before[0] == 1  # this test's own INFO, counted once it ran
    assert after[1] - before[1] == 20


@pytest.mark.parametrize("flush", [False, True])
async def test_a_redis_that_lost_its_scripts_gets_the_script_whole(
    nursery: trio.Nursery, redis_server: RedisServer, flush: bool
) -> None:
    """After SCRIPT FLUSH (as after a restart), the next publish is sent whole and succeeds."""
    deliveries = Deliveries()
    broker = await started(nursery, redis_server, deliveries)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await watching(broker, "c")
        published: list[int] = []
        await broker.publish("c", "broadcast", ["one"], published)
        if flush:
            async with coredis.Redis.from_url(redis_server.url) as client:
                await client.script_flush()
        await broker.publish("c", "broadcast", ["two"], published)
        await deliveries.wait_for(2)
    assert published == [1, 2]
    assert payloads_of(deliveries, "c") == ["one", "two"]


async def test_the_lean_path_logs_in_and_uses_the_urls_database(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """A Redis with a password, and a database other than 0: publishes and reads of the lean
    path log in and select it, as coredis does for the rest."""
    async with coredis.Redis.from_url(redis_server.url) as client:
        await client.config_set({"requirepass": "s3cret"})
    url = f"redis://:s3cret@127.0.0.1:{redis_server.port}/3"
    deliveries = Deliveries()
    settings = make_settings(broker=url)
    broker = broker_factory(settings)(deliveries.deliver)
    assert isinstance(broker, RedisBroker)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await nursery.start(broker.run)
        await watching(broker, "c")
        published: list[int] = []
        for text in ("one", "two"):
            await broker.publish("c", "broadcast", [text], published)
        await deliveries.wait_for(2)
    assert payloads_of(deliveries, "c") == ["one", "two"]
    async with coredis.Redis.from_url(url) as client:
        assert await client.xlen("triorelay:ch:c") == 2  # in database 3


async def test_a_channel_left_and_joined_again_at_once_stays_subscribed(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """Leaving a channel unsubscribes from its notifications later, in the reader; joining it
    again first cancels that, and a join after it was sent subscribes again after it: either
    way the channel's messages still come (through notifications, not reads)."""
    deliveries = Deliveries()
    broker = await started(nursery, redis_server, deliveries)
    published: list[int] = []
    with trio.fail_after(HANG_GUARD_SECONDS):
        await watching(broker, "c", "other")
        await broker.publish("c", "broadcast", ["first"], published)  # read: the stream was new
        await deliveries.wait_for(1)
        broker.unwatch("c")
        await watching(broker, "c")  # before the reader sent the unsubscription
        await broker.publish("c", "broadcast", ["second"], published)
        await deliveries.wait_for(2)
        broker.unwatch("c")
        await broker.publish("other", "broadcast", ["o"], published)  # the reader runs
        await deliveries.wait_for(3)
        await watching(broker, "c")  # after it
        reads = broker.streams.reads
        await broker.publish("c", "broadcast", ["third"], published)
        await broker.publish("c", "broadcast", ["fourth"], published)
        await deliveries.wait_for(5)
    assert payloads_of(deliveries, "c") == ["first", "second", "third", "fourth"]
    # At most the join's own read: "third" and "fourth" came in their notifications.
    assert broker.streams.reads <= reads + 1


async def test_a_new_epoch_sorts_after_the_old_one_whatever_the_relays_clock(
    nursery: trio.Nursery, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis lost a watched channel's keys (flushed, evicted, expired) and the relay that
    publishes next runs an hour behind the one that numbered the old epoch: the new epoch
    still sorts after the old one (Redis's clock numbers them), so the reader, still at the
    old history's last id, reads on: a gap (the new epoch), then the message. Numbered by the
    publisher's clock, the new ids sorted below what the reader had read, and it took every
    new message for one read already: the channel went silent on that relay."""
    deliveries = Deliveries()
    broker = await started(nursery, redis_server, deliveries)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await watching(broker, "c")
        published: list[int] = []
        await broker.publish("c", "broadcast", ["one"], published)
        await deliveries.wait_for(1)
        old_epoch = deliveries.positions[0][1]
        async with coredis.Redis.from_url(redis_server.url) as client:
            await client.flushall()
        an_hour_ago = str(time.time_ns() // 1_000_000 - 3_600_000)
        monkeypatch.setattr(streams_module, "_now_ms", lambda: an_hour_ago)
        await broker.publish("c", "broadcast", ["two"], published)
        await broker.publish("c", "broadcast", ["three"], published)
        items = await deliveries.wait_for(4)
    assert published == [1, 1, 2]
    gap = items[1][1]
    assert isinstance(gap, Gap)
    assert gap.reason == "the channel's history was lost: a new epoch began"
    assert payloads_of(deliveries, "c")[2:] == ["two", "three"]
    new_epoch = deliveries.positions[2][1]
    assert int(new_epoch) > int(old_epoch)
    assert [offset for offset, _ in deliveries.positions[2:]] == [1, 2]


class FailingOnce(Deliveries):
    """Deliveries whose delivery of ``fail_on`` raises once (a bug in the hub, say)."""

    def __init__(self, fail_on: Payload) -> None:
        super().__init__()
        self.fail_on: Payload | None = fail_on

    async def deliver(
        self, name: str, item: Payload | Gap, offset: int, epoch: str, trace: object = None
    ) -> None:
        if item == self.fail_on:
            self.fail_on = None
            raise RuntimeError("a delivery failed")
        await super().deliver(name, item, offset, epoch, trace)


async def test_after_a_failed_delivery_one_gap_stands_for_what_was_dropped(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """A delivery that raises drops the rest of its batch, reported as one gap; the next
    message is delivered after it as it is, not behind a second gap (and a count of dropped
    messages) as if the stream had been trimmed."""
    deliveries = FailingOnce(fail_on="a")
    broker = await started(nursery, redis_server, deliveries)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await watching(broker, "c")
        published: list[int] = []
        await broker.publish("c", "broadcast", ["a", "b", "c"], published)
        await deliveries.wait_for(1)
        await broker.publish("c", "broadcast", ["d"], published)
        items = await deliveries.wait_for(2)
    gap = items[0][1]
    assert isinstance(gap, Gap)
    assert (gap.count, gap.reason) == (None, "a delivery failed on this relay")
    assert items[1:] == [("c", "d")]
    assert broker.gaps == 1


class HeldThenFailing(FailingOnce):
    """:class:`FailingOnce` on ``"m1"``, whose delivery first waits for :attr:`release`, and
    whose delivery of a gap waits for :attr:`gap_may_go` (as the hub's may, for a ``block``
    consumer), while the reader goes on."""

    def __init__(self) -> None:
        super().__init__(fail_on="m1")
        self.holding = trio.Event()
        self.release = trio.Event()
        self.gap_may_go = trio.Event()

    async def deliver(
        self, name: str, item: Payload | Gap, offset: int, epoch: str, trace: object = None
    ) -> None:
        if item == self.fail_on:
            self.holding.set()
            await self.release.wait()
        elif isinstance(item, Gap):
            await self.gap_may_go.wait()
        await super().deliver(name, item, offset, epoch, trace)


async def test_a_channel_left_out_of_reads_is_read_again_after_a_failed_delivery(
    nursery: trio.Nursery, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``block`` channel's deliveries wait (its drain holds "m1"), so the reader queues what
    follows up to its bound (two batches of one) and leaves the rest in the stream. When the
    held delivery fails, what was queued is dropped as one gap, and what was left in the
    stream is read and delivered after it, without waiting for another publish, even when
    the reader queues it while the gap's own delivery still waits (the drain goes on with
    it: nothing else would)."""
    deliveries = HeldThenFailing()
    broker = await started(
        nursery,
        redis_server,
        deliveries,
        redis_read_batch_messages=1,
        slow_consumer_policy="block",
    )
    streams = broker.streams
    handled = trio.Event()
    notifications: list[bytes] = []
    notification = streams._notification

    async def counted(key: bytes, data: bytes) -> None:
        await notification(key, data)
        notifications.append(data)
        if len(notifications) == 4:
            handled.set()

    monkeypatch.setattr(streams, "_notification", counted)
    accept = streams._accept

    async def accepting(name: str, watch: Any, entries: Any) -> None:
        await accept(name, watch, entries)
        if deliveries.release.is_set():  # m4, read from the stream after the failure
            deliveries.gap_may_go.set()

    monkeypatch.setattr(streams, "_accept", accepting)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await watching(broker, "c")
        published: list[int] = []
        await broker.publish("c", "broadcast", ["m1"], published)
        await deliveries.holding.wait()
        for text in ("m2", "m3", "m4"):
            await broker.publish("c", "broadcast", [text], published)
        await handled.wait()  # m2 and m3 queued, m4 left in the stream
        deliveries.release.set()
        items = await deliveries.wait_for(2)
    gap = items[0][1]
    assert isinstance(gap, Gap)
    assert (gap.count, gap.reason) == (None, "a delivery failed on this relay")
    assert items[1:] == [("c", "m4")]
    assert broker.gaps == 1


async def test_a_channel_left_while_the_reader_subscribes_again_is_unsubscribed(
    nursery: trio.Nursery, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader reconnects and subscribes to every watched channel; one of them loses its
    last consumer before Redis confirmed (there is no subscriber to unsubscribe through yet):
    it is unsubscribed at the reader's first wait, not kept until the next reconnection with
    every publish on it sent to this relay for nothing."""
    deliveries = Deliveries()
    broker = await started(nursery, redis_server, deliveries, broker_reconnect_max_seconds=0.1)
    subscribe_reading = lean.Subscriber.subscribe_reading
    reconnecting = False

    async def leaving_meanwhile(self: lean.Subscriber, channels: Any) -> None:
        if reconnecting:
            broker.unwatch("gone")
        await subscribe_reading(self, channels)

    monkeypatch.setattr(lean.Subscriber, "subscribe_reading", leaving_meanwhile)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await watching(broker, "gone", "kept")
        published: list[int] = []
        async with coredis.Redis.from_url(redis_server.url) as client:
            assert await client.pubsub_numsub("triorelay:n:gone") == {b"triorelay:n:gone": 1}
            reconnecting = True
            await client.client_kill(type_=PureToken.PUBSUB)
            # The first is read from the stream by the reconnected reader (its full read),
            # the second comes as a notification, in the wait that sends the unsubscription.
            await broker.publish("kept", "broadcast", ["k1"], published)
            await deliveries.wait_for(1)
            await broker.publish("kept", "broadcast", ["k2"], published)
            await deliveries.wait_for(2)
            numsub = await client.pubsub_numsub("triorelay:n:gone", "triorelay:n:kept")
    assert payloads_of(deliveries, "kept") == ["k1", "k2"]
    assert numsub == {b"triorelay:n:gone": 0, b"triorelay:n:kept": 1}


async def test_a_channels_keys_expiry_is_renewed_once_a_second_and_whenever_a_key_is_new(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """The publish script renews both keys' expiry (to their time to live plus a second)
    only once the stream has less than its time to live left, by Redis's clock: at most once
    a second, not at every publish; and at once for a stream without an expiry or made
    again after it expired (a stream left without an expiry would live forever)."""
    broker = await started(nursery, redis_server, Deliveries(), redis_stream_ttl_seconds=60)
    stream, meta = "triorelay:ch:c", "triorelay:meta:c"
    slack = streams_module.EXPIRY_RENEWAL_MS
    renewed = {stream: 60_000 + slack, meta: 86_400_000 + slack}  # the settings' + the slack
    published: list[int] = []

    async def publish() -> None:
        await broker.publish("c", "broadcast", [f"m{len(published)}"], published)

    async with coredis.Redis.from_url(redis_server.url) as client:

        async def expiries() -> dict[str, int]:
            return {key: int(await client.pttl(key)) for key in (stream, meta)}

        async def left(ms: int) -> None:  # both keys have ``ms`` to live
            for key in (stream, meta):
                await client.pexpire(key, ms)

        def renewed_now(ttls: dict[str, int]) -> bool:
            return all(renewed[key] - 5_000 < ttl <= renewed[key] for key, ttl in ttls.items())

        with trio.fail_after(HANG_GUARD_SECONDS):
            await publish()  # a new channel: both keys get their expiry
            assert renewed_now(await expiries())
            await left(60_000 + slack // 2)  # renewed less than a second ago
            await publish()
            await publish()
            assert all(0 < ttl <= 60_000 + slack // 2 for ttl in (await expiries()).values())
            await left(59_999)  # renewed a second ago or more: less than its ttl left
            await publish()
            assert renewed_now(await expiries())
            await client.persist(stream)  # a stream without an expiry
            await publish()
            assert renewed_now(await expiries())
            await left(60_000 + slack // 2)
            await client.delete([stream])  # the stream expired (or was evicted)
            await publish()
            ttls = await expiries()
            assert renewed_now(ttls), ttls
    assert published == [1, 2, 3, 4, 5, 6]  # the offsets go on (the history expired)


class HeldFirst(Deliveries):
    """Deliveries whose first message waits for ``release`` (a ``block`` consumer that is
    full): the channel's drain holds it, and what follows is pending behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = trio.Event()
        self.release = trio.Event()

    async def deliver(
        self, name: str, item: Payload | Gap, offset: int, epoch: str, trace: object = None
    ) -> None:
        if not self.holding.is_set() and not isinstance(item, Gap):
            self.holding.set()
            await self.release.wait()
        await super().deliver(name, item, offset, epoch, trace)


async def test_a_restart_of_redis_behind_pending_deliveries_is_one_gap_after_them(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """A ``block`` channel's deliveries wait (the first is held) with more read and pending
    when Redis restarts: the consumers get what was read before the restart, then one gap
    for the restart, then the new history. The gap went out at once, ahead of the messages
    read before it, and the first message of the new epoch then came behind a second gap
    (a new epoch) for the same loss."""
    deliveries = HeldFirst()
    broker = await started(
        nursery,
        redis_server,
        deliveries,
        slow_consumer_policy="block",
        broker_reconnect_max_seconds=0.1,
        broker_timeout_seconds=2.0,
    )
    with trio.fail_after(HANG_GUARD_SECONDS):
        await watching(broker, "c")
        published: list[int] = []
        await broker.publish("c", "broadcast", ["m1"], published)
        await deliveries.holding.wait()
        for text in ("m2", "m3"):
            await broker.publish("c", "broadcast", [text], published)
        watch = broker.streams._watches["c"]
        await wait_until(lambda: len(watch.pending) == 2)  # m2, m3 behind the held m1
        await redis_server.kill()
        await broker.connection.wait_ready(False)
        await redis_server.start()  # empty: what it held is gone
        await broker.connection.wait_ready(True)
        await broker.publish("c", "broadcast", ["after"], published)
        deliveries.release.set()
        items = await deliveries.wait_for(5)
    payloads = [item for _, item in items]
    assert payloads[:3] == ["m1", "m2", "m3"]
    gap = payloads[3]
    assert isinstance(gap, Gap)
    assert gap.reason == "the broker restarted: messages may have been lost"
    assert payloads[4:] == ["after"]
    assert broker.gaps == 1
