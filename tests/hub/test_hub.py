"""The hub, in process: fan-out, queue delivery, slow-consumer policies, statistics, lifetime."""

from __future__ import annotations

import dataclasses
import gc
import os
import tracemalloc
from typing import Any

import pytest
import trio
import trio.testing

from triorelay.envelopes import Payload
from triorelay.errors import CloseCode, InvalidChannelName, ShuttingDown, TooManyChannels
from triorelay.hub import Consumer, Hub, Producer
from triorelay.settings import load_settings

QUEUE_RULES = {"jobs.*": {"mode": "queue"}}
#: With autojump_clock, a test that deadlocks fails at once instead of at the global timeout.
HANG_GUARD_SECONDS = 10


@pytest.fixture(autouse=True)
def _no_relay_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep TRIORELAY_* variables of the shell running the tests out of these settings."""
    for name in [name for name in os.environ if name.startswith("TRIORELAY_")]:
        monkeypatch.delenv(name)


def make_hub(**overrides: Any) -> Hub:
    return Hub(load_settings(**overrides))


def drain(consumer: Consumer) -> list[Payload]:
    """Every message buffered for ``consumer`` right now."""
    messages: list[Payload] = []
    while True:
        try:
            messages.append(consumer.receive_nowait())
        except trio.WouldBlock:
            return messages


async def consume_into(
    hub: Hub,
    name: str,
    got: list[Payload],
    *,
    task_status: trio.TaskStatus[Consumer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Attach a consumer and append everything it receives to ``got`` until its stream ends."""
    with hub.attach_consumer(name) as consumer:
        task_status.started(consumer)
        while True:
            try:
                got.append(await consumer.receive())
            except trio.EndOfChannel:
                return


# -- broadcast -------------------------------------------------------------------------------


async def test_broadcast_delivers_every_message_to_every_consumer_in_publish_order() -> None:
    """Each broadcast consumer receives every message, in order, with its type and bytes intact."""
    hub = make_hub()
    payloads: list[Payload] = ["text", b"\x00binary\xff", "", b"", "ünïcødé", b"last"]
    with (
        hub.attach_consumer("news") as first,
        hub.attach_consumer("news") as second,
        hub.attach_producer("news") as producer,
    ):
        seqs = [await producer.publish(payload) for payload in payloads]
        for consumer in (first, second):
            got = drain(consumer)
            assert got == payloads
            assert [type(message) for message in got] == [type(p) for p in payloads]
    assert seqs == [1, 2, 3, 4, 5, 6]


async def test_sequence_numbers_count_from_one_per_channel() -> None:
    """Sequence numbers start at 1 on each channel and rise by one per message on that channel."""
    hub = make_hub()
    with hub.attach_producer("a") as on_a, hub.attach_producer("b") as on_b:
        assert [await on_a.publish("x") for _ in range(3)] == [1, 2, 3]
        assert await on_b.publish("y") == 1
        assert await on_a.publish("x") == 4
        assert await on_b.publish("y") == 2


