"""The hub: channels, fan-out and queue delivery, and the slow-consumer policies. No I/O.

A :class:`Hub` holds the live :class:`Channel` objects. Producers and consumers attach to a
channel with :meth:`Hub.attach_producer` / :meth:`Hub.attach_consumer` (context managers: leaving
detaches, and a channel with nobody attached and nothing buffered is removed).

Delivery, per channel mode:

``broadcast``
    Every consumer has its own bounded buffer: a trio memory channel of
    ``consumer_buffer_messages``, plus a byte count bounded by ``consumer_buffer_bytes``.
    :meth:`Channel.publish` offers the message to every consumer's buffer. When one is full, the
    channel's slow-consumer policy decides: ``disconnect`` evicts that consumer (its connection is
    cancelled and closed with 1013), ``drop_oldest`` / ``drop_newest`` lose a message for that
    consumer only (counted), ``block`` makes ``publish`` wait until that consumer has room.
``queue``
    One shared memory channel of ``queue_buffer_messages``; every consumer's writer receives from
    it, so each message goes to exactly one consumer, the one that has waited longest (round-robin
    among consumers with room). When the buffer is full, ``publish`` waits (backpressure).
    With a broker that holds queues itself (Redis), consumers take from it instead
    (:class:`~triorelay.connections.SourcedConsumer`) and nothing is queued here.

The connections themselves (producers, consumers, their counters) are in
:mod:`triorelay.connections`; the broker (:mod:`triorelay.brokers`) carries messages between
relays.

Nothing here sends on a socket: the routes read each consumer's messages with
:meth:`Consumer.receive` and write them. Cancellation reaches a connection through the
``cancel_scope`` its route registers, which is how eviction and shutdown end connections.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import trio

from triorelay.brokers import Broker, MemoryBroker
from triorelay.connections import (
    Connection,
    ConnectionStatistics,
    Consumer,
    Payload,
    Producer,
    SourcedConsumer,
)
from triorelay.errors import CloseCode, InvalidChannelName, RequestError, TooManyChannels
from triorelay.settings import ChannelConfig, Settings

_CHANNEL_NAME_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
)
MAX_CHANNEL_NAME_LENGTH = 128


def validate_channel_name(name: str) -> str:
    """Return ``name`` if it matches ``[A-Za-z0-9._:-]{1,128}``; raise InvalidChannelName."""
    if not 0 < len(name) <= MAX_CHANNEL_NAME_LENGTH or not _CHANNEL_NAME_CHARS.issuperset(name):
        raise InvalidChannelName("channel names are 1 to 128 characters from A-Z a-z 0-9 . _ : -")
    return name


class ShuttingDown(RequestError):
    """The relay is shutting down and takes no new connections."""

    status = 503
    close_code = CloseCode.GOING_AWAY


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """A snapshot of one channel's counters."""

    name: str
    mode: str
    slow_consumer_policy: str
    producers: int
    consumers: int
    messages_in: int
    bytes_in: int
    messages_out: int
    bytes_out: int
    dropped: int
    disconnected_slow: int
    buffered: int
    peak_buffered: int
    #: Gaps the broker reported: messages this relay may have missed (Redis outage, trimming).
    gaps: int


