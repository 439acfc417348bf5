"""The hub: this relay's live channels, and the two ways messages move through them. No I/O.

- **Publish** (:meth:`Hub.publish`, through a :class:`~triorelay.hub.connections.Producer`):
  a producer's messages go to the broker, which numbers and carries them.
- **Deliver** (:meth:`Hub.deliver`, the broker's callback): what the broker brings for a
  channel is handed to that channel's consumers here (:meth:`Channel.deliver`).

With the memory broker the second follows from the first at once; with Redis it comes from the
broker's reader task, for messages published on any relay. Either way data moves down: route →
hub → broker → hub's channel → consumer buffer → route (``docs/topics/architecture.md``).

Producers and consumers attach with :meth:`Hub.attach_producer` / :meth:`Hub.attach_consumer`
(context managers: leaving detaches, and a channel with nobody attached and nothing buffered
is removed). Nothing here sends on a socket: routes read each consumer's messages with
:meth:`Consumer.receive` and write them; cancellation reaches a connection through the scope
its route binds, which is how eviction and shutdown end connections.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from functools import partial
from operator import attrgetter
from typing import Generic, TypeVar

import trio

from triorelay.brokers.base import Broker, BrokerFactory, Gap, Recovery
from triorelay.brokers.memory import MemoryBroker
from triorelay.envelopes import Payload
from triorelay.errors import CloseCode, InvalidChannelName, ShuttingDown, TooManyChannels
from triorelay.framing import Position
from triorelay.hub.buffers import QueueBudget
from triorelay.hub.channel import Channel
from triorelay.hub.connections import Connection, Consumer, Producer
from triorelay.hub.statistics import (
    ChannelStatistics,
    ConnectionStatistics,
    JobCounters,
    Traffic,
    count_recovery,
    namespace_of,
)
from triorelay.settings import Settings
from triorelay.tracing import StageHistograms, Trace

T = TypeVar("T")
M = TypeVar("M", bound=Connection)

_CHANNEL_NAME_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
)
MAX_CHANNEL_NAME_LENGTH = 128


def validate_channel_name(name: str) -> str:
    """Return ``name`` if it matches ``[A-Za-z0-9._:-]{1,128}``; raise InvalidChannelName."""
    if not 0 < len(name) <= MAX_CHANNEL_NAME_LENGTH or not _CHANNEL_NAME_CHARS.issuperset(name):
        raise InvalidChannelName("channel names are 1 to 128 characters from A-Z a-z 0-9 . _ : -")
    return name


class Attachment(Generic[M]):
    """A connection's membership of the hub for a ``with`` block: entering joins (and may
    raise what joining raises), leaving leaves. A small object rather than a generator, since
    one lives as long as each connection does."""

    __slots__ = ("_channel", "_connection", "_hub", "_join")

    def __init__(self, hub: Hub, join: Callable[[], tuple[M, Channel | None]]) -> None:
        self._hub = hub
        self._join: Callable[[], tuple[M, Channel | None]] | None = join

    def __enter__(self) -> M:
        assert self._join is not None, "an attachment is entered once"
        self._connection, self._channel = self._join()
        self._join = None
        return self._connection

    def __exit__(self, *exc_info: object) -> None:
        self._hub._leave(self._connection, self._channel)


class Hub:
    """All live channels of this process, created on first use and removed when idle.

    ``broker`` makes the broker, handing it :meth:`deliver` (default: the memory broker).
    """

    def __init__(self, settings: Settings, broker: BrokerFactory | None = None) -> None:
        self.settings = settings
        self.broker: Broker
        if broker is None:
            self.broker = MemoryBroker(self.deliver, settings)
        else:
            self.broker = broker(self.deliver)
        self._channels: dict[str, Channel] = {}
        #: What every local queue holds together (memory broker), at most max_queued_bytes.
        self.queue_budget = QueueBudget(settings.max_queued_bytes)
        self._connections: set[Connection] = set()
        #: Resumes on this relay by result (``recovered`` or the reason), every channel.
        self.recoveries: dict[str, int] = {}
        #: Stage latencies of traced messages by channel namespace (at most
        #: ``metrics_max_namespaces``, then ``other``): they outlive the channels.
        self.latency: dict[str, StageHistograms] = {}
        #: Acked queue channels' job counts by namespace (see JobCounters), for /metrics.
        self.jobs: dict[str, JobCounters] = {}
        #: Messages lost to consumers, every channel, by why (see Channel.drops).
        self.drops: dict[str, int] = {}
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
            config = self.settings.channel_config(name)
            if config.acked and len(config.dead_letter_of(name)) > MAX_CHANNEL_NAME_LENGTH:
                suffix = config.dead_letter_of("")
                raise InvalidChannelName(
                    f"an acked queue's name leaves room for its dead-letter channel "
                    f"(<name>{suffix}): at most {MAX_CHANNEL_NAME_LENGTH - len(suffix)} characters"
                )
            channel = Channel(name, config, self.broker, self.queue_budget)
            channel.counters.namespace_latency = self._namespace_latency(name)
            if config.acked:
                channel.counters.jobs = JobCounters(self._namespace_jobs(name))
            channel.drops = self.drops
            self._channels[name] = channel
        return channel

    def _namespace_jobs(self, name: str) -> JobCounters:
        return self._of_namespace(self.jobs, name, JobCounters)

    def _namespace_latency(self, name: str) -> StageHistograms:
        return self._of_namespace(self.latency, name, StageHistograms)

    def _of_namespace(self, table: dict[str, T], name: str, make: Callable[[], T]) -> T:
        """Channel ``name``'s namespace's entry in ``table`` (made on first use); past
        ``metrics_max_namespaces`` new namespaces share ``other``."""
        settings = self.settings
        namespace = namespace_of(name, settings.metrics_namespace_separator)
        if namespace not in table and len(table) >= settings.metrics_max_namespaces:
            namespace = "other"
        entry = table.get(namespace)
        if entry is None:
            entry = table[namespace] = make()
        return entry

    def _release(self, channel: Channel) -> None:
        if channel.is_idle and self._channels.get(channel.name) is channel:
            del self._channels[channel.name]
            self.broker.forget(channel.name)

    # -- the two ways through --

    async def publish(
        self,
        channel: Channel,
        payloads: list[Payload],
        published: list[int],
        total_bytes: int | None = None,
        traces: dict[int, Trace] | None = None,
    ) -> None:
        """Publish a producer's ``payloads`` on ``channel`` through the broker, in order.

        Each accepted message's sequence number is appended to ``published`` (also when this
        raises), and only accepted messages are counted (``total_bytes``: their sizes' sum,
        when the caller has it). Raises :class:`trio.ClosedResourceError` once the channel is
        closed (shutdown).
        """
        if channel.closed:
            raise trio.ClosedResourceError(f"channel {channel.name} is closed")
        start = len(published)
        # Delivered here, several in a row: each waiting consumer's writer writes them in one go.
        batch = len(payloads) > 1 and self.broker.delivers_locally
        if batch:
            channel.begin_batch()
        try:
            await self.broker.publish(
                channel.name, channel.config.mode, payloads, published, traces
            )
        finally:
            if batch:
                channel.end_batch()
            accepted = len(published) - start
            if accepted == len(payloads) and total_bytes is not None:
                channel.counters.messages_in += accepted
                channel.counters.bytes_in += total_bytes
            else:
                channel.counters.count_in(payloads[:accepted])

    async def recover(self, name: str, since: Position | None) -> Recovery:
        """Channel ``name``'s position now and, for ``since``, what a resuming consumer missed
        (see :meth:`Broker.recover <triorelay.brokers.base.Broker.recover>`), counted in the
        channel's statistics."""
        recovery = await self.broker.recover(name, since)
        if since is not None:
            count_recovery(self.recoveries, recovery.reason)
            channel = self._channels.get(name)
            if channel is not None:
                channel.counters.count_recovery(recovery.reason)
        return recovery

    async def wait_for_room(self, name: str, size: int) -> None:
        """Return once channel ``name`` would take a message of ``size`` without waiting (see
        :meth:`Channel.wait_for_room`). With a broker that holds queues itself, or carries
        broadcast messages to other relays, this relay's channel never makes a publish wait."""
        channel = self._channels.get(name)
        if channel is not None and self.broker.delivers_locally:
            await channel.wait_for_room(size)

    async def deliver(
        self, name: str, item: Payload | Gap, offset: int, epoch: str, trace: Trace | None
    ) -> None:
        """The broker's callback: hand ``item`` to this relay's consumers of channel ``name``,
        with its position (``offset``, ``epoch``) and, traced, its stage times so far.

        A message goes through the channel's mode and policy (``block`` and a full local queue
        wait); a :class:`Gap` is reported to the channel's consumers. A channel that is gone or
        closed (its consumers left while the message travelled, or shutdown) takes nothing.
        """
        channel = self._channels.get(name)
        if channel is None or channel.closed:
            return
        if isinstance(item, Gap):
            channel.report_gap(item.count, item.reason, item.epoch)
        else:
            await channel.deliver(item, offset, epoch, trace)

    # -- members --

    def attach_producer(self, name: str) -> Attachment[Producer]:
        """Attach a producer to channel ``name`` (created if needed) for the ``with`` block.

        Entering raises :class:`RequestError` subclasses for a bad name, too many channels, or
        shutdown.
        """
        return Attachment(self, partial(self._join_as_producer, name))

    def attach_consumer(
        self, name: str, *, notices: bool = False, positioned: bool = False
    ) -> Attachment[Consumer]:
        """Attach a consumer to channel ``name`` (created if needed) for the ``with`` block.

        ``notices``: the consumer also gets the broker's gap notices in its stream;
        ``positioned``: it is told each message's position (see :meth:`Channel.attach_consumer`).
        """
        return Attachment(self, partial(self._join_as_consumer, name, notices, positioned))

    def attach_echo(self) -> Attachment[Connection]:
        """Register an echo connection (no channel) so that shutdown reaches it too."""
        return self.attach_standalone("echo")

    def attach_standalone(self, role: str) -> Attachment[Connection]:
        """Register a connection outside any channel (echo, flows, uploads, proxy) for the
        ``with`` block, so that shutdown reaches it too. Entering raises ShuttingDown once
        closing."""
        return Attachment(self, partial(self._join_standalone, role))

    def _join_as_producer(self, name: str) -> tuple[Producer, Channel]:
        channel = self._channel(name)

        async def publish(
            payloads: list[Payload],
            published: list[int],
            total: int,
            traces: dict[int, Trace] | None = None,
        ) -> None:
            await self.publish(channel, payloads, published, total, traces)

        producer = Producer(name, publish)
        channel.producers.add(producer)
        self._connections.add(producer)
        return producer, channel

    def _join_as_consumer(
        self, name: str, notices: bool, positioned: bool
    ) -> tuple[Consumer, Channel]:
        channel = self._channel(name)
        consumer = channel.attach_consumer(notices=notices, positioned=positioned)
        self._connections.add(consumer)
        return consumer, channel

    def _join_standalone(self, role: str) -> tuple[Connection, None]:
        if self.closing:
            raise ShuttingDown("the relay is shutting down")
        connection = Connection()
        connection.role = role
        self._connections.add(connection)
        return connection, None

    def _leave(self, connection: Connection, channel: Channel | None) -> None:
        self._connections.discard(connection)
        if channel is None:
            return
        if isinstance(connection, Consumer):
            channel.detach_consumer(connection)
        else:
            channel.producers.discard(connection)
        self._release(channel)

    # -- state --

    def consumers_of(self, name: str) -> tuple[Consumer, ...]:
        """Channel ``name``'s consumers on this relay (none if it is not live)."""
        channel = self._channels.get(name)
        return channel.consumers if channel is not None else ()

    def channel_statistics(self, name: str) -> ChannelStatistics | None:
        channel = self._channels.get(name)
        return None if channel is None else channel.statistics()

    def each_channel_statistics(self) -> Iterator[ChannelStatistics]:
        """Every live channel's statistics, in no particular order (one pass, no sorting)."""
        for channel in list(self._channels.values()):
            yield channel.statistics()

    def statistics(self, *, after: str = "", limit: int | None = None) -> list[ChannelStatistics]:
        """The channels named after ``after``, in name order, at most ``limit`` of them.

        A page costs a scan of the names, not a snapshot of every channel: listing 100,000
        channels a page at a time keeps each request short on the event loop.
        """
        names = (name for name in self._channels if name > after)
        page = sorted(names) if limit is None else heapq.nsmallest(limit, names)
        return [self._channels[name].statistics() for name in page]

    def traffic(self, limit: int) -> Traffic:
        """The ``limit`` channels that moved the most messages (in and out, since each
        appeared), busiest first, and the totals of every channel: a pass over the channels,
        with statistics made for those ``limit`` alone."""
        channels = list(self._channels.values())
        messages_in = messages_out = 0
        for channel in channels:
            messages_in += channel.counters.messages_in
            messages_out += channel.counters.messages_out
        busiest = heapq.nlargest(limit, channels, key=_messages_moved)
        return Traffic([c.statistics() for c in busiest], len(channels), messages_in, messages_out)

    def connection_statistics(
        self, name: str, *, after: int = 0, limit: int | None = None
    ) -> list[ConnectionStatistics]:
        """Channel ``name``'s producers and consumers with an id above ``after``, in id
        order, at most ``limit`` of them (a page costs a scan of the members, no more)."""
        channel = self._channels.get(name)
        if channel is None:
            return []
        members = (m for m in (*channel.producers, *channel.consumers) if m.id > after)
        key = attrgetter("id")
        page = sorted(members, key=key) if limit is None else heapq.nsmallest(limit, members, key)
        return [member.statistics() for member in page]

    def close(self, code: CloseCode = CloseCode.GOING_AWAY, reason: str = "") -> None:
        """Refuse new connections and ask every connection to close with ``code``.

        Idempotent. Does not wait: each connection's route closes its socket.
        """
        self.closing = True
        for connection in list(self._connections):
            connection.close(code, reason)
        for channel in self._channels.values():
            channel.close()


def _messages_moved(channel: Channel) -> int:
    return channel.counters.messages_in + channel.counters.messages_out
