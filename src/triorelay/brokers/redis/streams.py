"""Broadcast channels on Redis: one stream per channel, read by one reader task per relay.

Each channel is a stream, ``{prefix}ch:{name}``. Publishing runs one Lua script that takes the
channel's next sequence numbers (``{prefix}seq:{name}``, ``INCRBY``), appends the messages with
them (``XADD ... MAXLEN ~ redis_stream_max_messages``) and renews both keys' expiry: one round
trip for all the messages a producer sent in one TCP read. The reader reads every stream with
local consumers (every *watched* channel) in one blocking ``XREAD`` and hands the messages to
``deliver`` (the hub), which applies the channel's slow-consumer policy as for a local publish.

Each message carries its channel sequence number, so a relay that missed some (it fell further
behind than the stream keeps, or Redis restarted and lost them) sees the jump and reports it: a
:class:`~triorelay.brokers.base.Gap` through ``deliver``. A reconnection resumes from the last
message read, so a network blip loses nothing.

Joining a channel: the hub calls :meth:`RedisStreams.watch` for a channel's first local
consumer; the route then awaits :meth:`RedisStreams.wait_watching`, which reads the stream's
last entry so that reading starts right after it, and wakes the reader (an ``XADD`` to this
relay's wake stream, which the blocking ``XREAD`` also reads).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from triorelay.brokers.base import Deliver, Gap
from triorelay.brokers.redis.connection import REDIS_ERRORS, RedisConnection
from triorelay.envelopes import Payload
from triorelay.errors import BrokerUnavailable

if TYPE_CHECKING:
    from triorelay.settings import Settings

log = logging.getLogger(__name__)

_PUBLISH = """
local n = tonumber(ARGV[3])
local first = redis.call('INCRBY', KEYS[2], n) - n + 1
for i = 0, n - 1 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
             'p', ARGV[4 + 2 * i], 't', ARGV[5 + 2 * i], 's', first + i)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return first