async def test_receive_waits_for_the_next_message(autojump_clock: trio.testing.MockClock) -> None:
    """A consumer blocked in receive() wakes with the next message published."""
    hub = make_hub()
    got: list[Payload] = []
    with trio.fail_after(HANG_GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(consume_into, hub, "news", got)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            with hub.attach_producer("news") as producer:
                await producer.publish("hello")
                await trio.testing.wait_all_tasks_blocked()
                assert got == ["hello"]
            nursery.cancel_scope.cancel()


async def test_receive_nowait_raises_wouldblock_when_nothing_is_buffered() -> None:
    """receive_nowait() raises WouldBlock on an empty buffer rather than waiting."""
    hub = make_hub()
    with hub.attach_consumer("news") as consumer, pytest.raises(trio.WouldBlock):
        consumer.receive_nowait()


async def test_two_interleaving_producers_keep_their_own_order_for_every_consumer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With two producers publishing concurrently, each consumer sees each producer's order."""
    hub = make_hub()
    count = 50
    got_live: list[Payload] = []
    seqs: dict[str, list[int]] = {"a": [], "b": []}

    async def produce(tag: str) -> None:
        with hub.attach_producer("mixed") as producer:
            for i in range(count):
                seqs[tag].append(await producer.publish(f"{tag}{i}"))
                await trio.lowlevel.checkpoint()

    with hub.attach_consumer("mixed") as buffered:
        with trio.fail_after(HANG_GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                await nursery.start(consume_into, hub, "mixed", got_live)
                async with trio.open_nursery() as producers:
                    producers.start_soon(produce, "a")
                    producers.start_soon(produce, "b")
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
        got_buffered = drain(buffered)

    for got in (got_live, got_buffered):
        assert len(got) == 2 * count
        for tag in "ab":
            assert [m for m in got if isinstance(m, str) and m[0] == tag] == [
                f"{tag}{i}" for i in range(count)
            ]
    # Both consumers saw the same interleaving, and the sequence numbers cover it exactly.
    assert got_live == got_buffered
    assert seqs["a"] == sorted(seqs["a"])
    assert seqs["b"] == sorted(seqs["b"])
    assert sorted(seqs["a"] + seqs["b"]) == list(range(1, 2 * count + 1))


# -- queue mode ------------------------------------------------------------------------------


async def test_channel_rules_pick_the_mode_by_name() -> None:
    """A channel matching a queue rule is a queue; other channels keep the default broadcast."""
    hub = make_hub(channels=QUEUE_RULES)
    with hub.attach_consumer("jobs.mail"), hub.attach_consumer("news"):
        queue_stats = hub.channel_statistics("jobs.mail")
        broadcast_stats = hub.channel_statistics("news")
        assert queue_stats is not None
        assert broadcast_stats is not None
        assert queue_stats.mode == "queue"
        assert broadcast_stats.mode == "broadcast"


async def test_queue_gives_each_message_to_one_waiting_consumer_round_robin(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """In queue mode each message goes to exactly one consumer, rotating among waiting ones."""
    hub = make_hub(channels=QUEUE_RULES)
    got: list[list[Payload]] = [[], [], []]
    with trio.fail_after(HANG_GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            for messages in got:
                await nursery.start(consume_into, hub, "jobs.mail", messages)
                # Park this consumer in receive() before the next one, to fix the waiting order.
                await trio.testing.wait_all_tasks_blocked()
            with hub.attach_producer("jobs.mail") as producer:
                for i in range(9):
                    await producer.publish(f"job{i}")
                    await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert got == [
        ["job0", "job3", "job6"],
        ["job1", "job4", "job7"],
        ["job2", "job5", "job8"],
    ]


async def test_queue_buffers_without_consumers_then_blocks_the_publisher(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A queue holds queue_buffer_messages for later consumers, then publish waits for room."""
    hub = make_hub(channels=QUEUE_RULES, queue_buffer_messages=2)
    published: list[int] = []

    async def publish_one(producer: Producer, payload: Payload) -> None:
        published.append(await producer.publish(payload))

    with hub.attach_producer("jobs.mail") as producer:
        assert await producer.publish("job0") == 1
        assert await producer.publish("job1") == 2
        with trio.fail_after(HANG_GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_one, producer, "job2")
                await trio.testing.wait_all_tasks_blocked()
                assert published == []  # the buffer is full: the publisher waits
                with hub.attach_consumer("jobs.mail") as consumer:
                    assert consumer.receive_nowait() == "job0"
                    await trio.testing.wait_all_tasks_blocked()
                    assert published == [3]  # one message taken: the publisher got its room
                    assert drain(consumer) == ["job1", "job2"]


async def test_queue_channel_keeps_its_buffered_messages_after_everyone_leaves() -> None:
    """A queue channel with buffered messages outlives its producer and serves a later consumer."""
    hub = make_hub(channels=QUEUE_RULES)
    with hub.attach_producer("jobs.mail") as producer:
        await producer.publish("job0")
        await producer.publish(b"job1")
    assert len(hub) == 1
    stats = hub.channel_statistics("jobs.mail")
    assert stats is not None
    assert stats.buffered == 2
    assert stats.producers == stats.consumers == 0
    with hub.attach_consumer("jobs.mail") as consumer:
        assert drain(consumer) == ["job0", b"job1"]
    assert len(hub) == 0


async def test_queue_requeue_puts_a_taken_message_back() -> None:
    """Consumer.requeue() returns a taken message to the queue for the next consumer."""
    hub = make_hub(channels=QUEUE_RULES)
    with (
        hub.attach_producer("jobs.mail") as producer,
        hub.attach_consumer("jobs.mail") as failing,
        hub.attach_consumer("jobs.mail") as other,
    ):
        await producer.publish("job0")
        assert failing.receive_nowait() == "job0"
        assert failing.requeue("job0") is True
        stats = hub.channel_statistics("jobs.mail")
        assert stats is not None
        assert stats.buffered == 1
        assert stats.messages_out == 0  # taking it back undoes the delivery
        assert failing.statistics().messages_out == 0
        assert other.receive_nowait() == "job0"
        assert other.statistics().messages_out == 1


async def test_queue_requeue_into_a_full_queue_counts_a_drop() -> None:
    """Requeue into a full queue returns False and counts the message as dropped."""
    hub = make_hub(channels=QUEUE_RULES, queue_buffer_messages=1)
    with hub.attach_producer("jobs.mail") as producer, hub.attach_consumer("jobs.mail") as consumer:
        await producer.publish("job0")
        assert consumer.receive_nowait() == "job0"
        await producer.publish("job1")  # fills the queue again
        assert consumer.requeue("job0") is False
        assert consumer.dropped == 1
        assert consumer.take_dropped_notice() == 1
        stats = hub.channel_statistics("jobs.mail")
        assert stats is not None
        assert stats.dropped == 1
        assert drain(consumer) == ["job1"]


# -- slow-consumer policies ------------------------------------------------------------------


async def test_disconnect_policy_evicts_a_full_consumer_and_spares_the_others() -> None:
    """Policy disconnect: a full consumer is detached and cancelled with 1013; others get all."""
    hub = make_hub(slow_consumer_policy="disconnect", consumer_buffer_messages=2)
    closed: list[object] = []
    with (
        hub.attach_consumer("news") as slow,
        hub.attach_consumer("news") as fast,
        hub.attach_producer("news") as producer,
    ):
        scope = trio.CancelScope()
        slow.bind(scope, on_close=closed.append)  # called with the connection
        got: list[Payload] = []
        with trio.testing.assert_no_checkpoints():  # the producer never waits
            for i in range(6):
                await producer.publish(f"m{i}")
                got.extend(drain(fast))
        assert got == [f"m{i}" for i in range(6)]

        assert slow.close_code is CloseCode.TRY_AGAIN_LATER
        assert slow.close_code.value == 1013
        assert "slow" in slow.close_reason
        assert scope.cancel_called
        assert closed == [slow]
        with pytest.raises(trio.EndOfChannel):
            slow.receive_nowait()
        stats = hub.channel_statistics("news")
        assert stats is not None
        assert stats.disconnected_slow == 1
        assert stats.consumers == 1
        # Two messages it held plus the one that did not fit; later ones are not its loss.
        assert stats.dropped == 3
        assert slow.dropped == 3
        assert stats.buffered == 0


async def test_consumer_evicted_before_binding_is_cancelled_when_it_binds() -> None:
    """A consumer closed before its route bound a scope has that scope cancelled on bind()."""
    hub = make_hub(consumer_buffer_messages=1)
    with hub.attach_consumer("news") as slow, hub.attach_producer("news") as producer:
        await producer.publish("m0")
        await producer.publish("m1")
        assert slow.close_code == CloseCode.TRY_AGAIN_LATER
        scope = trio.CancelScope()
        slow.bind(scope)
        assert scope.cancel_called


async def test_drop_oldest_policy_keeps_the_newest_messages() -> None:
    """Policy drop_oldest: a full consumer loses its oldest messages and is told how many."""
    hub = make_hub(slow_consumer_policy="drop_oldest", consumer_buffer_messages=3)
    with (
        hub.attach_consumer("news") as slow,
        hub.attach_consumer("news") as fast,
        hub.attach_producer("news") as producer,
    ):
        got: list[Payload] = []
        for i in range(10):
            await producer.publish(f"m{i}")
            got.extend(drain(fast))
        assert got == [f"m{i}" for i in range(10)]
        assert slow.pending_dropped == 7
        assert slow.take_dropped_notice() == 7
        assert slow.take_dropped_notice() == 0
        assert slow.dropped == 7
        stats = hub.channel_statistics("news")
        assert stats is not None
        assert stats.dropped == 7
        assert stats.disconnected_slow == 0
        assert slow.close_code is None
        assert drain(slow) == ["m7", "m8", "m9"]


async def test_drop_newest_policy_keeps_the_oldest_messages() -> None:
    """Policy drop_newest: a full consumer keeps what it has and loses the new messages."""
    hub = make_hub(slow_consumer_policy="drop_newest", consumer_buffer_messages=3)
    with (
        hub.attach_consumer("news") as slow,
        hub.attach_consumer("news") as fast,
        hub.attach_producer("news") as producer,
    ):
        for i in range(10):
            await producer.publish(f"m{i}")
        assert drain(fast) == [f"m{i}" for i in range(3)]  # fast was only slow by choice
        assert slow.pending_dropped == 7
        assert slow.take_dropped_notice() == 7
        assert slow.pending_dropped == 0
        assert slow.dropped == 7
        stats = hub.channel_statistics("news")
        assert stats is not None
        assert stats.dropped == 14  # both were full: each lost seven
        assert drain(slow) == ["m0", "m1", "m2"]


@pytest.mark.parametrize("slow_attaches_first", [True, False])
async def test_block_policy_waits_for_the_slow_consumer_only(
    slow_attaches_first: bool, autojump_clock: trio.testing.MockClock
) -> None:
    """Policy block: publish waits for a full consumer; the others already have the message."""
    hub = make_hub(slow_consumer_policy="block", consumer_buffer_messages=1)
    published: list[int] = []

    async def publish_one(producer: Producer, payload: Payload) -> None:
        published.append(await producer.publish(payload))

    with (
        hub.attach_producer("news") as producer,
        hub.attach_consumer("news") as first,
        hub.attach_consumer("news") as second,
    ):
        slow, fast = (first, second) if slow_attaches_first else (second, first)
        assert await producer.publish("m0") == 1
        assert fast.receive_nowait() == "m0"
        with trio.fail_after(HANG_GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_one, producer, "m1")
                await trio.testing.wait_all_tasks_blocked()
                assert published == []  # slow still holds m0: the publisher waits
                assert fast.receive_nowait() == "m1"
                assert slow.receive_nowait() == "m0"
                await trio.testing.wait_all_tasks_blocked()
                assert published == [2]
        assert drain(slow) == ["m1"]
        stats = hub.channel_statistics("news")
        assert stats is not None
        assert stats.dropped == 0


async def test_block_policy_publisher_is_released_when_the_slow_consumer_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Policy block: a consumer leaving while a publisher waits on it lets the publisher go on."""
    hub = make_hub(slow_consumer_policy="block", consumer_buffer_messages=1)
    published: list[int] = []

    async def publish_one(producer: Producer, payload: Payload) -> None:
        published.append(await producer.publish(payload))

    with hub.attach_producer("news") as producer, hub.attach_consumer("news") as fast:
        with trio.fail_after(HANG_GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                with hub.attach_consumer("news"):
                    await producer.publish("m0")
                    assert fast.receive_nowait() == "m0"
                    nursery.start_soon(publish_one, producer, "m1")
                    await trio.testing.wait_all_tasks_blocked()
                    assert published == []
                await trio.testing.wait_all_tasks_blocked()
                assert published == [2]
        assert drain(fast) == ["m1"]
        stats = hub.channel_statistics("news")
        assert stats is not None
        assert stats.buffered == 0
        assert stats.consumers == 1


async def test_byte_bound_fills_before_the_message_bound() -> None:
    """A consumer's buffer is full at consumer_buffer_bytes even with message slots to spare."""
    hub = make_hub(
        slow_consumer_policy="drop_newest",
        consumer_buffer_messages=100,
        consumer_buffer_bytes=25,
        max_message_bytes=10,
    )
    with hub.attach_consumer("news") as consumer, hub.attach_producer("news") as producer:
        for i in range(5):
            await producer.publish(f"message{i:03}")  # 10 characters each
        assert consumer.buffered == 2
        assert consumer.buffered_bytes == 20
        assert consumer.dropped == 3
        assert consumer.receive_nowait() == "message000"
        await producer.publish(b"0123456789")  # room for 10 more bytes again
        assert drain(consumer) == ["message001", b"0123456789"]
        assert consumer.dropped == 3


async def test_byte_bound_triggers_disconnect() -> None:
    """Policy disconnect applies when the byte bound, not the message bound, is reached."""
    hub = make_hub(consumer_buffer_messages=100, consumer_buffer_bytes=25, max_message_bytes=10)
    with hub.attach_consumer("news") as consumer, hub.attach_producer("news") as producer:
        await producer.publish("0123456789")
        await producer.publish("0123456789")
        assert consumer.close_code is None
        await producer.publish("0123456789")
        assert consumer.close_code == CloseCode.TRY_AGAIN_LATER
        assert "20 bytes" in consumer.close_reason


# -- statistics ------------------------------------------------------------------------------


async def test_statistics_are_frozen_snapshots() -> None:
    """Channel and connection statistics are immutable and do not follow later changes."""
    hub = make_hub()
    with hub.attach_producer("news") as producer, hub.attach_consumer("news") as consumer:
        channel_stats = hub.channel_statistics("news")
        connection_stats = consumer.statistics()
        assert channel_stats is not None
        with pytest.raises(dataclasses.FrozenInstanceError):
            channel_stats.messages_in = 99  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            connection_stats.messages_out = 99  # type: ignore[misc]
        await producer.publish("m0")
        assert channel_stats.messages_in == 0
        assert connection_stats.buffered == 0
        assert consumer.statistics().buffered == 1


async def test_statistics_count_messages_bytes_buffers_and_members() -> None:
    """Statistics count messages and bytes in and out, buffered and peak, producers, consumers."""
    hub = make_hub()
    with (
        hub.attach_producer("news") as first,
        hub.attach_producer("news") as second,
        hub.attach_consumer("news") as reader,
        hub.attach_consumer("news") as idler,
    ):
        await first.publish("abc")
        await second.publish(b"de")
        await second.publish("")
        stats = hub.channel_statistics("news")
        assert stats is not None
        assert (stats.producers, stats.consumers) == (2, 2)
        assert (stats.messages_in, stats.bytes_in) == (3, 5)
        assert (stats.buffered, stats.peak_buffered) == (6, 6)
        assert (stats.messages_out, stats.bytes_out) == (0, 0)
        assert stats.slow_consumer_policy == "disconnect"

        assert drain(reader) == ["abc", b"de", ""]
        stats = hub.channel_statistics("news")
        assert stats is not None
        assert (stats.messages_out, stats.bytes_out) == (3, 5)
        assert (stats.buffered, stats.peak_buffered) == (3, 6)

        assert (first.messages_in, first.bytes_in) == (1, 3)
        assert (second.messages_in, second.bytes_in) == (2, 2)
        reader_stats, idler_stats = reader.statistics(), idler.statistics()
        assert (reader_stats.messages_out, reader_stats.bytes_out) == (3, 5)
        assert (reader_stats.buffered, reader_stats.peak_buffered) == (0, 3)
        assert (idler_stats.messages_out, idler_stats.buffered) == (0, 3)

        by_id = {s.id: s for s in hub.connection_statistics("news")}
        assert set(by_id) == {first.id, second.id, reader.id, idler.id}
        assert by_id[first.id].role == by_id[second.id].role == "producer"
        assert by_id[reader.id].role == by_id[idler.id].role == "consumer"
        assert {s.channel for s in by_id.values()} == {"news"}
        assert by_id[second.id].bytes_in == 2
        assert [s.name for s in hub.statistics()] == ["news"]
    assert hub.channel_statistics("news") is None
    assert hub.connection_statistics("news") == []
    assert hub.statistics() == []


async def test_queue_statistics_count_the_shared_buffer() -> None:
    """A queue channel's buffered and peak_buffered count its shared buffer; policy reads block."""
    hub = make_hub(channels=QUEUE_RULES)
    with hub.attach_producer("jobs.mail") as producer, hub.attach_consumer("jobs.mail") as consumer:
        for i in range(3):
            await producer.publish(f"job{i}")
        assert consumer.receive_nowait() == "job0"
        stats = hub.channel_statistics("jobs.mail")
        assert stats is not None
        assert (stats.buffered, stats.peak_buffered) == (2, 3)
        assert (stats.messages_in, stats.messages_out) == (3, 1)
        assert stats.slow_consumer_policy == "block"


async def test_traffic_lists_the_busiest_channels_first_and_totals_them_all() -> None:
    """traffic(limit): at most ``limit`` channels, most messages in and out first; the totals
    and the channel count cover every live channel."""
    hub = make_hub()
    with (
        hub.attach_producer("quiet") as quiet,
        hub.attach_producer("busy") as busy,
        hub.attach_producer("middle") as middle,
        hub.attach_consumer("busy") as reader,
    ):
        await quiet.publish("q")
        for producer, count in ((busy, 5), (middle, 3)):
            for i in range(count):
                await producer.publish(f"m{i}")
        assert len(drain(reader)) == 5
        traffic = hub.traffic(2)
        assert [s.name for s in traffic.busiest] == ["busy", "middle"]
        assert (traffic.channels, traffic.messages_in, traffic.messages_out) == (3, 9, 5)
        assert traffic.busiest[0].messages_out == 5
        assert hub.traffic(10).busiest[-1].name == "quiet"


# -- channel lifetime and names --------------------------------------------------------------


async def test_channel_is_removed_once_nobody_is_attached() -> None:
    """A broadcast channel exists while a producer or consumer is attached, and no longer."""
    hub = make_hub()
    assert len(hub) == 0
    with hub.attach_consumer("news") as consumer:
        with hub.attach_producer("news") as producer:
            assert len(hub) == 1
            await producer.publish("m0")
            await producer.publish("m1")
        assert len(hub) == 1  # the consumer still holds it
        assert consumer.buffered == 2
    # The consumer left with messages buffered: they go with it, and so does the channel.
    assert len(hub) == 0
    assert hub.channel_statistics("news") is None
    with hub.attach_producer("solo"):
        assert len(hub) == 1
    assert len(hub) == 0


async def test_one_off_channels_do_not_leak() -> None:
    """10,000 channels used once each leave no channels behind and no lasting memory
    (without history: what histories keep is bounded by ``history_max_bytes``, see
    ``tests/brokers/test_history.py``)."""
    hub = make_hub(history_messages=0)

    async def use_once(name: str) -> None:
        with hub.attach_consumer(name) as consumer, hub.attach_producer(name) as producer:
            await producer.publish("payload")
            assert consumer.buffered == 1

    for i in range(100):  # warm up caches (interned strings, pydantic, trio) before measuring
        await use_once(f"warmup-{i}")
    gc.collect()
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(10_000):
            await use_once(f"one-off-{i}")
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(hub) == 0
    assert hub.statistics() == []
    # One leaked channel costs well over 1 KB (memory channels, sets, counters), so 10,000
    # leaked channels would be >10 MB; allow a little for allocator noise.
    assert growth < 200_000, f"memory grew by {growth} bytes"


@pytest.mark.parametrize(
    "name",
    ["", "a" * 129, "a/b", "a b", "café", "news\n", "news*", "ü"],
    ids=["empty", "129-chars", "slash", "space", "non-ascii", "newline", "star", "only-non-ascii"],
)
async def test_bad_channel_names_are_refused(name: str) -> None:
    """Names outside [A-Za-z0-9._:-]{1,128} raise InvalidChannelName and create no channel."""
    hub = make_hub()
    with pytest.raises(InvalidChannelName), hub.attach_producer(name):
        pass  # pragma: no cover - attaching raises
    with pytest.raises(InvalidChannelName), hub.attach_consumer(name):
        pass  # pragma: no cover - attaching raises
    assert len(hub) == 0


@pytest.mark.parametrize("name", ["a" * 128, "A-z_0.9:x", "x"])
async def test_good_channel_names_are_accepted(name: str) -> None:
    """Names of 1 to 128 characters from A-Z a-z 0-9 . _ : - are accepted."""
    hub = make_hub()
    with hub.attach_producer(name), hub.attach_consumer(name):
        assert [s.name for s in hub.statistics()] == [name]


async def test_max_channels_refuses_new_channels_but_not_existing_ones() -> None:
    """Past max_channels a new channel raises TooManyChannels; live channels still take members."""
    hub = make_hub(max_channels=2)
    with hub.attach_producer("one"):
        with hub.attach_producer("two"):
            with pytest.raises(TooManyChannels), hub.attach_consumer("three"):
                pass  # pragma: no cover - attaching raises
            with hub.attach_consumer("one"):
                assert len(hub) == 2
        with hub.attach_consumer("three"):
            assert len(hub) == 2


# -- shutdown --------------------------------------------------------------------------------


async def test_close_ends_every_connection_with_going_away(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Hub.close() closes every connection with 1001, ends consumer streams, stops publishing."""
    hub = make_hub(channels=QUEUE_RULES)
    ended: list[str] = []

    async def wait_for_end(consumer: Consumer) -> None:
        with pytest.raises(trio.EndOfChannel):
            await consumer.receive()
        ended.append("end")

    with (
        hub.attach_producer("news") as producer,
        hub.attach_consumer("news") as holding,
        hub.attach_consumer("jobs.mail") as waiting,
    ):
        scopes = [trio.CancelScope() for _ in range(3)]
        for connection, scope in zip((producer, holding, waiting), scopes, strict=True):
            connection.bind(scope)
        await producer.publish("m0")
        with trio.fail_after(HANG_GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_end, waiting)
                await trio.testing.wait_all_tasks_blocked()
                assert ended == []
                hub.close()
        assert ended == ["end"]  # the waiting receive() was woken by the close

        for connection in (producer, holding, waiting):
            assert connection.close_code is CloseCode.GOING_AWAY
            assert connection.close_code.value == 1001
        assert all(scope.cancel_called for scope in scopes)
        with pytest.raises(trio.EndOfChannel):
            holding.receive_nowait()  # what it still held is not delivered after close
        with pytest.raises(trio.ClosedResourceError):
            await producer.publish("m1")


@pytest.mark.parametrize("role", ["producer", "consumer"])
async def test_closed_hub_refuses_new_connections(role: str) -> None:
    """After Hub.close(), attaching to any channel, new or live, raises ShuttingDown (503, 1001)."""
    hub = make_hub()
    attach = hub.attach_producer if role == "producer" else hub.attach_consumer
    with hub.attach_producer("live"):
        hub.close()
        for name in ("live", "new"):
            with pytest.raises(ShuttingDown) as caught, attach(name):
                pass  # pragma: no cover - attaching raises
            assert caught.value.status == 503
            assert caught.value.close_code == CloseCode.GOING_AWAY


async def test_close_is_idempotent_and_keeps_an_earlier_close_code() -> None:
    """Closing twice is harmless, and a consumer already evicted keeps its 1013."""
    hub = make_hub(consumer_buffer_messages=1)
    with hub.attach_producer("news") as producer, hub.attach_consumer("news") as slow:
        await producer.publish("m0")
        await producer.publish("m1")
        assert slow.close_code == CloseCode.TRY_AGAIN_LATER
        hub.close()
        hub.close()
        assert slow.close_code == CloseCode.TRY_AGAIN_LATER
        assert producer.close_code == CloseCode.GOING_AWAY


async def test_close_releases_a_publisher_waiting_on_a_full_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A publisher waiting for room in a queue gets ClosedResourceError when the hub closes."""
    hub = make_hub(channels=QUEUE_RULES, queue_buffer_messages=1)
    raised: list[type[BaseException]] = []

    async def publish_blocked(producer: Producer) -> None:
        with pytest.raises(trio.ClosedResourceError) as caught:
            await producer.publish("job1")
        raised.append(caught.type)

    with hub.attach_producer("jobs.mail") as producer:
        await producer.publish("job0")
        with trio.fail_after(HANG_GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_blocked, producer)
                await trio.testing.wait_all_tasks_blocked()
                assert raised == []
                hub.close()
        assert raised == [trio.ClosedResourceError]


async def test_close_cancels_a_publisher_blocked_by_a_slow_consumer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Policy block: a producer route waiting on a slow consumer is cancelled by Hub.close()."""
    hub = make_hub(slow_consumer_policy="block", consumer_buffer_messages=1)
    cancelled: list[bool] = []

    async def producer_route() -> None:
        with hub.attach_producer("news") as producer, trio.CancelScope() as scope:
            producer.bind(scope)
            await producer.publish("m0")
            await producer.publish("m1")  # blocks: the consumer never reads
        cancelled.append(scope.cancelled_caught)

    with hub.attach_consumer("news"):
        with trio.fail_after(HANG_GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer_route)
                await trio.testing.wait_all_tasks_blocked()
                assert cancelled == []
                hub.close()
    assert cancelled == [True]


async def test_channels_go_once_everyone_leaves_after_close() -> None:
    """After Hub.close(), messages held for consumers are discarded and idle channels removed."""
    hub = make_hub()
    with hub.attach_consumer("news"), hub.attach_producer("news") as producer:
        await producer.publish("m0")
        await producer.publish("m1")
        hub.close()
        stats = hub.channel_statistics("news")
        assert stats is not None
        assert stats.buffered == 0
    assert len(hub) == 0


async def test_text_is_counted_in_utf8_bytes() -> None:
    """A 4-byte character counts 4 bytes against consumer_buffer_bytes, and in the counters."""
    hub = make_hub(consumer_buffer_bytes=40, max_message_bytes=40)
    with hub.attach_consumer("u") as consumer, hub.attach_producer("u") as producer:
        await producer.publish("😀" * 5)  # 20 bytes
        await producer.publish("😀" * 5)
        assert consumer.buffered_bytes == 40
        await producer.publish("a")  # does not fit: evicted
        assert consumer.close_code == CloseCode.TRY_AGAIN_LATER
        stats = hub.channel_statistics("u")
        assert stats is not None
        assert stats.bytes_in == 41


async def test_default_buffers_hold_a_burst_of_small_messages() -> None:
    """With the defaults, a consumer that has not read yet holds 2,000 messages of 60 bytes
    (the asyncio version delivers them all; a 256-message bound evicted it)."""
    hub = make_hub()
    with hub.attach_consumer("burst") as consumer, hub.attach_producer("burst") as producer:
        for i in range(2000):
            await producer.publish(f"{i:04d}" + "x" * 56)
        assert consumer.close_code is None
        assert len(drain(consumer)) == 2000


async def test_waiting_for_room_then_publishing_never_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """wait_for_room returns only once a publish takes at once: a block channel's full
    consumer and a full queue hold it; given up, nothing is published."""
    hub = make_hub(
        slow_consumer_policy="block",
        consumer_buffer_messages=1,
        channels={"jobs.*": {"mode": "queue", "queue_buffer_messages": 1}},
    )
    with hub.attach_consumer("b") as consumer, hub.attach_producer("b") as producer:
        await producer.publish("first")
        with trio.move_on_after(5) as waited:
            await hub.wait_for_room("b", 5)
        assert waited.cancelled_caught
        assert consumer.receive_nowait() == "first"
        with trio.fail_after(1):
            await hub.wait_for_room("b", 5)
    with hub.attach_producer("jobs.q") as producer:
        await producer.publish("job")
        with trio.move_on_after(5) as waited:
            await hub.wait_for_room("jobs.q", 3)
        assert waited.cancelled_caught
        with hub.attach_consumer("jobs.q") as worker:
            assert await worker.receive() == "job"
            with trio.fail_after(1):
                await hub.wait_for_room("jobs.q", 3)


async def test_queued_bytes_are_bounded_across_every_queue_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """max_queued_bytes bounds what all queue channels hold together: past it a publish to
    any of them waits, and goes through once a consumer takes a message."""
    hub = make_hub(channels=QUEUE_RULES, max_queued_bytes=10, max_message_bytes=10)
    with hub.attach_producer("jobs.a") as on_a, hub.attach_producer("jobs.b") as on_b:
        await on_a.publish("aaaaaa")  # 6 bytes
        await on_b.publish("bbbb")  # 10 in all
        with trio.move_on_after(5) as waited:
            await on_b.publish("c")
        assert waited.cancelled_caught
        assert hub.queue_budget.bytes == 10
        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_b.publish, "c")
            await trio.testing.wait_all_tasks_blocked()
            with hub.attach_consumer("jobs.a") as worker:
                assert await worker.receive() == "aaaaaa"
        assert hub.queue_budget.bytes == 5
        stats = hub.channel_statistics("jobs.b")
        assert stats is not None
        assert stats.buffered == 2


async def test_a_cancelled_publish_leaves_no_trace_in_counters_or_sequence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A publish given up while a full queue holds it counts nothing and takes no number."""
    hub = make_hub(channels={"jobs.*": {"mode": "queue", "queue_buffer_messages": 1}})
    with hub.attach_producer("jobs.c") as producer:
        assert await producer.publish("one") == 1
        with trio.move_on_after(5):
            await producer.publish("two")
        stats = hub.channel_statistics("jobs.c")
        assert stats is not None
        assert (stats.messages_in, stats.buffered) == (1, 1)
        with hub.attach_consumer("jobs.c") as worker:
            assert await worker.receive() == "one"
            assert await producer.publish("three") == 2


async def test_block_policy_closes_a_consumer_that_keeps_a_publish_waiting_too_long(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Under ``block``, a consumer still full after block_timeout_seconds is closed with 1013
    (counted); the publish then completes, and the other consumers have the message."""
    hub = make_hub(
        slow_consumer_policy="block", consumer_buffer_messages=1, block_timeout_seconds=3
    )
    with (
        hub.attach_consumer("stall") as stalled,
        hub.attach_consumer("stall") as reader,
        hub.attach_producer("stall") as producer,
    ):
        await producer.publish("first")
        assert reader.receive_nowait() == "first"
        started = trio.current_time()
        with trio.fail_after(10):
            await producer.publish("second")
        assert trio.current_time() - started == pytest.approx(3)
        assert stalled.close_code == CloseCode.TRY_AGAIN_LATER
        assert "kept a publish waiting 3 s" in stalled.close_reason
        assert reader.receive_nowait() == "second"
        stats = hub.channel_statistics("stall")
        assert stats is not None
        assert (stats.disconnected_slow, stats.consumers) == (1, 1)


def _detach_all_seconds(count: int) -> float:
    """CPU time to attach ``count`` consumers to one channel and detach them all."""
    import time
    from contextlib import ExitStack

    hub = make_hub()
    with hub.attach_producer("storm"), ExitStack() as stack:
        for _ in range(count):
            stack.enter_context(hub.attach_consumer("storm"))
        started = time.process_time()
        stack.close()  # every consumer leaves: an eviction or reconnect storm
        return time.process_time() - started


def test_detaching_consumers_costs_the_same_whatever_their_number() -> None:
    """Detach is O(1): 16,000 consumers leaving cost about 4 times 4,000 (a rebuilt consumer
    tuple per detach made it 16 times)."""
    small = min(_detach_all_seconds(4_000) for _ in range(3))
    large = min(_detach_all_seconds(16_000) for _ in range(3))
    assert large < 8 * max(small, 1e-3)


async def test_a_queue_that_stays_full_refuses_a_publish_after_the_block_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A producer waits for room in a full queue at most block_timeout_seconds, then gets
    QueueFull (1013 / 503): nothing queued, nothing counted."""
    from triorelay.errors import QueueFull

    hub = make_hub(
        channels={"jobs.*": {"mode": "queue", "queue_buffer_messages": 1}},
        block_timeout_seconds=3,
    )
    with hub.attach_producer("jobs.f") as producer:
        await producer.publish("one")
        started = trio.current_time()
        with pytest.raises(QueueFull) as refused:
            await producer.publish("two")
        assert trio.current_time() - started == pytest.approx(3)
        assert refused.value.close_code == CloseCode.TRY_AGAIN_LATER
        stats = hub.channel_statistics("jobs.f")
        assert stats is not None
        assert (stats.messages_in, stats.buffered) == (1, 1)


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest", "disconnect"])
async def test_traced_messages_are_counted_and_unwrapped_under_every_policy(policy: str) -> None:
    """A slow raw consumer's buffer counts the traced items it holds exactly (dropped ones
    leave the count), and its writer gives its client payloads only, never a Traced item."""
    from triorelay.routes.traces import take_traced, unwrap
    from triorelay.tracing import Trace

    hub = make_hub(channels={"c": {"slow_consumer_policy": policy, "consumer_buffer_messages": 2}})
    with hub.attach_consumer("c") as consumer, hub.attach_producer("c") as producer:
        for i in range(5):
            traces = {0: Trace(0)} if i % 2 == 0 else None  # m0, m2, m4 traced
            await producer.publish_many([f"m{i}"], [], traces)
        buffer = consumer.buffer
        assert buffer is not None
        if policy == "disconnect":
            assert consumer.close_code == 1013
            assert buffer.traced == 0
            return
        expected = {"drop_oldest": ["m3", "m4"], "drop_newest": ["m0", "m1"]}[policy]
        assert buffer.traced == 1  # m4 kept (drop_oldest) or m0 kept (drop_newest)
        items = drain_items(consumer)
        assert [getattr(item, "payload", item) for item in items] == expected
        traced = [item for item in items if type(item).__name__ == "Traced"]
        assert len(traced) == 1
        # The writer's view: what it took, then what the client gets.
        assert take_traced(consumer, items) == traced
        assert unwrap(items) == expected
        assert buffer.traced == 0


def drain_items(consumer: Consumer) -> list[Any]:
    items = []
    while True:
        try:
            items.append(consumer.receive_nowait())
        except trio.WouldBlock:
            return items
