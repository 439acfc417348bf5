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

Nothing here sends on a socket: the routes read each consumer's messages with
:meth:`Consumer.receive` and write them. Cancellation reaches a connection through the
``cancel_scope`` its route registers, which is how eviction and shutdown end connections.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import trio

from triorelay.brokers import Broker, MemoryBroker, QueueSource
from triorelay.errors import CloseCode, InvalidChannelName, RequestError, TooManyChannels
from triorelay.settings import ChannelConfig, Settings

Payload = bytes | str
"""A message, relayed as it came: ``str`` for a text frame, ``bytes`` for a binary one."""

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


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    """A snapshot of one producer's or consumer's counters."""

    id: int
    role: str
    channel: str
    messages_in: int
    bytes_in: int
    messages_out: int
    bytes_out: int
    dropped: int
    buffered: int
    peak_buffered: int


_connection_ids = itertools.count(1)


class Connection:
    """What producers and consumers share: identity, counters and how to end them.

    The route that owns the connection sets ``cancel_scope`` to the scope of its nursery; the
    hub cancels it (with :meth:`close`) to evict a slow consumer or to shut down, and leaves the
    close code and reason in ``close_code`` / ``close_reason`` for the route to send.
    """

    role = "connection"

    def __init__(self, channel: Channel | None) -> None:
        self.id = next(_connection_ids)
        self.channel = channel
        self.cancel_scope: trio.CancelScope | None = None
        self._on_close: Callable[[], object] | None = None
        #: Set by the route when the client went away first (nothing left to close).
        self.disconnected = False
        #: A :class:`CloseCode`, or a code relayed as it came (a proxied upstream's own code).
        self.close_code: int | None = None
        self.close_reason = ""
        self.messages_in = self.bytes_in = 0
        self.messages_out = self.bytes_out = 0
        self.dropped = 0

    def bind(
        self, cancel_scope: trio.CancelScope, on_close: Callable[[], object] | None = None
    ) -> None:
        """Register the scope the owning route runs in; :meth:`close` will cancel it.

        ``on_close`` is called once when the hub closes the connection (the route uses it to
        bound the time the close may take).
        """
        self.cancel_scope = cancel_scope
        self._on_close = on_close
        if self.close_code is not None:
            self.close(self.close_code, self.close_reason)

    def close(self, code: int, reason: str) -> None:
        """Ask the owning route to close this connection with ``code`` and ``reason``.

        The first call wins; the route's cancel scope is cancelled at once.
        """
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()

    @property
    def buffered(self) -> int:
        return 0

    @property
    def peak_buffered(self) -> int:
        return 0

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            id=self.id,
            role=self.role,
            channel=self.channel.name if self.channel is not None else "",
            messages_in=self.messages_in,
            bytes_in=self.bytes_in,
            messages_out=self.messages_out,
            bytes_out=self.bytes_out,
            dropped=self.dropped,
            buffered=self.buffered,
            peak_buffered=self.peak_buffered,
        )


class Producer(Connection):
    """A producer attached to a channel. Publish with :meth:`publish`."""

    channel: Channel

    role = "producer"

    async def publish(self, payload: Payload) -> int:
        """Publish one message and return its channel sequence number.

        Blocks only where the channel's policy says so (``block``, or a full queue); it does not
        checkpoint otherwise. Raises :class:`trio.ClosedResourceError` if the channel was closed
        (the hub is shutting down).
        """
        size = len(payload)
        self.messages_in += 1
        self.bytes_in += size
        return await self.channel.hub.broker.publish(self.channel, payload, size)

    async def publish_many(self, payloads: list[Payload], published: list[int]) -> None:
        """Publish ``payloads`` in order (see :meth:`Broker.publish_many`): each accepted
        one's sequence number is appended to ``published``, also when this raises."""
        self.messages_in += len(payloads)
        self.bytes_in += sum(map(len, payloads))
        await self.channel.hub.broker.publish_many(self.channel, payloads, published)