class Channel:
    """A named channel: its consumers, its counters, and delivery by mode and policy."""

    def __init__(self, hub: Hub, name: str, config: ChannelConfig) -> None:
        self.hub = hub
        self.name = name
        self.config = config
        self._policy = config.slow_consumer_policy
        self._max_bytes = config.consumer_buffer_bytes
        self.producers: set[Producer] = set()
        # A tuple, rebuilt on change: publish iterates it while policies may evict.
        self.consumers: tuple[Consumer, ...] = ()
        self.seq = 0
        self.messages_in = self.bytes_in = 0
        self.messages_out = self.bytes_out = 0
        self.dropped = 0
        self.disconnected_slow = 0
        self.gaps = 0
        self.buffered = 0
        self.peak_buffered = 0
        self.closed = False
        self._queue_send: trio.MemorySendChannel[Payload] | None = None
        self._queue_receive: trio.MemoryReceiveChannel[Payload] | None = None
        # Queue mode: the broker's queue (shared by relays) if it has one, else a local one.
        self._source = hub.broker.queue(name) if config.mode == "queue" else None
        if config.mode == "queue" and self._source is None:
            self._queue_send, self._queue_receive = trio.open_memory_channel[Payload](
                config.queue_buffer_messages
            )

    @property
    def is_idle(self) -> bool:
        """True when nobody is attached and nothing is buffered: the channel can go."""
        return not self.producers and not self.consumers and not self.buffered

    async def publish(self, payload: Payload, size: int) -> int:
        """Deliver one message by the channel's mode and policy; return its sequence number."""
        if self.closed:
            raise trio.ClosedResourceError(f"channel {self.name} is closed")
        self.seq += 1
        seq = self.seq
        self.messages_in += 1
        self.bytes_in += size
        if self._queue_send is not None:
            # Count first: a waiting consumer may take the message before send() returns.
            self._count_buffered()
            try:
                await self._queue_send.send(payload)
            except BaseException:
                self.buffered -= 1
                raise
        elif self._policy == "block":
            await self._publish_blocking(payload, size)
        else:
            self._publish_nowait(payload, size)
        return seq

    def _count_buffered(self) -> None:
        self.buffered += 1
        if self.buffered > self.peak_buffered:
            self.peak_buffered = self.buffered

    def _publish_nowait(self, payload: Payload, size: int) -> None:
        max_bytes = self._max_bytes
        for consumer in self.consumers:
            if consumer._offer(payload, size, max_bytes):
                self._count_buffered()
            elif self._policy == "drop_newest":
                self._count_drop(consumer, 1)
            elif self._policy == "drop_oldest":
                while not consumer._offer(payload, size, max_bytes):
                    if not consumer._drop_oldest():  # pragma: no cover - full implies buffered
                        break
                    self._count_drop(consumer, 1)
                else:
                    self._count_buffered()
            else:  # disconnect
                self._evict(consumer)

    async def _publish_blocking(self, payload: Payload, size: int) -> None:
        max_bytes = self._max_bytes
        # Offer to everyone first, so a full consumer does not hold the message back from the
        # consumers after it; then wait for room in each one that was full.
        full: list[Consumer] = []
        for consumer in self.consumers:
            if consumer._offer(payload, size, max_bytes):
                self._count_buffered()
            else:
                full.append(consumer)
        for consumer in full:
            # A consumer that leaves while we wait is detached: skip it.
            while not consumer.detached:
                if consumer._offer(payload, size, max_bytes):
                    self._count_buffered()
                    break
                await consumer._wait_for_room()

    def _count_drop(self, consumer: Consumer, count: int) -> None:
        consumer.dropped += count
        consumer.pending_dropped += count
        self.dropped += count

    def _evict(self, consumer: Consumer) -> None:
        self.disconnected_slow += 1
        buffered, buffered_bytes = consumer.buffered, consumer.buffered_bytes
        self.detach_consumer(consumer)
        # What it still held is lost to it: count it, so no loss is silent.
        consumer.dropped += buffered + 1
        self.dropped += buffered + 1
        consumer.close(
            CloseCode.TRY_AGAIN_LATER,
            f"consumer too slow: its buffer was full ({buffered} messages, {buffered_bytes} bytes)",
        )

    def report_gap(self, count: int | None, reason: str) -> None:
        """The broker may have lost messages on their way here: tell every consumer.

        ``count`` is the number of messages missed when the broker knows it (it is counted as
        dropped for each consumer), ``None`` when it cannot know (Redis restarted). Consumers
        with ``notices`` get ``{"triorelay": "gap", "count": N or null, "reason": ...}`` in
        their stream, unless their buffer is full (they are losing messages anyway).
        """
        self.gaps += 1
        notice = json.dumps({"triorelay": "gap", "count": count, "reason": reason})
        for consumer in self.consumers:
            if count:  # counted as dropped, but told as a gap, not again as "dropped"
                consumer.dropped += count
                self.dropped += count
            if consumer.notices and consumer._offer(notice, len(notice), self._max_bytes):
                self._count_buffered()

    def requeue(self, consumer: Consumer, payload: Payload) -> bool:
        """Queue mode: put back a message a consumer took but did not deliver."""
        assert self._queue_send is not None
        try:
            self._queue_send.send_nowait(payload)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._count_drop(consumer, 1)
            return False
        consumer.messages_out -= 1
        consumer.bytes_out -= len(payload)
        self.messages_out -= 1
        self.bytes_out -= len(payload)
        self._count_buffered()
        return True

    def attach_consumer(self) -> Consumer:
        consumer: Consumer
        if self._source is not None:
            consumer = SourcedConsumer(self, self._source)
        elif self._queue_receive is not None:
            consumer = Consumer(self, self._queue_receive.clone(), None)
        else:
            send, receive = trio.open_memory_channel[Payload](self.config.consumer_buffer_messages)
            consumer = Consumer(self, receive, send)
        if not self.consumers and self.config.mode == "broadcast":
            self.hub.broker.watch(self.name)
        self.consumers = (*self.consumers, consumer)
        return consumer

    def detach_consumer(self, consumer: Consumer) -> None:
        if consumer not in self.consumers:
            return
        self.consumers = tuple(c for c in self.consumers if c is not consumer)
        self.buffered -= consumer._detach()
        if not self.consumers and self.config.mode == "broadcast":
            self.hub.broker.unwatch(self.name)

    def statistics(self) -> ChannelStatistics:
        return ChannelStatistics(
            name=self.name,
            mode=self.config.mode,
            slow_consumer_policy=self._policy if self.config.mode == "broadcast" else "block",
            producers=len(self.producers),
            consumers=len(self.consumers),
            messages_in=self.messages_in,
            bytes_in=self.bytes_in,
            messages_out=self.messages_out,
            bytes_out=self.bytes_out,
            dropped=self.dropped,
            disconnected_slow=self.disconnected_slow,
            buffered=self.buffered,
            peak_buffered=self.peak_buffered,
            gaps=self.gaps,
        )

    def close(self) -> None:
        """End every consumer's stream and refuse further publishes."""
        self.closed = True
        for consumer in self.consumers:
            self.buffered -= consumer._detach()
        if self.consumers and self.config.mode == "broadcast":
            self.hub.broker.unwatch(self.name)
        if self._queue_send is not None:
            self._queue_send.close()


