"""Queue-mode channels on Redis: one stream per channel read by a consumer group.

Every relay's consumers of channel ``c`` read ``{prefix}q:{c}`` in the group ``triorelay``, so
each message goes to exactly one consumer anywhere:

- **Publish** (one Lua script): refuse while the stream holds ``queue_buffer_messages`` (with
  an acked channel's delayed jobs, ``{prefix}qdelay:{c}``, see :mod:`.jobs`; the producer
  waits and retries: backpressure, as with the memory broker), else take the next
  sequence number, ``XADD``, create the group if needed, and take the keys' expiry away: a
  queue that holds messages never expires (its producers were acknowledged).
- **Take**: each consumer reads one message at a time (``XREADGROUP ... COUNT 1``, under its own
  consumer name ``{relay}:{consumer id}``) when its socket is ready for it: nothing is buffered
  in the relay.
  A consumer that finds no group (``NOGROUP``: nothing published yet, the keys expired, Redis
  restarted) creates it and the stream (one script, the stream expiring as a publish's
  would); one that finds it made meanwhile (``BUSYGROUP``) carries on. At most
  ``redis_max_blocking_connections`` consumers of a relay block in Redis at once; the others
  wait their turn in the relay.
- **Acknowledge** once the message is handed to the consumer's socket: ``XACK`` and ``XDEL``
  (so the stream's length is the backlog the bound applies to); the queue's keys expire
  ``redis_stream_ttl_seconds`` after it is emptied.
- **Give back**: a consumer that leaves with a message taken but not sent releases it (copied
  to the end of the stream, the original acknowledged), in the background.
- **Claim**: a relay that dies leaves its consumers' messages pending; every relay's consumers
  claim messages idle for ``redis_claim_idle_seconds`` (``XAUTOCLAIM``) before reading new ones.

Delivery is at least once: a message written to a socket just before its relay dies, and not
yet acknowledged, is delivered again after the claim time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from triorelay.brokers.redis.connection import REDIS_ERRORS, RedisConnection
from triorelay.compat.coredis import is_existing_group, is_missing_group
from triorelay.envelopes import Payload
from triorelay.errors import BrokerUnavailable, QueueFull

log = logging.getLogger(__name__)

GROUP = "triorelay"

_PUBLISH = """
if redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then
  return 0
end
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], '*', 'p', ARGV[1], 't', ARGV[2], 's', seq)
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[5], '0')
-- A queue that holds messages never expires (its producers were acknowledged); it gets its
-- time to live back once emptied (_ACKNOWLEDGE).
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
return seq
"""
_CREATE_GROUP = """
local made = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(made) == 'table' and made.err then
  return made
end
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return made
"""
_ACKNOWLEDGE = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
"""
_RELEASE = """
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #entry > 0 then
  redis.call('XADD', KEYS[1], '*', unpack(entry[1][2]))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
"""

#: Most queue names whose next claim time is kept (a bound on per-name state).
MAX_CLAIM_TIMES = 10_000

#: Longest wait for a producer whose queue is full between two tries.
_FULL_RETRY_MAX_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class Receipt:
    """What acknowledges one taken message: its stream and entry id."""

    key: str
    entry: str | bytes
    #: The queue's sequence key, which expires with the queue once it is empty.
    seq_key: str


