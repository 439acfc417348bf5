"""Producers and consumers: what the hub knows of each connection. No I/O.

A :class:`Producer` publishes through its channel's broker; a :class:`Consumer` reads its
messages with :meth:`Consumer.receive` from its own bounded buffer (broadcast), the channel's
shared queue (queue mode), or, as a :class:`SourcedConsumer`, from a broker-held queue (Redis).
Every connection carries its counters and the close code the hub asked for; the route that owns
it sends the close (see :mod:`triorelay.hub`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from triorelay.brokers import QueueSource
    from triorelay.hub import Channel

Payload = bytes | str
"""A message, relayed as it came: ``str`` for a text frame, ``bytes`` for a binary one."""


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
        # Where a ``block`` publisher waits for room: made on first use (only ``block`` needs
        # it, and an idle connection should cost as little as possible).
        self._room: trio.lowlevel.ParkingLot | None = None
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
        if self._room is None:
            self._room = trio.lowlevel.ParkingLot()
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
        if self._room is not None:
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