class Hub:
    """All live channels of this process, created on first use and removed when idle."""

    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.broker: Broker = broker if broker is not None else MemoryBroker()
        self._channels: dict[str, Channel] = {}
        self._connections: set[Connection] = set()
        self.closing = False

    def __len__(self) -> int:
        return len(self._channels)

    def _channel(self, name: str) -> Channel:
        if self.closing:
            raise ShuttingDown("the relay is shutting down")
        channel = self._channels.get(name)
        if channel is None:
            validate_channel_name(name)
            if len(self._channels) >= self.settings.max_channels:
                raise TooManyChannels(
                    f"the relay holds its maximum of {self.settings.max_channels} channels"
                )
            channel = Channel(self, name, self.settings.channel_config(name))
            self._channels[name] = channel
        return channel

    def _release(self, channel: Channel) -> None:
        if channel.is_idle and self._channels.get(channel.name) is channel:
            del self._channels[channel.name]

    @contextmanager
    def attach_producer(self, name: str) -> Iterator[Producer]:
        """Attach a producer to channel ``name`` (created if needed) for the ``with`` block.

        Raises :class:`RequestError` subclasses for a bad name, too many channels, or shutdown.
        """
        channel = self._channel(name)
        producer = Producer(channel)
        channel.producers.add(producer)
        self._connections.add(producer)
        try:
            yield producer
        finally:
            channel.producers.discard(producer)
            self._connections.discard(producer)
            self._release(channel)

    @contextmanager
    def attach_consumer(self, name: str, *, notices: bool = False) -> Iterator[Consumer]:
        """Attach a consumer to channel ``name`` (created if needed) for the ``with`` block.

        ``notices``: the consumer also gets the broker's gap notices in its stream.
        """
        channel = self._channel(name)
        consumer = channel.attach_consumer()
        consumer.notices = notices
        self._connections.add(consumer)
        try:
            yield consumer
        finally:
            channel.detach_consumer(consumer)
            self._connections.discard(consumer)
            self._release(channel)

    def attach_echo(self) -> AbstractContextManager[Connection]:
        """Register an echo connection (no channel) so that shutdown reaches it too."""
        return self.attach_standalone("echo")

    @contextmanager
    def attach_standalone(self, role: str) -> Iterator[Connection]:
        """Register a connection outside any channel (echo, flows, uploads, proxy) for the
        ``with`` block, so that shutdown reaches it too. Raises ShuttingDown once closing."""
        if self.closing:
            raise ShuttingDown("the relay is shutting down")
        connection = Connection(None)
        connection.role = role
        self._connections.add(connection)
        try:
            yield connection
        finally:
            self._connections.discard(connection)

    async def deliver(self, name: str, payload: Payload, size: int) -> None:
        """Deliver a message the broker brought from elsewhere to channel ``name``'s consumers.

        Applies the channel's mode and policy like a local publish (``block`` waits). A channel
        with no local consumers (they left while the message travelled) takes nothing.
        """
        channel = self._channels.get(name)
        if channel is not None and channel.consumers and not channel.closed:
            await channel.publish(payload, size)

    def report_gap(self, name: str, count: int | None, reason: str) -> None:
        """The broker may have lost messages of channel ``name``: see :meth:`Channel.report_gap`."""
        channel = self._channels.get(name)
        if channel is not None:
            channel.report_gap(count, reason)

    def channel_statistics(self, name: str) -> ChannelStatistics | None:
        channel = self._channels.get(name)
        return None if channel is None else channel.statistics()

    def statistics(self) -> list[ChannelStatistics]:
        return [channel.statistics() for channel in self._channels.values()]

    def connection_statistics(self, name: str) -> list[ConnectionStatistics]:
        channel = self._channels.get(name)
        if channel is None:
            return []
        members: list[Connection] = [*channel.producers, *channel.consumers]
        return [member.statistics() for member in members]

    def close(self, code: CloseCode = CloseCode.GOING_AWAY, reason: str = "") -> None:
        """Refuse new connections and ask every connection to close with ``code``.

        Idempotent. Does not wait: each connection's route closes its socket.
        """
        self.closing = True
        for connection in list(self._connections):
            connection.close(code, reason)
        for channel in self._channels.values():
            channel.close()