"""
_WAKE = """
redis.call('XADD', KEYS[1], 'MAXLEN', '1', '*', 'w', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
"""

#: How long one blocking XREAD waits before it is issued again (it also wakes on a wake-up).
_BLOCK_MILLISECONDS = 10_000


class _Watch:
    """One watched channel: where its stream is read from, the last sequence seen, and the
    batches read but not yet delivered (at most ``MAX_PENDING_BATCHES``)."""

    __slots__ = (
        "draining",
        "excluded",
        "last_seq",
        "pending",
        "position",
        "positioned",
        "positioning",
    )

    def __init__(self) -> None:
        self.position: bytes | None = None
        self.last_seq: int | None = None
        self.positioned = trio.Event()
        self.positioning = False
        #: Entries read, not yet delivered, in stream order.
        self.pending: deque[Any] = deque()
        #: A task is delivering ``pending``.
        self.draining = False
        #: Left out of the read in flight (``pending`` was full): wake the reader once not.
        self.excluded = False


#: Read batches' worth of entries a channel may hold undelivered while its deliveries wait
#: (a ``block`` consumer): past it the channel is not read again until there is room, so a
#: channel holds at most one more batch than this (the read in flight), and a fast channel is
#: always read again at once.
MAX_PENDING_BATCHES = 2


class RedisStreams:
    """The broadcast side of :class:`~triorelay.brokers.redis.RedisBroker`: publishing to
    channel streams, and reading the watched ones into ``deliver``."""

    def __init__(self, connection: RedisConnection, settings: Settings, deliver: Deliver) -> None:
        self._connection = connection
        self._deliver_to = deliver
        self._max_len = str(settings.redis_stream_max_messages)
        self._batch = settings.redis_read_batch_messages
        self._publish_script = connection.client.register_script(_PUBLISH)
        self._wake_script = connection.client.register_script(_WAKE)
        self._wake_key = connection.key("wake", connection.node).encode()
        self._wake_id = b"0-0"
        self._watches: dict[str, _Watch] = {}
        # Where each channel's deliveries run (see run_deliveries); None until it runs.
        self._deliveries: trio.Nursery | None = None
        self.gaps = 0
        #: Stream entries skipped because no relay wrote them (missing or bad fields).
        self.malformed = 0

    async def publish(self, name: str, encoded: list[tuple[bytes, bytes]]) -> int:
        """Append the messages to the channel's stream in one script call (one round trip);
        return the first one's sequence number (the others follow it).

        Raises :class:`BrokerUnavailable` if Redis fails or does not confirm in time.
        """
        connection = self._connection
        args: list[str | bytes] = [self._max_len, connection.ttl_ms, str(len(encoded))]
        for data, text in encoded:
            args += [data, text]
        # Shielded (and bounded by broker_timeout_seconds): a publish given up (an HTTP
        # publish's timeout, a producer closing) is given up before or after its round trip,
        # never inside it, so "not published" is never a guess.
        with trio.CancelScope(shield=True), connection.failing_as_unavailable("publish"):
            first: Any = await self._publish_script(
                keys=[connection.key("ch", name), connection.key("seq", name)], args=args
            )
        return int(first)

    # -- joining and leaving channels --

    def watch(self, name: str) -> None:
        self._watches.setdefault(name, _Watch())

    def unwatch(self, name: str) -> None:
        self._watches.pop(name, None)

    @property
    def watched(self) -> int:
        """How many channels are watched."""
        return len(self._watches)

    async def wait_watching(self, name: str) -> None:
        """Start reading channel ``name`` after its current last message; wake the reader."""
        connection = self._connection
        watch = self._watches.get(name)
        if watch is None or watch.positioned.is_set():
            return
        if not connection.ready:
            connection.want_ready()
            raise BrokerUnavailable("the broker is unavailable: try again later")
        if watch.positioning:  # another consumer of this channel is doing it
            with trio.move_on_after(connection.timeout_seconds):
                await watch.positioned.wait()
            if watch.positioned.is_set():
                return
            raise BrokerUnavailable("the broker did not answer in time: try again later")
        watch.positioning = True
        try:
            with connection.deadline():
                entries = await connection.client.xrevrange(connection.key("ch", name), count=1)
                if entries:
                    watch.position = _as_bytes(entries[0].identifier)
                    watch.last_seq = int(entries[0].field_values[b"s"])
                else:
                    watch.position = b"0-0"
                watch.positioned.set()
                await self._wake_script(keys=[self._wake_key], args=[connection.ttl_ms])
        except REDIS_ERRORS as error:
            connection.note_error(f"subscribe: {error}")
            if not watch.positioned.is_set():
                raise BrokerUnavailable("the broker is unavailable: try again later") from None
        finally:
            watch.positioning = False

    # -- the reader --

    async def run_deliveries(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the tasks that deliver each channel's batches, for the broker's lifetime.

        Apart from the reader, so that one channel whose delivery waits (a ``block``
        consumer) holds up neither the reader nor any other channel, and so that a Redis
        error (which ends the reader until it reconnects) never cuts a delivery in half.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._deliveries = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._deliveries = None

    async def read_forever(self, restarted: bool) -> None:
        """Read every watched stream into ``deliver`` until a Redis error (or cancellation).

        Each channel's batches are delivered in order by a task of their own
        (:meth:`run_deliveries`); a channel with ``MAX_PENDING_BATCHES`` undelivered is left
        out of the reads until one is delivered. ``restarted``: Redis restarted since the
        last connection: every watched channel may have a gap, reported first. For
        :meth:`RedisConnection.keep_connected`.
        """
        if restarted:
            await self._restarted()
        while True:
            streams: dict[bytes, bytes] = {self._wake_key: self._wake_id}
            reading: dict[bytes, tuple[str, _Watch]] = {}
            for name, watch in self._watches.items():
                if watch.position is not None:
                    if len(watch.pending) >= MAX_PENDING_BATCHES * self._batch:
                        watch.excluded = True
                        continue
                    key = self._connection.key("ch", name).encode()
                    streams[key] = watch.position
                    reading[key] = (name, watch)
            # Bounded: a Redis that vanished without closing the connection (a network
            # partition) would otherwise leave this read waiting for ever.
            with self._connection.deadline(_BLOCK_MILLISECONDS / 1000):
                result = await self._connection.client.xread(
                    streams, count=self._batch, block=_BLOCK_MILLISECONDS
                )
            for key, entries in (result or {}).items():
                if key == self._wake_key:
                    self._wake_id = _as_bytes(entries[-1].identifier)
                elif key in reading:
                    name, watch = reading[key]
                    watch.position = _as_bytes(entries[-1].identifier)
                    if self._deliveries is None:  # pragma: no cover - run() starts them first
                        await self._deliver(name, watch, entries)
                        continue
                    watch.pending.extend(entries)
            # A channel with batches pending and no delivery task (its task ended with the
            # broker's, or failed) gets one: nothing read is left undelivered.
            deliveries = self._deliveries
            for name, watch in self._watches.items():
                if watch.pending and not watch.draining and deliveries is not None:
                    watch.draining = True
                    deliveries.start_soon(self._drain, name, watch)

    async def _drain(self, name: str, watch: _Watch) -> None:
        """Deliver ``watch``'s pending batches in order, an entry at a time; wake the reader
        if it left the channel out of its read meanwhile.

        An unexpected failure drops what was pending for that channel, reported as a gap:
        the other channels' deliveries, and the reader, go on.
        """
        pending = watch.pending
        try:
            while pending and self._watches.get(name) is watch:
                # Taken off first: an entry is never delivered twice, even if a delivery is
                # cut (the broker stopping).
                await self._deliver(name, watch, (pending.popleft(),))
                if watch.excluded and len(pending) < MAX_PENDING_BATCHES * self._batch:
                    watch.excluded = False
                    await self._wake()
        except Exception:
            log.exception("channel %s: a delivery failed; what was pending is dropped", name)
            watch.pending.clear()
            await self._gap(name, None, "a delivery failed on this relay")
        finally:
            watch.draining = False

    async def _wake(self) -> None:
        """Make the reader's blocking read return, so that it reads a channel again."""
        connection = self._connection
        try:
            with connection.deadline():
                await self._wake_script(keys=[self._wake_key], args=[connection.ttl_ms])
        except REDIS_ERRORS as error:  # the read returns within 10 s anyway
            connection.note_error(f"wake: {error}")

    async def _deliver(self, name: str, watch: _Watch, entries: tuple[Any, ...]) -> None:
        """Deliver what was read for ``watch``, unless its channel was left (and perhaps joined
        again: a new watch starts after what was published before it)."""
        for entry in entries:
            if self._watches.get(name) is not watch:
                return
            try:
                seq, payload = _decoded(entry.field_values)
            except (KeyError, ValueError, TypeError):
                # Not written by a relay (or by another version): skip it, say so, go on.
                self.malformed += 1
                log.warning("channel %s: skipped a malformed stream entry", name)
                continue
            await self._check_sequence(name, watch, seq)
            await self._deliver_to(name, payload)

    async def _check_sequence(self, name: str, watch: _Watch, seq: int) -> None:
        last, watch.last_seq = watch.last_seq, seq
        if last is None or seq == last + 1:
            return
        if seq > last + 1:
            await self._gap(name, seq - last - 1, "messages trimmed before this relay read them")
            return
        # The sequence started again: the keys expired (no publish for the stream's time to
        # live: nothing was missed), or Redis restarted (what it held is lost). This runs in a
        # channel's delivery task, not the reader: a failure to ask is a gap of unknown size,
        # never an error that would end the deliveries.
        try:
            restarted = await self._connection.check_restarted()
        except REDIS_ERRORS as error:
            self._connection.note_error(f"restart check: {error}")
            await self._gap(name, None, "the broker could not say whether it restarted")
        else:
            if restarted:
                await self._restarted()
        watch.last_seq = seq

    async def _restarted(self) -> None:
        """Redis lost what it held: every watched channel may have a gap."""
        for name, watch in list(self._watches.items()):
            watch.last_seq = None  # the sequence starts again
            await self._gap(name, None, "the broker restarted: messages may have been lost")

    async def _gap(self, name: str, count: int | None, reason: str) -> None:
        self.gaps += 1
        log.warning("channel %s: gap of %s messages (%s)", name, count, reason)
        await self._deliver_to(name, Gap(count, reason))


def _as_bytes(value: str | bytes) -> bytes:
    """A stream id as bytes (the client decodes nothing: ``decode_responses=False``)."""
    return value if isinstance(value, bytes) else value.encode()


def _decoded(fields: Any) -> tuple[int, Payload]:
    """An entry's sequence number and message; KeyError / ValueError if it is not a relay's."""
    seq = int(fields[b"s"])
    data = fields[b"p"]
    if not isinstance(data, bytes):
        raise TypeError("the payload is not bytes")
    kind = fields[b"t"]
    if kind == b"1":
        return seq, data.decode()
    if kind == b"0":
        return seq, data
    raise ValueError("unknown payload type")