class RedisQueues:
    """The queue-mode side of :class:`~triorelay.brokers.redis.RedisBroker`: publishing to,
    taking from, acknowledging and giving back to queue channels' streams."""

    def __init__(
        self,
        connection: RedisConnection,
        *,
        max_messages_of: Callable[[str], int],
        claim_idle_seconds: float,
        full_timeout_seconds: float = float("inf"),
    ) -> None:
        self._full_timeout = full_timeout_seconds
        self._connection = connection
        client = connection.client
        self._publish_script = client.register_script(_PUBLISH)
        self._create_group_script = client.register_script(_CREATE_GROUP)
        self._acknowledge_script = client.register_script(_ACKNOWLEDGE)
        self._release_script = client.register_script(_RELEASE)
        #: A queue channel's bound (``queue_buffer_messages``, by its rule).
        self._max_messages_of = max_messages_of
        self._claim_idle_ms = max(1, round(claim_idle_seconds * 1000))
        # A blocked read returns this often, so that idle messages are claimed in time.
        self._block_ms = max(1, min(5_000, self._claim_idle_ms // 2))
        self._next_claim: dict[str, float] = {}
        self._to_release: list[tuple[str, str]] = []
        self._release_wanted = trio.Event()

    def key(self, name: str) -> str:
        return self._connection.key("q", name)

    def consumer_name(self, consumer_id: int) -> str:
        return f"{self._connection.node}:{consumer_id}"

    async def publish(self, name: str, data: bytes, text: bytes) -> int:
        """Append a message; wait while the queue is full, at most ``full_timeout_seconds``
        (then :class:`~triorelay.errors.QueueFull`). Return its sequence number."""
        connection = self._connection
        keys = [self.key(name), connection.key("qseq", name), connection.key("qdelay", name)]
        bound = str(self._max_messages_of(name))
        args: list[str | bytes] = [data, text, bound, connection.ttl_ms, GROUP]
        delay = 0.005
        give_up = trio.current_time() + self._full_timeout
        while True:
            # Shielded, bounded: given up between attempts, never inside one (see streams).
            with trio.CancelScope(shield=True), connection.failing_as_unavailable("publish"):
                seq: Any = await self._publish_script(keys=keys, args=args)
            if int(seq):
                return int(seq)
            if trio.current_time() >= give_up:
                raise QueueFull(
                    f"the queue stayed full for {self._full_timeout:g} s: message not queued"
                )
            await trio.sleep(delay)  # full: backpressure until consumers make room
            delay = min(delay * 2, _FULL_RETRY_MAX_SECONDS)

    async def take(self, name: str, consumer_id: int) -> tuple[Payload, object]:
        """The next message for this consumer, claimed from a dead relay or new."""
        entry = await self.take_entry(name, consumer_id, self._claim)
        fields = entry.field_values
        data: bytes = fields[b"p"]
        payload: Payload = data.decode() if fields[b"t"] == b"1" else data
        seq_key = self._connection.key("qseq", name)
        return payload, Receipt(self.key(name), entry.identifier, seq_key)

    async def take_entry(
        self, name: str, consumer_id: int, first: Callable[[str, str, str], Awaitable[Any]]
    ) -> Any:
        """The next stream entry for this consumer: ``await first(name, key, consumer)`` if it
        returns one, else a new one (``XREADGROUP``), waiting for it. Redis being down, the
        group missing (made here) and blocking reads past their bound are waited out."""
        connection = self._connection
        key, consumer = self.key(name), self.consumer_name(consumer_id)
        while True:
            await connection.wait_ready()
            try:
                entry = await first(name, key, consumer)
                if entry is None:
                    entry = await self._read_new(key, consumer)
            except REDIS_ERRORS as error:
                if is_missing_group(error):  # nothing published yet, expired, Redis restarted
                    with contextlib.suppress(BrokerUnavailable):
                        await self._create_group(key)
                        continue
                connection.note_error(f"queue read: {error}")
                await trio.sleep(0.05)  # the reader notices an outage; then wait_ready waits
                continue
            if entry is not None:
                return entry

    def claim_due(self, name: str) -> bool:
        """True at most once per block time per queue: time to look for a dead relay's
        messages (a rate, so that waiting consumers do not scan the pending list each read)."""
        now = trio.current_time()
        if now < self._next_claim.get(name, 0.0):
            return False
        if len(self._next_claim) >= MAX_CLAIM_TIMES:
            self._next_claim.clear()  # only a rate of XAUTOCLAIM: forgetting claims sooner
        self._next_claim[name] = now + self._block_ms / 1000
        return True

    async def _claim(self, name: str, key: str, consumer: str) -> Any:
        if not self.claim_due(name):
            return None
        with self._connection.deadline():
            result = await self._connection.client.xautoclaim(
                key, GROUP, consumer, min_idle_time=self._claim_idle_ms, start="0-0", count=1
            )
        claimed = [entry for entry in result[1] if entry is not None and entry.field_values]
        return claimed[0] if claimed else None

    async def _read_new(self, key: str, consumer: str) -> Any:
        """Wait up to the block time for a message nobody has taken yet."""
        connection = self._connection
        async with connection.blocking() as client:
            with connection.deadline(self._block_ms / 1000):
                result = await client.xreadgroup(
                    GROUP, consumer, {key: ">"}, count=1, block=self._block_ms
                )
        entries = next(iter((result or {}).values()), ())
        return entries[0] if entries else None

    async def _create_group(self, key: str) -> None:
        """Create the consumer group, and the stream if need be, expiring as a publish's would
        (one script: a stream made here never outlives the keys' time to live)."""
        connection = self._connection
        with connection.failing_as_unavailable("queue group"):
            try:
                await self._create_group_script(keys=[key], args=[GROUP, connection.ttl_ms])
            except REDIS_ERRORS as error:
                if not is_existing_group(error):  # another consumer made it first
                    raise

    async def acknowledge(self, receipt: object) -> None:
        """Delete a delivered message. If Redis is unreachable it is delivered again later."""
        assert isinstance(receipt, Receipt)
        try:
            with self._connection.deadline():
                await self._acknowledge_script(
                    keys=[receipt.key, receipt.seq_key],
                    args=[GROUP, receipt.entry, self._connection.ttl_ms],
                )
        except REDIS_ERRORS as error:
            self._connection.note_error(f"acknowledge: {error}")
            log.warning("could not acknowledge a queue message (%s): it will be redelivered", error)

    def release(self, name: str, consumer_id: int) -> None:
        """Give back what consumer ``consumer_id`` took and did not acknowledge (background)."""
        self._to_release.append((name, self.consumer_name(consumer_id)))
        self._release_wanted.set()

    async def run_releases(self) -> None:
        """Process :meth:`release` requests until cancelled (retried while Redis is down)."""
        while True:
            await self._release_wanted.wait()
            self._release_wanted = trio.Event()
            while self._to_release:
                name, consumer = self._to_release[0]
                await self._connection.wait_ready()
                try:
                    with self._connection.deadline():
                        await self.give_back_pending(self.key(name), consumer)
                except REDIS_ERRORS as error:
                    self._connection.note_error(f"release: {error}")
                    await trio.sleep(0.05)
                    continue
                self._to_release.pop(0)

    async def give_back_pending(self, key: str, consumer: str) -> None:
        """Copy every message pending for ``consumer`` to the end of stream ``key`` (the
        original acknowledged and deleted), then forget the consumer. Each copy is one script,
        so a retry after a failure gives nothing back twice."""
        client = self._connection.client
        while True:
            try:
                pending: Any = await client.xpending(key, GROUP, "-", "+", 100, consumer=consumer)
            except REDIS_ERRORS as error:
                if is_missing_group(error):
                    return  # the stream is gone, and what it held with it
                raise
            if not pending:
                break
            # Until none is left: deleting the consumer drops what it still has pending, and
            # such an entry would never be read again.
            for entry in pending:
                await self._release_script(keys=[key], args=[GROUP, entry.identifier])
        await client.xgroup_delconsumer(key, GROUP, consumer)


class RedisQueue:
    """One queue channel's :class:`~triorelay.brokers.base.QueueSource` on Redis."""

    __slots__ = ("name", "queues")

    def __init__(self, queues: RedisQueues, name: str) -> None:
        self.queues = queues
        self.name = name

    async def take(self, consumer_id: int) -> tuple[Payload, object]:
        return await self.queues.take(self.name, consumer_id)

    async def acknowledge(self, receipt: object) -> None:
        await self.queues.acknowledge(receipt)

    def release(self, consumer_id: int) -> None:
        self.queues.release(self.name, consumer_id)
