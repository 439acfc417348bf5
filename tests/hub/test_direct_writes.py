"""Direct writes: a waiting consumer's messages written from the publishing task, in order.

The hub hands a broadcast consumer's messages to its writer's ``write_directly`` callable while
the writer waits with nothing buffered; everything else is buffered as before. These tests play
the writer with a fake socket (a list, and a switch that makes it refuse or take part of a
frame), so they check the hub's side alone: order, counting, policies, tracing, closing.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from triorelay.envelopes import Payload
from triorelay.hub import Consumer, Hub, Traced, Unfinished
from triorelay.hub.buffers import ConsumerBuffer, Occupancy
from triorelay.settings import load_settings
from triorelay.tracing import Trace

HANG_GUARD_SECONDS = 10


@pytest.fixture(autouse=True)
def _no_relay_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("TRIORELAY_")]:
        monkeypatch.delenv(name)


def make_hub(**overrides: Any) -> Hub:
    return Hub(load_settings(**overrides))


class FakeSocket:
    """What a consumer's socket took directly (``wire``), and whether it takes more.

    ``mode``: ``"take"`` (every write whole), ``"refuse"`` (full: nothing), ``"partial"`` (the
    next write is taken in part, then the socket is full).
    """

    def __init__(self) -> None:
        self.wire: list[Payload] = []
        self.mode = "take"
        self.calls = 0

    def write_many(self, payloads: list[Payload]) -> bool | bytes:
        """A batch's direct write that takes every batch whole, whatever ``mode``."""
        self.wire.extend(payloads)
        return True

    def write(self, payload: Payload) -> bool | bytes:
        self.calls += 1
        if self.mode == "refuse":
            return False
        self.wire.append(payload)
        if self.mode == "partial":
            self.mode = "refuse"
            return b"rest of " + (payload if isinstance(payload, bytes) else payload.encode())
        return True


class Writer:
    """A consumer's writer: takes what the hub buffers for it (after the direct ones), in
    order, into the same ``delivered`` list, as write_loop does."""

    def __init__(self, consumer: Consumer, socket: FakeSocket) -> None:
        self.consumer = consumer
        self.socket = socket
        self.received: list[Any] = []
        self.go = trio.Event()
        self.go.set()

    @property
    def delivered(self) -> list[Payload]:
        return self.socket.wire

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.consumer.write_directly(self.socket.write)
        task_status.started()
        try:
            while True:
                try:
                    item = await self.consumer.receive()
                except trio.EndOfChannel:
                    return
                await self.go.wait()  # a slow writer: it holds what it took
                self.received.append(item)
                if isinstance(item, Unfinished):
                    continue  # the rest of a message already on the wire
                payload = item.payload if isinstance(item, Traced) else item
                assert isinstance(payload, (bytes, str))
                self.socket.wire.append(payload)
        finally:
            self.consumer.write_directly(None)


async def publish_all(hub: Hub, name: str, payloads: list[Payload]) -> None:
    with hub.attach_producer(name) as producer:
        for payload in payloads:
            await producer.publish(payload)


