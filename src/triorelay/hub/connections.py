"""Producers and consumers: what the hub knows of each connection. No I/O.

A :class:`Producer` publishes through the hub (:meth:`Producer.publish_many`); a
:class:`Consumer` reads its messages from its :class:`~triorelay.hub.buffers.Inbox`
(:meth:`Consumer.receive`). Every connection carries its own counters and the close code the
hub asked for; the route that owns it sends the close (see :mod:`triorelay.routes.session`).
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import trio

from triorelay.envelopes import Payload, size_of
from triorelay.hub.buffers import (
    ConsumerBuffer,
    Inbox,
    Item,
    Unfinished,
    WriteManyNow,
    WriteNow,
)
from triorelay.hub.statistics import ChannelCounters, ConnectionStatistics
from triorelay.settings import Mode
from triorelay.tracing import Trace

Publish = Callable[[list[Payload], list[int], int, "dict[int, Trace] | None"], Awaitable[None]]
"""``await publish(payloads, published, total_bytes, traces)``: see
:meth:`triorelay.hub.Hub.publish`."""

_connection_ids = itertools.count(1)


def next_connection_id() -> int:
    """A new connection id, unique in this process."""
    return next(_connection_ids)


class Connection:
    """What every connection shares: identity, counters and how to end it.

    The route that owns the connection binds its cancel scope (:meth:`bind`); the hub cancels
    it (with :meth:`close`) to evict a slow consumer or to shut down, and leaves the close code
    and reason in ``close_code`` / ``close_reason`` for the route to send.
    """

    role = "connection"

    def __init__(self, channel_name: str = "", *, id: int | None = None) -> None:
        self.id = id if id is not None else next(_connection_ids)
        #: The channel this connection is attached to ("" for echo, flows, uploads, proxy).
        self.channel_name = channel_name
        self.cancel_scope: trio.CancelScope | None = None
        self._on_close: Callable[[Connection], object] | None = None
        #: Set by the route when the client went away first (nothing left to close).
        self.disconnected = False
        #: A :class:`CloseCode`, or a code relayed as it came (a proxied upstream's own code).
        self.close_code: int | None = None
        self.close_reason = ""
        self.messages_in = self.bytes_in = 0
        self.messages_out = self.bytes_out = 0
        self.dropped = 0

    def bind(
        self,
        cancel_scope: trio.CancelScope,
        on_close: Callable[[Connection], object] | None = None,
    ) -> None:
        """Register the scope the owning route runs in; :meth:`close` will cancel it.

        ``on_close`` is called once, with the connection, when the hub closes it (the route
        uses it to bound the time the close may take). It is given the connection rather
        than holding it: a callback kept on the object it refers to would be a reference cycle.
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
            on_close(self)

    def count_in(self, payloads: list[Payload]) -> None:
        """The client sent ``payloads``."""
        self.messages_in += len(payloads)
        self.bytes_in += sum(map(size_of, payloads))

    def count_out(self, payloads: list[Payload]) -> None:
        """``payloads`` were written to the client."""
        self.messages_out += len(payloads)
        self.bytes_out += sum(map(size_of, payloads))

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
            channel=self.channel_name,
            messages_in=self.messages_in,
            bytes_in=self.bytes_in,
            messages_out=self.messages_out,
            bytes_out=self.bytes_out,
            dropped=self.dropped,
            buffered=self.buffered,
            peak_buffered=self.peak_buffered,
        )


class Producer(Connection):
    """A producer attached to a channel. Publish with :meth:`publish_many`."""

    role = "producer"

    def __init__(self, channel_name: str, publish: Publish) -> None:
        super().__init__(channel_name)
        self._publish = publish

    async def publish(self, payload: Payload) -> int:
        """Publish one message and return its channel sequence number (see :meth:`publish_many`)."""
        published: list[int] = []
        await self.publish_many([payload], published)
        return published[0]

    async def publish_many(
        self,
        payloads: list[Payload],
        published: list[int],
        traces: dict[int, Trace] | None = None,
        total_bytes: int | None = None,
    ) -> None:
        """Publish ``payloads`` in order: each accepted one's sequence number is appended to
        ``published``, also when this raises.

        Blocks only where the channel's policy says so (``block``, or a full queue), or for a
        networked broker's round trip. Raises :class:`trio.ClosedResourceError` if the channel
        was closed (the hub is shutting down), and what the broker raises
        (:class:`~triorelay.errors.BrokerUnavailable`).
        """
        # The connection counts what its client sent (read off its socket); the channel counts
        # what the broker accepted (``ChannelCounters``). Sizes are measured once, here (or by
        # the caller, which passes their sum as ``total_bytes``).
        total = sum(map(size_of, payloads)) if total_bytes is None else total_bytes
        self.messages_in += len(payloads)
        self.bytes_in += total
        await self._publish(payloads, published, total, traces)


