"""One channel: its consumers, its counters, and delivery by mode and policy. No I/O.

Delivery, per channel mode:

``broadcast``
    Every consumer has its own :class:`~triorelay.hub.buffers.ConsumerBuffer`.
    :meth:`Channel.deliver` offers the message to each. When one is full, the channel's
    slow-consumer policy decides: ``disconnect`` evicts that consumer (its connection is
    cancelled and closed with 1013), ``drop_oldest`` / ``drop_newest`` lose a message for that
    consumer only (counted), ``block`` makes ``deliver`` wait until that consumer has room.
``queue``
    One shared :class:`~triorelay.hub.buffers.LocalQueue`; each message goes to exactly one
    consumer, the one that has waited longest. When it is full, ``deliver`` waits
    (backpressure). With a broker that holds queues itself (Redis), consumers take from it
    instead (:class:`~triorelay.hub.buffers.SourceReader`) and nothing is queued here.
    An acked queue channel (``ack = "explicit"``) holds jobs instead
    (:class:`~triorelay.hub.jobs.JobQueue`, or the broker's own
    :class:`~triorelay.brokers.base.JobSource`), read through a
    :class:`~triorelay.hub.jobs.JobReader`.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from triorelay import framing
from triorelay.brokers.base import Broker, JobSource
from triorelay.envelopes import Payload, gap_notice, size_of
from triorelay.errors import CloseCode
from triorelay.hub.buffers import (
    ConsumerBuffer,
    Entry,
    Item,
    LocalQueue,
    Occupancy,
    QueueBudget,
    SourceReader,
    Traced,
)
from triorelay.hub.connections import Consumer, Producer, next_connection_id
from triorelay.hub.jobs import JobQueue, JobReader
from triorelay.hub.statistics import ChannelCounters, ChannelStatistics
from triorelay.settings import ChannelConfig
from triorelay.tracing import Trace, now_ns


class Channel:
    """A named channel on this relay: its members, its counters, and local delivery.

    ``broker`` is told when the channel gains its first consumer and loses its last one
    (:meth:`Broker.watch` / :meth:`Broker.unwatch`), and provides the queue of a queue
    channel when it holds queues itself.
    """

    def __init__(
        self, name: str, config: ChannelConfig, broker: Broker, queue_budget: QueueBudget
    ) -> None:
        self.name = name
        self.config = config
        self._broker = broker
        self._policy = config.slow_consumer_policy
        self.counters = ChannelCounters()
        #: Messages lost to broadcast consumers by why (``drop_oldest``, ``drop_newest``,
        #: ``evicted``, ``gap``): the hub's, shared by every channel (they outlive it).
        self.drops: dict[str, int] = {}
        self.occupancy = Occupancy()
        self.producers: set[Producer] = set()
        # Attach and detach are O(1); delivery iterates a snapshot, rebuilt after a change,
        # so a policy may evict while a delivery is under way.
        self._consumers: dict[Consumer, None] = {}
        self._snapshot: tuple[Consumer, ...] | None = ()
        #: How many consumers are told positions (they get an Entry per message).
        self._positioned = 0
        #: Batches being delivered (:meth:`begin_batch`), and the buffers holding messages
        #: for one write at their end.
        self._batches = 0
        self._batched: list[ConsumerBuffer] = []
        self.closed = False
        self._source = broker.queue(name) if config.mode == "queue" and not config.acked else None
        self._queue: LocalQueue | None = None
        #: An acked queue channel's jobs: the broker's, or this relay's own (``_job_queue``).
        self.jobs: JobSource | None = broker.jobs(name) if config.acked else None
        self._job_queue: JobQueue | None = None
        if config.acked and self.jobs is None:
            self.jobs = self._job_queue = JobQueue(
                config.queue_buffer_messages,
                self.occupancy,
                queue_budget,
                config.block_timeout_seconds,
            )
        elif config.mode == "queue" and self._source is None and self.jobs is None:
            self._queue = LocalQueue(
                config.queue_buffer_messages,
                self.occupancy,
                queue_budget,
                config.block_timeout_seconds,
            )

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """The attached consumers, in the order they joined."""
        snapshot = self._snapshot
        if snapshot is None:
            snapshot = self._snapshot = tuple(self._consumers)
        return snapshot

    @property
    def buffered(self) -> int:
        """Messages held for consumers: in their buffers, or in the local queue."""
        return self.occupancy.messages

    @property
    def is_idle(self) -> bool:
        """True when nobody is attached and nothing is buffered: the channel can go."""
        return not self.producers and not self._consumers and not self.occupancy.messages

    # -- members --

    def attach_consumer(self, *, notices: bool = False, positioned: bool = False) -> Consumer:
        """A new consumer of this channel; ``positioned`` (broadcast only): its buffer gets
        an :class:`Entry` per message (its position with it), and notices as framing
        control messages."""
        config = self.config
        if self.jobs is not None:
            consumer_id = next_connection_id()
            jobs = JobReader(self.jobs, consumer_id)
            consumer = Consumer(self.name, config.mode, jobs, self.counters, id=consumer_id)
        elif self._source is not None:
            consumer_id = next_connection_id()
            reader = SourceReader(self._source, consumer_id)
            consumer = Consumer(self.name, config.mode, reader, self.counters, id=consumer_id)
        elif self._queue is not None:
            consumer = Consumer(self.name, config.mode, self._queue.reader(), self.counters)
        else:
            buffer = ConsumerBuffer(
                config.consumer_buffer_messages, config.consumer_buffer_bytes, self.occupancy
            )
            consumer = Consumer(self.name, config.mode, buffer, self.counters)
        consumer.notices = notices or positioned
        if positioned and consumer.buffer is not None:
            consumer.positioned = True
            self._positioned += 1
        if not self._consumers and config.mode == "broadcast":
            self._broker.watch(self.name)
        self._consumers[consumer] = None
        self._snapshot = None
        return consumer

    def detach_consumer(self, consumer: Consumer) -> None:
        if consumer not in self._consumers:
            return
        del self._consumers[consumer]
        self._snapshot = None
        if consumer.positioned:
            self._positioned -= 1
        consumer.inbox.close()
        if not self._consumers and self.config.mode == "broadcast":
            self._broker.unwatch(self.name)

    # -- delivery --

    async def wait_for_room(self, size: int) -> None:
        """Return once a message of ``size`` would be delivered without waiting (``block``,
        local queue), so that a publish given up while waiting leaves nothing behind."""
        if self._queue is not None:
            await self._queue.wait_for_room(size)
        elif self._job_queue is not None:
            await self._job_queue.wait_for_room(size)
        elif self._policy == "block":
            while True:
                full = next(
                    (c.buffer for c in self.consumers if c.buffer and not c.buffer.has_room(size)),
                    None,
                )
                if full is None:
                    return
                await full.wait_for_room()

    async def deliver(
        self, payload: Payload, offset: int = 0, epoch: str = "", trace: Trace | None = None
    ) -> None:
        """Hand one message to this relay's consumers by the channel's mode and policy.

        ``offset`` and ``epoch`` are its position (broadcast), for positioned consumers;
        ``trace``: its stage times so far (a traced message, which every consumer then gets
        as a :class:`Traced` item). Waits only for a ``block`` policy or a full local queue;
        does not checkpoint otherwise. Raises :class:`trio.ClosedResourceError` if the
        channel closes while it waits to queue.
        """
        size = size_of(payload)
        counters = self.counters
        counters.messages_delivered += 1
        counters.bytes_delivered += size
        if self._queue is not None:
            await self._queue.put(payload, size)
            return
        if self._job_queue is not None:
            await self._job_queue.put(payload, size, offset)
            return
        if trace is not None:
            await self._deliver_traced(payload, size, offset, epoch, trace)
            return
        entry = Entry(payload, size, offset, epoch) if self._positioned else None
        if self._policy == "block":
            await self._deliver_blocking(payload, size, entry)
        else:
            self._deliver_nowait(payload, size, entry)

    def begin_batch(self) -> None:
        """Several messages are about to be delivered in a row (one producer's read): until
        :meth:`end_batch`, a waiting consumer's messages are held, not written one by one,
        and at the end each such consumer gets them in one socket write (or, if its socket
        cannot take them at once, its writer is woken to write them): one write per
        consumer instead of one per message (see
        :class:`~triorelay.hub.buffers.ConsumerBuffer`)."""
        self._batches += 1

    def end_batch(self) -> None:
        """The end of a batch: write what each consumer's buffer held for it."""
        self._batches -= 1
        if self._batches or not self._batched:
            return
        batched, self._batched = self._batched, []
        for buffer in batched:
            buffer.flush_batch()

    def _deliver_nowait(self, payload: Payload, size: int, entry: Entry | None) -> None:
        policy = self._policy
        snapshot = self._snapshot
        consumers = snapshot if snapshot is not None else self.consumers
        batch = self._batched if self._batches else None
        if entry is None:  # the common case: every consumer raw, nothing traced
            kind = type(payload)
            if batch is None and (kind is str or kind is bytes):
                self._write_or_offer(consumers, payload, size, policy)
                return
            for consumer in consumers:
                buffer = consumer.buffer
                assert buffer is not None
                if not buffer.offer(payload, size, batch):
                    self._full(consumer, buffer, payload, size, policy)
            return
        # Positioned consumers get the Entry; raw ones the payload, unless it is traced.
        traced = type(entry) is Traced
        raw = entry if traced else payload
        for consumer in consumers:
            buffer = consumer.buffer
            assert buffer is not None
            item = entry if consumer.positioned else raw
            if not buffer.offer(item, size, batch):
                self._full(consumer, buffer, item, size, policy)

    def _write_or_offer(
        self, consumers: Iterable[Consumer], payload: Payload, size: int, policy: str
    ) -> None:
        """A raw message outside a batch: written at once to each consumer whose buffer has
        a direct write free now (``ConsumerBuffer.direct_now``), offered to the others.

        ``ConsumerBuffer.offer`` does the same for one consumer; this is that, inlined in the
        loop, with the channel's counters added once for the message: per delivery, one
        call (the write) instead of two, and two counters instead of four.
        """
        written_directly = 0
        for consumer in consumers:
            buffer = consumer.buffer
            assert buffer is not None
            write = buffer.direct_now
            if write is not None:
                written = write(payload)
                if written is True:
                    consumer.messages_out += 1
                    consumer.bytes_out += size
                    written_directly += 1
                else:
                    buffer.settle_direct(payload, size, written)
            elif not buffer.offer(payload, size):
                self._full(consumer, buffer, payload, size, policy)
        if written_directly:
            counters = self.counters
            counters.messages_out += written_directly
            counters.bytes_out += written_directly * size

    def _full(
        self,
        consumer: Consumer,
        buffer: ConsumerBuffer,
        item: Item,
        size: int,
        policy: str,
    ) -> None:
        """``consumer``'s buffer had no room for ``item``: the channel's policy decides."""
        if policy == "drop_newest":
            self._count_drop(consumer, 1, "drop_newest")
        elif policy == "drop_oldest":
            while not buffer.offer(item, size):
                if not buffer.drop_oldest():
                    # Nothing left to drop but the message the writer was handed (its bytes
                    # still count): this one does not fit beside it, and is lost, counted.
                    self._count_drop(consumer, 1, "drop_oldest")
                    return
                self._count_drop(consumer, 1, "drop_oldest")
        else:  # disconnect
            self._evict(consumer)

    async def _deliver_blocking(self, payload: Payload, size: int, entry: Entry | None) -> None:
        # Offer to everyone first, so a full consumer does not hold the message back from the
        # consumers after it; then wait for room in each one that was full, until the
        # message's deadline: past it, a consumer still full is closed (block_timeout_seconds).
        traced = type(entry) is Traced
        raw = entry if traced else payload
        full: list[Consumer] = []
        # Never held for the end of a batch here: this may wait for a full consumer, and the
        # others' messages must not wait with it.
        for consumer in self.consumers:
            buffer = consumer.buffer
            assert buffer is not None
            item = entry if consumer.positioned else raw
            assert item is not None
            if not buffer.offer(item, size):
                full.append(consumer)
        if not full:
            return
        timeout = self.config.block_timeout_seconds
        deadline = trio.current_time() + timeout
        for consumer in full:
            buffer = consumer.buffer
            assert buffer is not None
            item = entry if consumer.positioned else raw
            assert item is not None
            with trio.move_on_at(deadline):
                # A consumer that leaves while we wait has its buffer closed: skip it.
                while not buffer.closed and not buffer.offer(item, size):
                    await buffer.wait_for_room()
                continue
            if not buffer.closed:
                self._evict(consumer, f"consumer too slow: kept a publish waiting {timeout:g} s")

    async def _deliver_traced(
        self, payload: Payload, size: int, offset: int, epoch: str, trace: Trace
    ) -> None:
        """A traced message: its first two stages timed, one Traced item for every consumer."""
        trace.delivered_ns = now_ns()
        self.counters.observe(0, (trace.accepted_ns - trace.read_ns) / 1e9)
        self.counters.observe(1, (trace.delivered_ns - trace.accepted_ns) / 1e9)
        item = Traced(payload, size, offset, epoch, trace)
        if self._policy == "block":
            await self._deliver_blocking(payload, size, item)
        else:
            self._deliver_nowait(payload, size, item)

    def _count_drop(self, consumer: Consumer, count: int, why: str) -> None:
        consumer.count_dropped(count)
        self.counters.dropped += count
        self.drops[why] = self.drops.get(why, 0) + count

    def _evict(self, consumer: Consumer, reason: str | None = None) -> None:
        self.counters.disconnected_slow += 1
        buffered, buffered_bytes = consumer.buffered, consumer.buffered_bytes
        self.detach_consumer(consumer)
        # What it still held is lost to it, and so is the message that did not fit: count
        # them, so no loss is silent.
        self._count_drop(consumer, buffered + 1, "evicted")
        if reason is None:
            held = f"{buffered} messages, {buffered_bytes} bytes"
            reason = f"consumer too slow: its buffer was full ({held})"
        consumer.close(CloseCode.TRY_AGAIN_LATER, reason)

    def report_gap(self, count: int | None, reason: str, epoch: str | None = None) -> None:
        """The broker may have lost messages on their way here: tell every consumer.

        ``count`` is the number of messages missed when the broker knows it (it is counted as
        dropped for each consumer), ``None`` when it cannot know (Redis restarted); ``epoch``
        the channel's new epoch if its history was lost. Consumers with ``notices`` get
        :func:`~triorelay.envelopes.gap_notice` in their stream (positioned ones the
        framing's :func:`~triorelay.framing.gap`), unless their buffer is full (they are
        losing messages anyway; a positioned consumer's writer still sees the new epoch).
        """
        self.counters.gaps += 1
        notice = gap_notice(count, reason)
        framed = framing.gap(self.name, count, reason, epoch) if self._positioned else notice
        for consumer in self.consumers:
            if count:  # counted as dropped, but told as a gap, not again as "dropped"
                consumer.count_dropped(count, notice=False)
                self.counters.dropped += count
                self.drops["gap"] = self.drops.get("gap", 0) + count
            buffer = consumer.buffer
            if consumer.notices and buffer is not None:
                told = framed if consumer.positioned else notice
                buffer.offer(told, size_of(told))

    # -- state --

    def statistics(self) -> ChannelStatistics:
        counters = self.counters
        return ChannelStatistics(
            name=self.name,
            mode=self.config.mode,
            slow_consumer_policy=self._policy if self.config.mode == "broadcast" else "block",
            producers=len(self.producers),
            consumers=len(self._consumers),
            messages_in=counters.messages_in,
            bytes_in=counters.bytes_in,
            messages_delivered=counters.messages_delivered,
            bytes_delivered=counters.bytes_delivered,
            messages_out=counters.messages_out,
            bytes_out=counters.bytes_out,
            dropped=counters.dropped,
            disconnected_slow=counters.disconnected_slow,
            buffered=self.occupancy.messages,
            peak_buffered=self.occupancy.peak,
            gaps=counters.gaps,
            recoveries=dict(counters.recoveries),
            latency=counters.latency.summary() if counters.latency is not None else None,
            jobs=dict(counters.jobs.counts) if counters.jobs is not None else None,
        )

    def close(self) -> None:
        """End every consumer's stream and refuse further deliveries."""
        self.closed = True
        for consumer in self._consumers:
            consumer.inbox.close()
        if self._consumers and self.config.mode == "broadcast":
            self._broker.unwatch(self.name)
        if self._queue is not None:
            self._queue.close()
        if self._job_queue is not None:
            self._job_queue.close()
