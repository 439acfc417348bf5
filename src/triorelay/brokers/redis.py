"""The Redis broker: channels shared by every relay process on one Redis, over Redis Streams.

Each channel is a stream, ``{prefix}ch:{name}``. Publishing runs one Lua script that takes the
channel's next sequence numbers (``{prefix}seq:{name}``, ``INCRBY``), appends the messages with
them (``XADD ... MAXLEN ~ redis_stream_max_messages``) and renews both keys' expiry: one round
trip for all the messages a producer sent in one TCP read. One reader task per relay reads
every stream with local consumers in one blocking ``XREAD`` and hands the messages to
``deliver`` (the hub), which applies the channel's slow-consumer policy as for a local publish.
Why streams rather than pub/sub:

- **Bounded end to end.** The reader asks for at most ``redis_read_batch_messages`` per
  stream and reads again only after delivering them, so nothing accumulates in this process;
  Redis keeps at most ``redis_stream_max_messages`` per channel. (coredis's pub/sub reader
  buffers pushed messages without bound, and Redis would cut a slow subscriber with no trace.)
- **No silent gaps.** Each message carries its channel sequence number, so a relay that missed
  some (it fell further behind than the stream keeps, or Redis restarted and lost them) sees
  the jump and reports it: a :class:`~triorelay.brokers.base.Gap` through ``deliver``
  (statistics, and a ``{"triorelay": "gap"}`` notice to consumers that asked for notices).
  A reconnection resumes from the last message read, so a network blip loses nothing.
  (coredis's pub/sub reconnects and resubscribes silently, losing what was published meanwhile.)
- **Per-producer order.** A producer's messages are appended in the order it sends them, and
  every relay reads a stream in order.

When Redis is unreachable the relay stays up: consumers stay connected; publishes fail at once
with :class:`~triorelay.errors.BrokerUnavailable` (a producer is closed with 1013, HTTP gets
503); new producers and consumers are refused with 503; ``/healthz`` answers 503. The reader
reconnects with a backoff that doubles up to ``broker_reconnect_max_seconds`` and resets after
a successful connection.

Joining a channel: the hub calls :meth:`RedisBroker.watch` for a channel's first local
consumer; the route then awaits :meth:`RedisBroker.wait_watching`, which reads the stream's
last entry so that reading starts right after it, and wakes the reader (an ``XADD`` to this
relay's wake stream, which the blocking ``XREAD`` also reads).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import coredis
import coredis.exceptions
import trio

from triorelay.brokers.base import Deliver, Gap
from triorelay.brokers.redis_queue import RedisQueue, RedisQueues
from triorelay.compat.coredis import open_client
from triorelay.envelopes import Payload
from triorelay.errors import BrokerUnavailable
from triorelay.settings import Mode

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

#: What a lost or refused Redis connection raises (coredis, trio's deadlines, the OS).
REDIS_ERRORS = (coredis.exceptions.RedisError, TimeoutError, trio.TooSlowError, OSError)

#: How long one blocking XREAD waits before it is issued again (it also wakes on a wake-up).
_BLOCK_MILLISECONDS = 10_000


class Backoff:
    """Reconnection delays: ``base``, doubling per failure up to ``cap``; :meth:`reset` after
    a success."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self._next = base

    def next(self) -> float:
        """The delay before the next attempt."""
        delay = min(self._next, self.cap)
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.base


class _Watch:
    """One watched channel: where its stream is read from, and the last sequence seen."""

    __slots__ = ("last_seq", "position", "positioned", "positioning")

    def __init__(self) -> None:
        self.position: bytes | None = None
        self.last_seq: int | None = None
        self.positioned = trio.Event()
        self.positioning = False