class Consumer(Connection):
    """A consumer attached to a channel. Read its messages with :meth:`receive`.

    ``pending_dropped`` counts the messages this consumer lost since it last looked
    (:meth:`take_dropped_notice`), so the route can tell the client about gaps.
    """

    role = "consumer"

    def __init__(
        self,
        channel_name: str,
        mode: Mode,
        inbox: Inbox,
        counters: ChannelCounters,
        *,
        notices: bool = False,
        id: int | None = None,
    ) -> None:
        super().__init__(channel_name, id=id)
        self.mode = mode
        self.inbox = inbox
        #: The consumer's own buffer (broadcast), which the channel fills; None in queue mode.
        self.buffer: ConsumerBuffer | None = inbox if isinstance(inbox, ConsumerBuffer) else None
        self._counters = counters
        #: The consumer also gets the broker's gap notices in its stream.
        self.notices = notices
        #: Its inbox holds an :class:`~triorelay.hub.buffers.Entry` per message (its
        #: position with it), and notices as framing control messages.
        self.positioned = False
        #: Its client asked for a trace notice after each message of a traced producer.
        self.traces = False
        self.pending_dropped = 0

    @property
    def detached(self) -> bool:
        """True once the hub ended this consumer's stream (it left, was evicted, or shutdown)."""
        return self.inbox.closed

    @property
    def buffered(self) -> int:
        buffer = self.buffer
        return buffer.messages if buffer is not None else 0

    @property
    def buffered_bytes(self) -> int:
        buffer = self.buffer
        return buffer.bytes if buffer is not None else 0

    @property
    def peak_buffered(self) -> int:
        buffer = self.buffer
        return buffer.peak if buffer is not None else 0

    async def receive(self) -> Item:
        """Wait for this consumer's next message (an Entry for a positioned consumer).

        Raises :class:`trio.EndOfChannel` once the consumer is detached or the hub closes.
        """
        payload = await self.inbox.receive()
        self._took(payload)
        return payload

    def receive_nowait(self) -> Item:
        """The next message if one is buffered, else raise :class:`trio.WouldBlock`.

        Raises :class:`trio.EndOfChannel` once the consumer is detached or the hub closes.
        """
        payload = self.inbox.receive_nowait()
        self._took(payload)
        return payload

    def take_buffered(self, items: list[Item], limit: int) -> None:
        """Append what is buffered to ``items``, until it holds ``limit``: a writer's batch
        after the message it waited for. An ended stream shows on the next :meth:`receive`."""
        try:
            while len(items) < limit:
                items.append(self.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            pass

    def write_directly(
        self, write: WriteNow | None, write_many: WriteManyNow | None = None
    ) -> None:
        """Let the channel hand this consumer's messages to ``write`` in the publishing task
        while its writer waits with nothing buffered (broadcast; see
        :class:`~triorelay.hub.buffers.ConsumerBuffer`), and a batch's messages to
        ``write_many`` at the batch's end; ``None`` stops it. Each message written so is
        counted as this consumer's (and its channel's) as it goes out.

        The writer that calls this must handle :class:`~triorelay.hub.buffers.Unfinished`
        items from :meth:`receive`, and call :meth:`take_unfinished` when it stops.
        """
        buffer = self.buffer
        if buffer is None:
            return
        if write is None:
            buffer.write_directly(None)
        else:
            buffer.write_directly(write, write_many, self.traced_written, (self, self._counters))

    def take_unfinished(self) -> Unfinished | None:
        """The rest of a direct write not yet received (the stream was closed, or the writer
        is stopping): its writer must still write it (see :meth:`write_directly`)."""
        buffer = self.buffer
        return buffer.take_unfinished() if buffer is not None else None

    def requeue(self, payload: Payload) -> bool:
        """Queue mode: give back a message this consumer took but could not deliver.

        Returns False (and counts the message as dropped) when the queue has no room.
        """
        if not self.inbox.requeue(payload):
            self.count_dropped(1)
            self._counters.dropped += 1
            return False
        size = size_of(payload)
        self.messages_out -= 1
        self.bytes_out -= size
        self._counters.uncount_out(size)
        return True

    async def acknowledge(self) -> None:
        """The message last received is handed to the client's socket (queue mode).

        Nothing to do for a local queue (no checkpoint); a broker-held queue deletes it.
        """
        await self.inbox.acknowledge()

    def count_dropped(self, count: int, *, notice: bool = True) -> None:
        """``count`` messages were lost to this consumer (the channel's policy, a gap).

        ``notice``: tell the client in the next ``dropped`` notice (a gap has its own notice).
        """
        self.dropped += count
        if notice:
            self.pending_dropped += count

    def traced_written(self, trace: Trace, taken_ns: int, written_ns: int) -> None:
        """A traced message this consumer's writer took at ``taken_ns`` is on its socket."""
        counters = self._counters
        counters.observe(2, (taken_ns - trace.delivered_ns) / 1e9)
        counters.observe(3, (written_ns - taken_ns) / 1e9)

    def take_dropped_notice(self) -> int:
        """Return how many messages were dropped for this consumer since the last call."""
        dropped, self.pending_dropped = self.pending_dropped, 0
        return dropped

    @property
    def channel_counters(self) -> ChannelCounters:
        """Its channel's counters."""
        return self._counters

    def count_taken(self) -> None:
        """The inbox's last item was taken by the route itself (an acked queue's job)."""
        self._took("")

    def _took(self, payload: Item) -> None:
        if type(payload) is Unfinished:
            return  # counted when its first bytes went out
        size = self.inbox.last_size  # measured once, by the inbox
        self.messages_out += 1
        self.bytes_out += size
        counters = self._counters  # written out: this runs per message
        counters.messages_out += 1
        counters.bytes_out += size