class Consumer(Connection):
    """A consumer attached to a channel. Read its messages with :meth:`receive`.

    ``pending_dropped`` counts the messages this consumer lost since it last looked
    (:meth:`take_dropped_notice`), so the route can tell the client about gaps. A consumer
    with ``notices`` also gets a gap notice in its stream when the broker reports one
    (:meth:`Channel.report_gap`).
    """

    role = "consumer"
    channel: Channel

    def __init__(
        self,
        channel: Channel,
        receive_channel: trio.MemoryReceiveChannel[Payload],
        send_channel: trio.MemorySendChannel[Payload] | None,
    ) -> None:
        super().__init__(channel)
        self._receive_channel = receive_channel
        # Only broadcast consumers have a buffer of their own to fill.
        self._send_channel = send_channel
        self._room = trio.lowlevel.ParkingLot()
        self._buffered = 0
        self._peak_buffered = 0
        self.buffered_bytes = 0
        self.pending_dropped = 0
        self.detached = False
        self.notices = False

    @property
    def buffered(self) -> int:
        return self._buffered

    @property
    def peak_buffered(self) -> int:
        return self._peak_buffered

    async def receive(self) -> Payload:
        """Wait for this consumer's next message.

        Raises :class:`trio.EndOfChannel` once the consumer is detached or the hub closes.
        """
        try:
            payload = await self._receive_channel.receive()
        except trio.ClosedResourceError:
            raise trio.EndOfChannel from None
        self._took(payload)
        return payload

    def receive_nowait(self) -> Payload:
        """The next message if one is buffered, else raise :class:`trio.WouldBlock`.

        Raises :class:`trio.EndOfChannel` once the consumer is detached or the hub closes.
        """
        try:
            payload = self._receive_channel.receive_nowait()
        except trio.ClosedResourceError:
            raise trio.EndOfChannel from None
        self._took(payload)
        return payload

    def requeue(self, payload: Payload) -> bool:
        """Queue mode: give back a message this consumer took but could not deliver.

        Returns False (and counts the message as dropped) when the queue has no room.
        """
        return self.channel.requeue(self, payload)

    async def acknowledge(self) -> None:
        """The message last received is handed to the client's socket (queue mode).

        Nothing to do for a local queue (no checkpoint); a broker-held queue deletes it.
        """

    def take_dropped_notice(self) -> int:
        """Return how many messages were dropped for this consumer since the last call."""
        dropped, self.pending_dropped = self.pending_dropped, 0
        return dropped

    def _took(self, payload: Payload) -> None:
        size = len(payload)
        self.messages_out += 1
        self.bytes_out += size
        channel = self.channel
        channel.messages_out += 1
        channel.bytes_out += size
        channel.buffered -= 1
        if self._send_channel is not None:
            self._buffered -= 1
            self.buffered_bytes -= size
            if self._room:
                self._room.unpark_all()

    # -- the channel's side: filling this consumer's buffer (broadcast only) --

    def _offer(self, payload: Payload, size: int, max_bytes: int) -> bool:
        """Buffer ``payload`` if there is room; return False if the buffer is full."""
        if self.buffered_bytes + size > max_bytes and self._buffered:
            return False
        assert self._send_channel is not None
        try:
            self._send_channel.send_nowait(payload)
        except trio.WouldBlock:
            return False
        self.buffered_bytes += size
        self._buffered += 1
        if self._buffered > self._peak_buffered:
            self._peak_buffered = self._buffered
        return True

    def _drop_oldest(self) -> bool:
        """Discard the oldest buffered message; False if there was none."""
        try:
            payload = self._receive_channel.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return False
        size = len(payload)
        self._buffered -= 1
        self.buffered_bytes -= size
        self.channel.buffered -= 1
        return True

    async def _wait_for_room(self) -> None:
        await self._room.park()

    def _detach(self) -> int:
        """Close the buffer; return how many messages it still held."""
        self.detached = True
        left = self._buffered
        if self._send_channel is not None:
            self._send_channel.close()
            self._buffered = 0
            self.buffered_bytes = 0
        self._receive_channel.close()
        self._room.unpark_all()
        return left


class SourcedConsumer(Consumer):
    """A queue-mode consumer fed one message at a time by a broker-held queue (Redis).

    Nothing is buffered here: :meth:`receive` takes the next message from the broker and
    :meth:`acknowledge` confirms it once sent. A message received and not acknowledged (the
    client left first) stays the broker's and goes back to the queue when the consumer
    detaches (:meth:`QueueSource.release`).
    """

    def __init__(self, channel: Channel, source: QueueSource) -> None:
        send, receive = trio.open_memory_channel[Payload](0)
        send.close()
        super().__init__(channel, receive, None)
        self._source = source
        self._receipt: object | None = None

    async def receive(self) -> Payload:
        if self.detached:
            raise trio.EndOfChannel
        payload, self._receipt = await self._source.take(self.id)
        size = len(payload)
        self.messages_out += 1
        self.bytes_out += size
        self.channel.messages_out += 1
        self.channel.bytes_out += size
        return payload

    def receive_nowait(self) -> Payload:
        raise trio.WouldBlock

    def requeue(self, payload: Payload) -> bool:
        """Left unacknowledged: the broker gives it back when this consumer detaches."""
        return True

    async def acknowledge(self) -> None:
        receipt, self._receipt = self._receipt, None
        if receipt is not None:
            await self._source.acknowledge(receipt)

    def _detach(self) -> int:
        if not self.detached:
            self._source.release(self.id)
        return super()._detach()


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