class RedisBroker:
    """Channels shared through Redis Streams by every relay process on the same Redis."""

    #: What a lost or refused Redis connection raises.
    errors = REDIS_ERRORS

    def __init__(self, settings: Settings, deliver: Deliver) -> None:
        self._deliver_to = deliver
        self.url = settings.broker
        self.timeout_seconds = settings.broker_timeout_seconds
        self._max_len = str(settings.redis_stream_max_messages)
        self.ttl_ms = str(max(1, round(settings.redis_stream_ttl_seconds * 1000)))
        self._batch = settings.redis_read_batch_messages
        self.prefix = settings.redis_key_prefix
        #: This relay's name in Redis (its wake stream, its queue consumers).
        self.node = uuid.uuid4().hex
        self._backoff = Backoff(0.05, settings.broker_reconnect_max_seconds)
        self.client = open_client(self.url, connect_timeout=self.timeout_seconds)
        #: For the queue consumers' blocking reads, each of which holds a connection while it
        #: waits: apart, so that they can never take the connections publishes need.
        self.blocking_client = open_client(
            self.url, connect_timeout=self.timeout_seconds, max_connections=100_000
        )
        self._publish_script = self.client.register_script(_PUBLISH)
        self._wake_script = self.client.register_script(_WAKE)
        self._wake_key = f"{self.prefix}wake:{self.node}".encode()
        self.queues = RedisQueues(
            self,
            max_messages=settings.queue_buffer_messages,
            claim_idle_seconds=settings.redis_claim_idle_seconds,
        )
        self._wake_id = b"0-0"
        self._watches: dict[str, _Watch] = {}
        self._run_id: str | None = None
        self._ready = False
        self._ready_changed = trio.Event()
        self.reconnects = 0
        self.gaps = 0
        self.last_error: str | None = None

    # -- publishing --

    async def publish(
        self, name: str, mode: Mode, payloads: list[Payload], published: list[int]
    ) -> None:
        """Broadcast: append all of ``payloads`` to the channel's stream in one script call
        (one round trip); queue mode: one at a time (each may wait for room).

        Raises :class:`BrokerUnavailable` at once while Redis is known to be down, or when
        Redis does not confirm within ``broker_timeout_seconds``: then the messages may or may
        not have been stored, and the producer is told they were not acknowledged.
        """
        if not self._ready:
            raise BrokerUnavailable("the broker is unavailable: message not published")
        encoded = [_encoded(payload) for payload in payloads]
        if mode == "queue":
            for data, text in encoded:
                published.append(await self.queues.publish(name, data, text))
            return
        args: list[str | bytes] = [self._max_len, self.ttl_ms, str(len(payloads))]
        for data, text in encoded:
            args += [data, text]
        with self.failing_as_unavailable("publish"):
            first: Any = await self._publish_script(
                keys=[f"{self.prefix}ch:{name}", f"{self.prefix}seq:{name}"], args=args
            )
        published.extend(range(int(first), int(first) + len(payloads)))

    @contextmanager
    def failing_as_unavailable(self, what: str) -> Iterator[None]:
        """Bound the block by ``broker_timeout_seconds``; Redis errors become
        :class:`BrokerUnavailable` (the message says nothing was published)."""
        try:
            with trio.fail_after(self.timeout_seconds):
                yield
        except REDIS_ERRORS as error:
            self.note_error(f"{what}: {error}")
            raise BrokerUnavailable("the broker is unavailable: message not published") from None

    def note_error(self, error: str) -> None:
        """Remember the last Redis error (``/healthz``)."""
        self.last_error = error

    def queue(self, name: str) -> RedisQueue:
        return RedisQueue(self.queues, name)

    # -- joining and leaving channels --

    def watch(self, name: str) -> None:
        self._watches.setdefault(name, _Watch())

    def unwatch(self, name: str) -> None:
        self._watches.pop(name, None)

    def forget(self, name: str) -> None:
        """Nothing to let go: a channel's state here lives exactly as long as its watch."""

    async def wait_watching(self, name: str) -> None:
        """Start reading channel ``name`` after its current last message; wake the reader."""
        watch = self._watches.get(name)
        if watch is None or watch.positioned.is_set():
            return
        if not self._ready:
            raise BrokerUnavailable("the broker is unavailable: try again later")
        if watch.positioning:  # another consumer of this channel is doing it
            with trio.move_on_after(self.timeout_seconds):
                await watch.positioned.wait()
            if watch.positioned.is_set():
                return
            raise BrokerUnavailable("the broker did not answer in time: try again later")
        watch.positioning = True
        try:
            with trio.fail_after(self.timeout_seconds):
                entries = await self.client.xrevrange(f"{self.prefix}ch:{name}", count=1)
                if entries:
                    watch.position = _as_bytes(entries[0].identifier)
                    watch.last_seq = int(entries[0].field_values[b"s"])
                else:
                    watch.position = b"0-0"
                watch.positioned.set()
                await self._wake_script(keys=[self._wake_key], args=[self.ttl_ms])
        except REDIS_ERRORS as error:
            self.note_error(f"subscribe: {error}")
            if not watch.positioned.is_set():
                raise BrokerUnavailable("the broker is unavailable: try again later") from None
        finally:
            watch.positioning = False

    # -- the reader --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then read every watched stream into ``deliver`` until cancelled.

        Started after the first connection attempt, successful or not (bounded by
        ``broker_timeout_seconds``): the relay then serves, ready at once when Redis is up,
        and answering ``/healthz`` with 503 while it is not, as this task keeps reconnecting.
        """
        async with self.client, self.blocking_client, trio.open_nursery() as nursery:
            nursery.start_soon(self.queues.run_releases)
            started = False
            try:
                while True:
                    try:
                        await self._connect()
                        if not started:
                            started = True
                            task_status.started()
                        await self._read_forever()
                    except REDIS_ERRORS as error:
                        self._lost(error)
                    if not started:
                        started = True
                        task_status.started()
                    await trio.sleep(self._backoff.next())
            finally:
                # Not deleting the wake stream: it expires by itself, and a command sent while
                # the client is being torn down leaks one of coredis's connections.
                self._set_ready(False)

    async def _connect(self) -> None:
        await self._check_run_id()
        self._set_ready(True)
        self._backoff.reset()
        log.info("connected to the Redis broker at %s", self._safe_url)

    def _lost(self, error: BaseException) -> None:
        if self._ready:
            log.warning("lost the Redis broker (%s): reconnecting", error)
            self.reconnects += 1
        self._set_ready(False)
        self.note_error(str(error) or type(error).__name__)

    async def _read_forever(self) -> None:
        while True:
            streams: dict[bytes, bytes] = {self._wake_key: self._wake_id}
            reading: dict[bytes, tuple[str, _Watch]] = {}
            for name, watch in self._watches.items():
                if watch.position is not None:
                    key = f"{self.prefix}ch:{name}".encode()
                    streams[key] = watch.position
                    reading[key] = (name, watch)
            # Bounded: a Redis that vanished without closing the connection (a network
            # partition) would otherwise leave this read waiting for ever.
            with trio.fail_after(_BLOCK_MILLISECONDS / 1000 + self.timeout_seconds):
                result = await self.client.xread(
                    streams, count=self._batch, block=_BLOCK_MILLISECONDS
                )
            for key, entries in (result or {}).items():
                if key == self._wake_key:
                    self._wake_id = _as_bytes(entries[-1].identifier)
                elif key in reading:
                    await self._deliver(*reading[key], entries)

    async def _deliver(self, name: str, watch: _Watch, entries: tuple[Any, ...]) -> None:
        """Deliver what was read for ``watch``, unless its channel was left (and perhaps joined
        again: a new watch starts after what was published before it)."""
        for entry in entries:
            if self._watches.get(name) is not watch:
                return
            watch.position = _as_bytes(entry.identifier)
            fields = entry.field_values
            seq = int(fields[b"s"])
            await self._check_sequence(name, watch, seq)
            data: bytes = fields[b"p"]
            payload: Payload = data.decode() if fields[b"t"] == b"1" else data
            await self._deliver_to(name, payload)

    async def _check_sequence(self, name: str, watch: _Watch, seq: int) -> None:
        last, watch.last_seq = watch.last_seq, seq
        if last is None or seq == last + 1:
            return
        if seq > last + 1:
            await self._gap(name, seq - last - 1, "messages trimmed before this relay read them")
            return
        # The sequence started again: the keys expired (no publish for the stream's time to
        # live: nothing was missed), or Redis restarted (what it held is lost).
        await self._check_run_id()
        watch.last_seq = seq

    async def _check_run_id(self) -> None:
        """Ask Redis its ``run_id``: a new one means a restart, and every watched channel may
        have a gap."""
        with trio.fail_after(self.timeout_seconds):
            info = await self.client.info("server")
        run_id = str(info["run_id"])
        restarted = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if restarted:
            for name, watch in list(self._watches.items()):
                watch.last_seq = None  # the sequence starts again
                await self._gap(name, None, "the broker restarted: messages may have been lost")

    async def _gap(self, name: str, count: int | None, reason: str) -> None:
        self.gaps += 1
        log.warning("channel %s: gap of %s messages (%s)", name, count, reason)
        await self._deliver_to(name, Gap(count, reason))

    # -- state --

    @property
    def ready(self) -> bool:
        return self._ready

    def _set_ready(self, ready: bool) -> None:
        if ready != self._ready:
            self._ready = ready
            self._ready_changed.set()
            self._ready_changed = trio.Event()

    async def wait_ready(self, ready: bool = True) -> None:
        """Wait until :attr:`ready` is ``ready`` (connected, or known to be disconnected)."""
        while self._ready != ready:
            await self._ready_changed.wait()

    @property
    def _safe_url(self) -> str:
        """The URL without its password, for logs and statistics."""
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"

    def statistics(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "url": self._safe_url,
            "ready": self._ready,
            "reconnects": self.reconnects,
            "gaps": self.gaps,
            "watched_channels": len(self._watches),
            "last_error": self.last_error,
        }


def _as_bytes(value: str | bytes) -> bytes:
    """A stream id as bytes (the client decodes nothing: ``decode_responses=False``)."""
    return value if isinstance(value, bytes) else value.encode()


def _encoded(payload: Payload) -> tuple[bytes, bytes]:
    """A message as stored: its bytes, and ``b"1"`` for text or ``b"0"`` for binary."""
    return (payload.encode(), b"1") if isinstance(payload, str) else (payload, b"0")
