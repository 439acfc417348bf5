"""The Redis broker: channels shared by every relay process on one Redis, over Redis Streams.

:class:`RedisBroker` puts together four parts, each in its module:

- :mod:`.connection`: the clients, connecting and reconnecting with a backoff, readiness,
  Redis restarts (its ``run_id``), the last error: one :class:`RedisConnection` the other two
  use through its public API;
- :mod:`.streams`: broadcast channels, one stream each, published to by a Lua script and read
  by one blocking ``XREAD`` per relay, with sequence numbers to detect gaps;
- :mod:`.queues`: queue channels, one stream each read by a consumer group, so that each
  message goes to exactly one consumer anywhere (take, acknowledge, give back, claim);
- :mod:`.jobs`: acked queue channels (``ack = "explicit"``), on the queue streams: jobs held
  under a lease this relay renews, given back with their deliveries and history, delayed in
  a sorted set, rescued from relays that died.

Why streams rather than pub/sub:

- **Bounded end to end.** The reader asks for at most ``redis_read_batch_messages`` per
  stream, and reads a channel again only while fewer than two batches of it wait for
  delivery (each channel's deliveries run in a task of their own, so one that waits holds up
  no other): nothing accumulates in this process; Redis keeps at most
  ``redis_stream_max_messages`` per channel. (coredis's pub/sub reader
  buffers pushed messages without bound, and Redis would cut a slow subscriber with no trace.)
- **No silent gaps.** Each message carries its channel sequence number, so a relay that missed
  some sees the jump and reports it: a :class:`~triorelay.brokers.base.Gap` through
  ``deliver`` (statistics, and a ``{"triorelay": "gap"}`` notice to consumers that asked for
  notices). (coredis's pub/sub reconnects and resubscribes silently, losing what was published
  meanwhile.)
- **Per-producer order.** A producer's messages are appended in the order it sends them, and
  every relay reads a stream in order.

When Redis is unreachable the relay stays up: consumers stay connected; publishes fail at once
with :class:`~triorelay.errors.BrokerUnavailable` (a producer is closed with 1013, HTTP gets
503); new producers and consumers are refused with 503; ``/healthz`` answers 503. The reader
reconnects with a backoff that doubles up to ``broker_reconnect_max_seconds`` and resets after
a successful connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from triorelay.brokers.base import Deliver, Recovery
from triorelay.brokers.redis.connection import (
    REDIS_ERRORS,
    Backoff,
    ConnectionLost,
    RedisConnection,
)
from triorelay.brokers.redis.jobs import RedisJobs, RedisJobStore
from triorelay.brokers.redis.queues import RedisQueue, RedisQueues
from triorelay.brokers.redis.streams import RedisStreams
from triorelay.envelopes import Payload
from triorelay.errors import BrokerUnavailable
from triorelay.framing import Position
from triorelay.settings import Mode
from triorelay.tracing import Histogram, Trace

if TYPE_CHECKING:
    from triorelay.settings import Settings

__all__ = ["REDIS_ERRORS", "Backoff", "RedisBroker"]


class RedisBroker:
    """Channels shared through Redis Streams by every relay process on the same Redis."""

    #: A publish goes to Redis; this relay's channel gets it later, from the reader.
    delivers_locally = False

    def __init__(self, settings: Settings, deliver: Deliver) -> None:
        self.connection = RedisConnection(settings)
        self.node = self.connection.node
        self.streams = RedisStreams(self.connection, settings, deliver)
        self.queues = RedisQueues(
            self.connection,
            max_messages_of=lambda name: settings.channel_config(name).queue_buffer_messages,
            claim_idle_seconds=settings.redis_claim_idle_seconds,
            full_timeout_seconds=settings.block_timeout_seconds,
        )
        self.job_store = RedisJobStore(
            self.connection, self.queues, claim_idle_seconds=settings.redis_claim_idle_seconds
        )

    async def publish(
        self,
        name: str,
        mode: Mode,
        payloads: list[Payload],
        published: list[int],
        traces: dict[int, Trace] | None = None,
    ) -> None:
        """Broadcast: append all of ``payloads`` to the channel's stream in one script call
        (one round trip); queue mode: one at a time (each may wait for room).

        While Redis is down this waits for the reconnection, at most
        ``broker_timeout_seconds``: a short outage delays a publish, it does not fail it. A
        publish whose connection breaks under it is sent again once Redis is back, if Redis
        restarted meanwhile (what the first try may have written went with it; the same
        Redis might hold it, so then it is not sent twice). Raises :class:`BrokerUnavailable`
        past that, or when Redis does not confirm within ``broker_timeout_seconds``: then the
        messages may or may not have been stored, and the producer is told they were not
        acknowledged.
        """
        encoded = [_encoded(payload) for payload in payloads]
        if mode == "queue":
            for data, text in encoded:
                seq = await self._once_more_after_a_restart(self.queues.publish, name, data, text)
                published.append(seq)
            return
        first = await self._once_more_after_a_restart(self.streams.publish, name, encoded, traces)
        published.extend(range(first, first + len(payloads)))

    async def _once_more_after_a_restart(
        self, publish: Callable[..., Awaitable[int]], *args: Any
    ) -> int:
        connection = self.connection
        if not await connection.until_ready():
            raise BrokerUnavailable("the broker is unavailable: message not published")
        run_id = connection.run_id
        try:
            return await publish(*args)
        except ConnectionLost:
            if not await connection.until_ready() or connection.run_id == run_id:
                raise
            return await publish(*args)

    async def recover(self, name: str, since: Position | None) -> Recovery:
        if not self.connection.ready:
            self.connection.want_ready()
            raise BrokerUnavailable("the broker is unavailable: try again later")
        return await self.streams.recover(name, since)

    def queue(self, name: str) -> RedisQueue:
        return RedisQueue(self.queues, name)

    def jobs(self, name: str) -> RedisJobs:
        return RedisJobs(self.job_store, name)

    def watch(self, name: str) -> None:
        self.streams.watch(name)

    def unwatch(self, name: str) -> None:
        self.streams.unwatch(name)

    async def wait_watching(self, name: str) -> None:
        await self.streams.wait_watching(name)

    def forget(self, name: str) -> None:
        """Nothing to let go: a channel's state here lives exactly as long as its watch."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then read every watched stream into ``deliver``, give back what leaving
        queue consumers held, and keep acked channels' jobs (their leases, give-backs and
        delays), until cancelled; reconnect whenever Redis fails.

        Started after the first connection attempt, successful or not (bounded by
        ``broker_timeout_seconds``): the relay then serves, ready at once when Redis is up,
        and answering ``/healthz`` with 503 while it is not, as this task keeps reconnecting.
        """
        async with self.connection.open(), trio.open_nursery() as nursery:
            nursery.start_soon(self.queues.run_releases)
            nursery.start_soon(self.job_store.run)
            await nursery.start(self.streams.run_deliveries)
            await self.connection.keep_connected(self.streams.read_forever, task_status=task_status)

    @property
    def ready(self) -> bool:
        return self.connection.ready

    def want_ready(self) -> None:
        """A client was refused because Redis is down: try to reconnect now."""
        self.connection.want_ready()

    async def wait_ready(self, ready: bool = True) -> None:
        """Wait until :attr:`ready` is ``ready`` (connected, or known to be disconnected)."""
        await self.connection.wait_ready(ready)

    @property
    def round_trips(self) -> dict[str, Histogram]:
        """Round-trip times to Redis by operation (``publish``, ``read``), for the metrics."""
        return self.streams.round_trips

    @property
    def gaps(self) -> int:
        """Gaps reported so far, on every channel."""
        return self.streams.gaps

    def statistics(self) -> dict[str, Any]:
        connection = self.connection.statistics()
        return {
            "kind": "redis",
            "url": connection["url"],
            "ready": connection["ready"],
            "reconnects": connection["reconnects"],
            "out_of_memory": connection["out_of_memory"],
            "gaps": self.streams.gaps,
            "malformed_entries": self.streams.malformed,
            "watched_channels": self.streams.watched,
            "blocking_reads": connection["blocking_reads"],
            "blocking_reads_waiting": connection["blocking_reads_waiting"],
            **self.job_store.statistics(),
            "last_error": connection["last_error"],
        }


def _encoded(payload: Payload) -> tuple[bytes, bytes]:
    """A message as stored: its bytes, and ``b"1"`` for text or ``b"0"`` for binary."""
    return (payload.encode(), b"1") if isinstance(payload, str) else (payload, b"0")