@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_a_waiting_writer_gets_messages_directly_and_they_are_counted(
    nursery: trio.Nursery,
) -> None:
    """While its writer waits, each message goes straight to the socket: nothing is buffered,
    the writer is never woken, and the consumer and channel count every message and byte."""
    hub = make_hub()
    socket = FakeSocket()
    with hub.attach_consumer("news") as consumer:
        writer = Writer(consumer, socket)
        await nursery.start(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        await publish_all(hub, "news", ["one", b"two", "thr\u00e9e"])
        assert socket.wire == ["one", b"two", "thr\u00e9e"]
        assert writer.received == []  # never woken
        assert consumer.buffered == 0
        assert (consumer.messages_out, consumer.bytes_out) == (3, 3 + 3 + 6)
        stats = hub.channel_statistics("news")
        assert stats is not None
        assert (stats.messages_out, stats.bytes_out, stats.buffered) == (3, 12, 0)
        assert (stats.messages_delivered, stats.peak_buffered) == (3, 0)


@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_a_consumer_that_becomes_slow_midstream_gets_everything_in_order_once(
    nursery: trio.Nursery,
) -> None:
    """A socket that fills after two messages: the rest is buffered and the writer woken;
    nothing goes directly while anything is buffered or held by the writer, even once the
    socket has room again; back to direct writes when the writer waits again. In order, no
    message twice or lost, each counted once."""
    hub = make_hub(consumer_buffer_messages=100)
    socket = FakeSocket()
    payloads: list[Payload] = [f"m{i}" for i in range(12)]
    with hub.attach_consumer("news") as consumer:
        writer = Writer(consumer, socket)
        writer.go = trio.Event()  # the writer, once woken, holds its item until told
        await nursery.start(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        await publish_all(hub, "news", payloads[:2])
        socket.mode = "refuse"
        await publish_all(hub, "news", payloads[2:4])  # buffered: the writer is woken
        socket.mode = "take"  # room again, but the writer holds m2: no direct write
        await trio.testing.wait_all_tasks_blocked()
        await publish_all(hub, "news", payloads[4:8])
        assert socket.wire == payloads[:2]
        assert consumer.buffered == 5  # m3..m7 (m2 is the writer's)
        writer.go.set()
        await trio.testing.wait_all_tasks_blocked()  # drains, then waits again
        await publish_all(hub, "news", payloads[8:])  # direct again
        assert socket.wire == payloads
        assert [item for item in writer.received] == payloads[2:8]
        assert consumer.messages_out == len(payloads)
        stats = hub.channel_statistics("news")
        assert stats is not None
        assert (stats.messages_out, stats.buffered) == (len(payloads), 0)


@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_a_partial_direct_write_is_finished_by_the_writer_before_anything_else(
    nursery: trio.Nursery,
) -> None:
    """The socket took part of a frame: the writer gets the rest first (an Unfinished item,
    not counted again), then what was buffered behind it."""
    hub = make_hub()
    socket = FakeSocket()
    with hub.attach_consumer("news") as consumer:
        writer = Writer(consumer, socket)
        writer.go = trio.Event()
        await nursery.start(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        socket.mode = "partial"
        await publish_all(hub, "news", ["big", "after", "later"])
        assert socket.wire == ["big"]  # begun directly
        assert consumer.buffered == 2
        writer.go.set()
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(writer.received[0], Unfinished)
        assert writer.received[0].rest == b"rest of big"
        assert writer.received[1:] == ["after", "later"]
        assert socket.wire == ["big", "after", "later"]
        assert consumer.messages_out == 3
        stats = hub.channel_statistics("news")
        assert stats is not None
        assert stats.messages_out == 3


async def test_a_rest_left_when_the_buffer_closes_is_kept_for_the_writer() -> None:
    """Closed before its writer ran, a buffer still hands over the unfinished rest (the
    writer must write it whatever ended it), and ends the stream after it; or gives it to
    take_unfinished, once."""
    hub = make_hub()
    socket = FakeSocket()
    with hub.attach_consumer("news") as consumer:
        consumer.write_directly(socket.write)
        async with trio.open_nursery() as nursery:
            received: list[Any] = []

            async def reader() -> None:
                received.append(await consumer.receive())

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            socket.mode = "partial"
            await publish_all(hub, "news", ["big"])
            assert consumer.inbox.close() == 0  # nothing buffered: the rest is not a message
        assert isinstance(received[0], Unfinished)
        assert consumer.take_unfinished() is None
        with pytest.raises(trio.EndOfChannel):
            consumer.receive_nowait()
    # A writer that stops before it ran again (its finally) takes the rest itself, once;
    # then its receive finds the stream ended.
    with hub.attach_consumer("news") as consumer:
        consumer.write_directly(socket.write)
        ended: list[bool] = []
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                with pytest.raises(trio.EndOfChannel):
                    await consumer.receive()
                ended.append(True)

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            socket.mode = "partial"
            await publish_all(hub, "news", ["big"])
            consumer.inbox.close()
            unfinished = consumer.take_unfinished()  # before the reader runs again
            assert unfinished is not None
            assert unfinished.rest == b"rest of big"
            assert consumer.take_unfinished() is None
        assert ended == [True]


async def test_no_direct_write_without_a_waiting_writer() -> None:
    """A consumer whose writer is not waiting (busy, or not started) gets its messages
    buffered, as before: the direct write is not even tried."""
    hub = make_hub()
    socket = FakeSocket()
    with hub.attach_consumer("news") as consumer:
        consumer.write_directly(socket.write)
        await publish_all(hub, "news", ["a", "b"])
        assert socket.calls == 0
        assert consumer.buffered == 2
        assert [consumer.receive_nowait(), consumer.receive_nowait()] == ["a", "b"]


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest", "disconnect"])
@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_policies_apply_once_the_socket_is_full(nursery: trio.Nursery, policy: str) -> None:
    """A full socket sends messages to the buffer, where the slow-consumer policy applies as
    it always did: drops counted (and told in the next notice), or the consumer evicted."""
    hub = make_hub(slow_consumer_policy=policy, consumer_buffer_messages=2)
    socket = FakeSocket()
    with hub.attach_consumer("news") as consumer:
        writer = Writer(consumer, socket)
        writer.go = trio.Event()  # once woken, the writer stalls: the buffer fills
        await nursery.start(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        await publish_all(hub, "news", ["direct"])
        socket.mode = "refuse"
        with hub.attach_producer("news"):  # keeps the channel (and its statistics) alive
            await publish_all(hub, "news", ["w", "b1", "b2", "b3"])
            stats = hub.channel_statistics("news")
            assert stats is not None
            if policy == "disconnect":
                assert consumer.close_code == 1013
                assert consumer.detached
                assert stats.disconnected_slow == 1
                assert socket.wire == ["direct"]
                return
            # "w" was handed to the writer (it takes none of the 2 places); one dropped,
            # never "w", which the writer already holds.
            assert consumer.dropped == 1
            assert consumer.pending_dropped == 1
            assert consumer.buffered == 3
            kept = ["b2", "b3"] if policy == "drop_oldest" else ["b1", "b2"]
            writer.go.set()
            await trio.testing.wait_all_tasks_blocked()
            assert socket.wire == ["direct", "w", *kept]
            stats = hub.channel_statistics("news")
            assert stats is not None
            assert (stats.messages_out, stats.dropped) == (4, 1)


@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_a_pending_dropped_notice_keeps_messages_for_the_writer(
    nursery: trio.Nursery,
) -> None:
    """The route's direct write refuses while a ``dropped`` notice is due (the writer sends
    it first): the message is buffered, in order after the drop."""
    hub = make_hub()
    socket = FakeSocket()
    with hub.attach_consumer("news", notices=True) as consumer:

        def write(payload: Payload) -> bool | bytes:
            if consumer.pending_dropped:
                return False
            return socket.write(payload)

        consumer.write_directly(write)
        got: list[Any] = []

        async def reader() -> None:
            got.append(await consumer.receive())

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        consumer.count_dropped(3)
        await publish_all(hub, "news", ["after the drop"])
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["after the drop"]
        assert socket.wire == []


def stage_counts(consumer: Consumer) -> list[int]:
    """How many observations each of the four stages' histograms of its channel holds."""
    latency = consumer.channel_counters.latency
    return [0] * 4 if latency is None else [sum(counts) for counts in latency.counts]


@asynccontextmanager
async def one_traced(
    nursery: trio.Nursery,
    trace: Trace,
    *,
    socket_mode: str = "take",
    writer_waits: bool = False,
    then: Sequence[Payload] = (),
) -> AsyncIterator[tuple[Consumer, Writer, FakeSocket]]:
    """One waiting consumer (its socket in ``socket_mode``; its writer holding what it takes
    if ``writer_waits``), a message "traced" published with ``trace``, then ``then``."""
    hub = make_hub()
    socket = FakeSocket()
    socket.mode = socket_mode
    with hub.attach_consumer("news") as consumer:
        writer = Writer(consumer, socket)
        if writer_waits:
            writer.go = trio.Event()
        await nursery.start(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        with hub.attach_producer("news") as producer:
            published: list[int] = []
            await producer.publish_many(["traced"], published, {0: trace})
            for payload in then:
                await producer.publish_many([payload], published)
        await trio.testing.wait_all_tasks_blocked()
        yield consumer, writer, socket


@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_a_sampled_message_is_written_directly_its_last_two_stages_timed(
    nursery: trio.Nursery,
) -> None:
    """A message sampled for the latency histograms (traced without a trace id) goes to a
    waiting consumer's socket from the publishing task, as an untraced one does: its writer
    is not woken, and its last two stages are observed all the same, once each. (Through
    the writer, a fan-out woke every consumer's writer for one message in 64.)"""
    async with one_traced(nursery, Trace(0)) as (consumer, writer, socket):
        assert socket.wire == ["traced"]
        assert writer.received == []
        assert stage_counts(consumer) == [1, 1, 1, 1]
        assert consumer.buffer is not None
        assert consumer.buffer.traced == 0


@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_a_sampled_message_the_socket_cannot_take_goes_to_the_writer(
    nursery: trio.Nursery,
) -> None:
    """A full socket: the sampled message is buffered as a Traced item, counted as one, and
    its writer (which times its stages) gets it."""
    async with one_traced(nursery, Trace(0), socket_mode="refuse", writer_waits=True) as (
        consumer,
        writer,
        _,
    ):
        assert consumer.buffer is not None
        assert consumer.buffer.traced == 1
        writer.go.set()
        await trio.testing.wait_all_tasks_blocked()
        assert [type(item) for item in writer.received] == [Traced]
        assert stage_counts(consumer)[2:] == [0, 0]  # (the fake writer times nothing)


@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_a_sampled_message_the_socket_takes_in_part_leaves_its_rest_to_the_writer(
    nursery: trio.Nursery,
) -> None:
    """The socket takes part of a sampled message's frame: its stages are timed (it is on
    its way), the rest goes to the writer first, and what follows is buffered behind it."""
    async with one_traced(nursery, Trace(0), socket_mode="partial", then=["next"]) as (
        consumer,
        writer,
        socket,
    ):
        assert socket.wire == ["traced", "next"]
        rest, following = writer.received
        assert isinstance(rest, Unfinished)
        assert rest.rest == b"rest of traced"
        assert following == "next"
        assert stage_counts(consumer) == [1, 1, 1, 1]


@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_a_message_traced_for_its_producer_goes_to_the_writer(
    nursery: trio.Nursery,
) -> None:
    """A message whose producer asked for traces (a trace id: its notices and the trace log
    are the writer's work) is buffered, not written directly."""
    trace = Trace(0, "4bf92f3577b34da6a3ce929d0e0e4736")
    async with one_traced(nursery, trace) as (_, writer, socket):
        assert socket.calls == 0
        assert [type(item) for item in writer.received] == [Traced]


@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_fan_out_writes_directly_to_waiting_consumers_and_buffers_for_the_rest(
    nursery: trio.Nursery,
) -> None:
    """One publish reaches three consumers: two waiting ones directly, one whose socket is
    full through its buffer; each gets every message once, in order."""
    hub = make_hub()
    sockets = [FakeSocket() for _ in range(3)]
    sockets[1].mode = "refuse"
    with (
        hub.attach_consumer("news") as first,
        hub.attach_consumer("news") as second,
        hub.attach_consumer("news") as third,
    ):
        writers = [Writer(c, s) for c, s in zip((first, second, third), sockets, strict=True)]
        for writer in writers:
            await nursery.start(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        await publish_all(hub, "news", ["a", "b", "c"])
        await trio.testing.wait_all_tasks_blocked()
        assert [s.wire for s in sockets] == [["a", "b", "c"]] * 3
        assert writers[0].received == writers[2].received == []
        assert writers[1].received == ["a", "b", "c"]
        stats = hub.channel_statistics("news")
        assert stats is not None
        assert stats.messages_out == 9


@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_a_batch_from_one_read_goes_to_the_writer_to_be_written_at_once(
    nursery: trio.Nursery,
) -> None:
    """Several messages published together (one producer read) are buffered, not written one
    by one: the writer, woken once, takes them all for one socket write; a single message
    after them goes directly again."""
    hub = make_hub()
    socket = FakeSocket()
    with hub.attach_consumer("news") as consumer:
        writer = Writer(consumer, socket)
        writer.go = trio.Event()
        await nursery.start(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        with hub.attach_producer("news") as producer:
            await producer.publish_many(["a", "b", "c"], [])
            assert socket.calls == 0
            assert consumer.buffered == 3
            writer.go.set()
            await trio.testing.wait_all_tasks_blocked()
            assert writer.received == ["a", "b", "c"]
            await producer.publish("d")
        assert socket.calls == 1
        assert socket.wire == ["a", "b", "c", "d"]
        assert consumer.messages_out == 4


def test_an_idle_consumers_buffer_holds_almost_nothing() -> None:
    """A buffer that never held a message (a consumer that keeps up gets its messages
    directly) allocates no queue: a few hundred bytes per consumer, where a trio memory
    channel pair and its state took about 1.9 KB."""
    occupancy = Occupancy()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        buffers = [ConsumerBuffer(256, 1 << 20, occupancy) for _ in range(1000)]
        per_buffer = (tracemalloc.get_traced_memory()[0] - before) / len(buffers)
    finally:
        tracemalloc.stop()
    assert per_buffer < 400, f"{per_buffer:.0f} bytes per idle buffer"
    assert buffers[0].offer("now it has one", 14)  # made on first use
    assert buffers[0].receive_nowait() == "now it has one"


def test_a_drop_leaves_the_size_of_the_message_last_received() -> None:
    """The writer counts a message's bytes from ``last_size`` after ``receive`` has yielded
    once (``Consumer.receive``), and a ``drop_oldest`` can come in between (the buffer of a
    slow consumer is full): the drop must not change it, or the consumer and its channel
    count the dropped message's size as written instead of the one received."""
    buffer = ConsumerBuffer(3, 1 << 20, Occupancy())
    for payload in ["x" * 10, "y" * 20, "z" * 30]:
        assert buffer.offer(payload, len(payload))
    assert buffer.receive_nowait() == "x" * 10
    assert buffer.last_size == 10
    assert buffer.drop_oldest()  # the 20-byte one
    assert buffer.last_size == 10
    assert (buffer.messages, buffer.bytes) == (1, 30)
    assert buffer.receive_nowait() == "z" * 30
    assert buffer.last_size == 30


@pytest.mark.parametrize("mode", ["take", "refuse", "partial"])
@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_a_batch_is_written_in_one_direct_write_at_its_end(
    nursery: trio.Nursery, mode: str
) -> None:
    """With a batch write registered, a batch for a waiting writer is held and written in
    one go at the batch's end (counted as it goes out, the writer never woken); a socket that
    cannot take it wakes the writer for all of it; one that takes part of it leaves the rest
    as an Unfinished item. Order and counts hold every way."""
    hub = make_hub()
    socket = FakeSocket()
    batches: list[list[Payload]] = []

    def write_many(payloads: list[Payload]) -> bool | bytes:
        batches.append(list(payloads))
        if mode == "refuse":
            return False
        socket.wire.extend(payloads)
        return True if mode == "take" else b"rest of the batch"

    with hub.attach_consumer("news") as consumer:
        writer = Writer(consumer, socket)
        await nursery.start(writer.run)
        consumer.write_directly(socket.write, write_many)
        await trio.testing.wait_all_tasks_blocked()
        with hub.attach_producer("news") as producer:
            await producer.publish_many(["a", "b", "c"], [])
            assert batches == [["a", "b", "c"]]
            await trio.testing.wait_all_tasks_blocked()
            await producer.publish("d")  # alone: directly, once the writer waits again
            stats = hub.channel_statistics("news")
        assert socket.wire == ["a", "b", "c", "d"]
        assert consumer.messages_out == 4
        assert stats is not None
        assert (stats.messages_out, stats.buffered) == (4, 0)
        if mode == "take":
            assert writer.received == []
        elif mode == "refuse":
            assert writer.received == ["a", "b", "c"]
        else:
            assert [type(item) for item in writer.received] == [Unfinished]


@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_a_traced_message_in_a_batch_goes_behind_what_the_batch_holds(
    nursery: trio.Nursery,
) -> None:
    """A message that is not for a direct write (a traced one) in the middle of a batch goes
    behind what the batch holds and wakes the writer, which writes them all in order: nothing
    is written directly past what is held, not even the batch's later messages."""
    hub = make_hub()
    socket = FakeSocket()
    written_many: list[list[Payload]] = []

    def write_many(payloads: list[Payload]) -> bool | bytes:
        written_many.append(payloads)  # pragma: no cover - must not be called
        return True  # pragma: no cover

    with hub.attach_consumer("news") as consumer:
        writer = Writer(consumer, socket)
        await nursery.start(writer.run)
        consumer.write_directly(socket.write, write_many)
        await trio.testing.wait_all_tasks_blocked()
        with hub.attach_producer("news") as producer:
            await producer.publish_many(["a", "traced", "c"], [], {1: Trace(0)})
            await trio.testing.wait_all_tasks_blocked()
        assert written_many == []
        assert socket.calls == 0
        assert socket.wire == ["a", "traced", "c"]
        assert [type(item) for item in writer.received] == [str, Traced, str]
        assert consumer.messages_out == 3


@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_under_block_a_batch_is_not_held_while_the_publish_waits(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """block: while a publish waits for a full consumer, the other consumers' messages of
    the same batch are already on their sockets (not held for the batch's end)."""
    hub = make_hub(slow_consumer_policy="block", consumer_buffer_messages=1)
    fast = FakeSocket()

    with hub.attach_consumer("news") as slow, hub.attach_consumer("news") as consumer:
        writer = Writer(consumer, fast)
        await nursery.start(writer.run)
        consumer.write_directly(fast.write, fast.write_many)
        await trio.testing.wait_all_tasks_blocked()
        with hub.attach_producer("news") as producer:
            async with trio.open_nursery() as publishing:
                publishing.start_soon(producer.publish_many, ["a", "b", "c"], [])
                await trio.testing.wait_all_tasks_blocked()  # waits for the slow one
                assert fast.wire == ["a", "b"]  # written while the publish waits
                assert slow.receive_nowait() == "a"
                await trio.testing.wait_all_tasks_blocked()
                assert slow.receive_nowait() == "b"
                await trio.testing.wait_all_tasks_blocked()
                assert slow.receive_nowait() == "c"
        assert fast.wire == ["a", "b", "c"]


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest", "disconnect"])
@pytest.mark.timeout(10)
async def test_a_read_held_for_a_waiting_writer_has_its_whole_buffer(
    nursery: trio.Nursery, policy: str
) -> None:
    """A buffer of 2 and one producer read of 3 messages for an idle consumer: the first is
    the waiting writer's (taking no place, as when a writer is woken with it), so nothing is
    dropped or evicted, whatever the policy."""
    hub = make_hub(slow_consumer_policy=policy, consumer_buffer_messages=2)
    socket = FakeSocket()

    with hub.attach_consumer("news") as consumer:
        writer = Writer(consumer, socket)
        await nursery.start(writer.run)
        consumer.write_directly(socket.write, socket.write_many)
        await trio.testing.wait_all_tasks_blocked()
        with hub.attach_producer("news") as producer:
            await producer.publish_many(["a", "b", "c"], [])
            await trio.testing.wait_all_tasks_blocked()
        assert not consumer.detached
        assert consumer.dropped == 0
        assert socket.wire == ["a", "b", "c"]


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.timeout(10)
async def test_drop_oldest_counts_what_it_cannot_keep(nursery: trio.Nursery, batched: bool) -> None:
    """``drop_oldest`` with a byte bound: a message that does not fit beside the one the
    writer was handed is lost counted, never silently."""
    hub = make_hub(
        slow_consumer_policy="drop_oldest", consumer_buffer_bytes=100, max_message_bytes=100
    )
    socket = FakeSocket()

    with hub.attach_consumer("news") as consumer:
        writer = Writer(consumer, socket)
        await nursery.start(writer.run)
        consumer.write_directly(socket.write, socket.write_many if batched else None)
        await trio.testing.wait_all_tasks_blocked()
        with hub.attach_producer("news") as producer:
            await producer.publish_many(["a" * 60, "b" * 60], [])
            await trio.testing.wait_all_tasks_blocked()
        assert len(socket.wire) + consumer.dropped == 2, (socket.wire, consumer.dropped)


@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_no_direct_write_once_the_waiting_reader_is_cancelled_or_the_buffer_closed(
    nursery: trio.Nursery,
) -> None:
    """The direct write is offered only while a reader waits: a receive cancelled (its
    writer still registered) leaves the next message buffered, not written; a closed buffer
    takes nothing at all."""
    hub = make_hub()
    socket = FakeSocket()
    with hub.attach_consumer("news") as consumer:
        consumer.write_directly(socket.write)
        waiting = trio.CancelScope()
        nursery.start_soon(_receive_in, waiting, consumer)
        await trio.testing.wait_all_tasks_blocked()
        await publish_all(hub, "news", ["direct"])
        assert socket.wire == ["direct"]  # it waited: written directly, never woken
        waiting.cancel()
        await trio.testing.wait_all_tasks_blocked()
        await publish_all(hub, "news", ["buffered"])
        assert socket.wire == ["direct"]
        assert consumer.buffered == 1
        assert consumer.receive_nowait() == "buffered"
        buffer = consumer.buffer
        assert buffer is not None
        nursery.start_soon(_receive_in, trio.CancelScope(), consumer)
        await trio.testing.wait_all_tasks_blocked()
        assert buffer.direct_now is not None  # a reader waits again
        buffer.close()  # wakes it, but it has not run yet
        assert buffer.offer("late", 4) is False
        assert socket.wire == ["direct"]


async def _receive_in(scope: trio.CancelScope, consumer: Consumer) -> None:
    with scope:
        with contextlib.suppress(trio.EndOfChannel):
            await consumer.receive()


@pytest.mark.timeout(HANG_GUARD_SECONDS)
async def test_a_full_held_batch_under_drop_oldest_keeps_its_order(nursery: trio.Nursery) -> None:
    """A batch held for a waiting writer fills its buffer: ``drop_oldest`` makes room by
    dropping held messages, and the newest is held behind the rest, never written directly
    ahead of them (the policy offers outside the batch)."""
    hub = make_hub(slow_consumer_policy="drop_oldest", consumer_buffer_messages=2)
    socket = FakeSocket()

    with hub.attach_consumer("news") as consumer:
        writer = Writer(consumer, socket)
        await nursery.start(writer.run)
        consumer.write_directly(socket.write, socket.write_many)
        await trio.testing.wait_all_tasks_blocked()
        with hub.attach_producer("news") as producer:
            await producer.publish_many(["m1", "m2", "m3", "m4", "m5"], [])
            await trio.testing.wait_all_tasks_blocked()
        assert socket.wire == sorted(socket.wire)  # in order, whatever was dropped
        assert socket.wire[0] == "m1"  # the writer's: never dropped
        assert socket.wire[-1] == "m5"
        assert len(socket.wire) + consumer.dropped == 5
