"""Broadcast channels on Redis: one stream per channel, read by one reader task per relay.

Each channel is a stream, ``{prefix}ch:{name}``, and a position hash, ``{prefix}meta:{name}``
(its epoch, last offset, expiry mark, last publish time and the run id of the Redis that
numbered it). Publishing runs one Lua script that takes the channel's next offsets,
appends the messages under the ids ``epoch-offset`` (``XADD ... MAXLEN ~
redis_stream_max_messages``) and renews both keys' expiry (at most once a second,
``EXPIRY_RENEWAL_MS``): one round trip for all the messages a producer sent in one TCP
read. A channel without a position, or with one numbered by a Redis since restarted (a
restored copy may be older: its offsets would be reused), starts a new epoch. The script
ends with a ``PUBLISH`` on the channel's pub/sub channel, ``{prefix}n:{name}``, of a
notification that carries the messages and their position (see ``_notified_entries``). The
publish scripts of every producer of this relay share one connection
(:class:`~triorelay.brokers.redis.lean.Pipeline`): those queued while a round trip is under
way go together in the next one.

The reader subscribes to the notifications of every stream with local consumers (every
*watched* channel). A notification whose messages follow what the reader has of its channel
is delivered as it is, with no read of the stream; otherwise (a notification missed or cut, a
new epoch, a channel whose deliveries are behind) the reader reads that stream (one
non-blocking ``XREAD`` of the streams to read, each from where it was left). So a channel
nobody publishes to costs nothing per message. Notifications are not stored: whatever may
have been published while the reader was not subscribed (at each (re)connection) is caught
up by one ``XREAD`` of every watched stream. It hands the messages to ``deliver`` (the hub),
which applies the channel's slow-consumer policy as for a local publish.

Each message's id is its position, so a relay that missed some (it fell further behind than
the stream keeps) sees the jump in offsets, and one whose channel began a new epoch sees that:
either is reported as a :class:`~triorelay.brokers.base.Gap` through ``deliver``. A
reconnection resumes from the last message read, so a network blip loses nothing.

Joining a channel: the hub calls :meth:`RedisStreams.watch` for a channel's first local
consumer; the route then awaits :meth:`RedisStreams.wait_watching`, which subscribes to the
channel's notifications, then reads the stream's last entry so that reading starts right after
it (anything published later is notified), and has the reader read it once.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

import trio

import triorelay.brokers.redis.lean as lean
from triorelay.brokers.base import Deliver, Gap, Recovery
from triorelay.brokers.history import history_expired, reason_after_reading, recovery_reason
from triorelay.brokers.redis.connection import REDIS_ERRORS, RedisConnection
from triorelay.envelopes import Payload, size_of
from triorelay.errors import BrokerUnavailable
from triorelay.framing import Position
from triorelay.tracing import Histogram, Trace

if TYPE_CHECKING:
    from triorelay.settings import Settings

log = logging.getLogger(__name__)

#: A publish renews its channel's keys' expiry to their time to live plus this (ms), and only
#: once the stream has less than its time to live left: two ``PEXPIRE`` calls at most once
#: a second (by Redis's clock), not per publish, and a key still lives its whole time to
#: live after the last publish.
EXPIRY_RENEWAL_MS = 1000

# A channel's position lives in a hash, ``{prefix}meta:{name}``: its epoch ``e`` and the run
# id of the Redis that numbered it ``r``, its last offset ``o``, the offset through which its
# stream expired ``x``, and its last publish time ``t`` (milliseconds, by the publishing
# relay's clock). Stream ids are ``epoch-offset``, so that a consumer's position is a stream
# id (a resume is one XRANGE), and a new epoch sorts after the old one (the reader's XREAD,
# still at the old history's last id, reads the new history from its first message).
_NEW_EPOCH = """
-- The channel's epoch, or false when it has none, or when it is from before a restart of
-- Redis (a restored snapshot may hold an older copy of it: its offsets would be reused).
-- Redis's run id decides (rid): the publish script is given the run id of the Redis its
-- connection reached, learnt when it connected (a connection never outlives its Redis), and
-- the position script, on a client that reconnects by itself, asks INFO each time.
local function current_epoch(rid)
  local m = redis.call('HMGET', KEYS[2], 'e', 'r')
  if m[1] and m[2] == rid then return m[1] end
  return false
end
local function new_epoch(now, rid)
  -- Numbered by Redis's clock, not the caller's: relays' clocks differ, and a new epoch must
  -- sort after the one it replaces (a reader still at the old history's last id reads on
  -- from there), whichever relay makes it. Before any write (Redis 6: writes after TIME
  -- need effects replication; the callers have written nothing yet).
  redis.replicate_commands()
  local t = redis.call('TIME')
  local epoch = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  if top then  -- the stream outlived its position: it belongs to a lost history
    local old = tonumber(string.match(top[1], '^(%d+)'))
    if old >= epoch then epoch = old + 1 end
  end
  epoch = string.format('%d', epoch)
  -- HSET first: Redis 6 checks maxmemory at a script's first write only, and a DEL first
  -- (which frees memory) would let every later write through.
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', 0, 'x', 0, 't', now, 'r', rid)
  if top then redis.call('DEL', KEYS[1]) end
  return epoch
end
"""
_PUBLISH = (
    _NEW_EPOCH
    + """
local n = tonumber(ARGV[5])
local now = tonumber(ARGV[4])
local accepted = ''
if ARGV[7] == '1' then  -- traced messages: stamped with the time Redis stores them
  redis.replicate_commands()  -- Redis 6: writes after TIME need effects replication
  local t = redis.call('TIME')
  accepted = t[1] .. string.format('%06d', tonumber(t[2]))
end
-- The position in one read: its epoch and the run id that numbered it, the last publish's
-- time and the last offset.
local m = redis.call('HMGET', KEYS[2], 'e', 'r', 't', 'o')
local epoch, last = m[1], tonumber(m[4]) or 0
-- The keys' expiry is renewed to their time to live plus RENEW_MS once the stream has less
-- than its time to live left, by Redis's clock (not the relays', which may differ): at most
-- once every RENEW_MS, and neither key goes before its time to live after a publish. A
-- stream made again, or one without an expiry, is renewed at once.
local renew = true
if not (epoch and m[2] == ARGV[8]) then
  epoch = new_epoch(ARGV[4], ARGV[8])
  last = 0
else
  redis.replicate_commands()  -- Redis 6: writes after PTTL (time-dependent) need it
  local left = redis.call('PTTL', KEYS[1])  -- -2: no stream; -1: no expiry
  if left == -2 or now - tonumber(m[3] or ARGV[4]) > tonumber(ARGV[6]) then
    -- the history expired (the stream with it, or not yet): what it held is let go
    redis.call('HSET', KEYS[2], 'x', m[4])
    redis.call('DEL', KEYS[1])
  else
    renew = left < tonumber(ARGV[2])
  end
end
local first = last + 1
for i = 0, n - 1 do
  local id = epoch .. '-' .. string.format('%d', first + i)
  local trace = ARGV[12 + 3 * i]
  if trace == '' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id,
               'p', ARGV[10 + 3 * i], 't', ARGV[11 + 3 * i])
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id,
               'p', ARGV[10 + 3 * i], 't', ARGV[11 + 3 * i], 'r', trace, 'a', accepted)
  end
end
redis.call('HSET', KEYS[2], 'o', string.format('%d', last + n), 't', ARGV[4])
if renew then
  redis.call('PEXPIRE', KEYS[1], string.format('%d', tonumber(ARGV[2]) + RENEW_MS))
  redis.call('PEXPIRE', KEYS[2], string.format('%d', tonumber(ARGV[3]) + RENEW_MS))
end
-- Last, once the messages are readable: the relays watching the channel get them at once
-- (see _notified_entries for the format); any relay that missed some reads the stream.
local note = {epoch, ' ', string.format('%d', first), ' ', accepted, ' ', ARGV[5], '\\n'}
for i = 0, n - 1 do
  local p, r = ARGV[10 + 3 * i], ARGV[12 + 3 * i]
  note[#note + 1] = string.format('%d %d %s\\n', #p, #r, ARGV[11 + 3 * i])
  note[#note + 1] = p
  note[#note + 1] = r
end
redis.call('PUBLISH', ARGV[9], table.concat(note))
return {epoch, first, accepted}
""".replace("RENEW_MS", str(EXPIRY_RENEWAL_MS))
)
_POSITION = (
    _NEW_EPOCH
    + """
redis.replicate_commands()  -- Redis 6: writes after INFO need effects replication
local rid = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
if not current_epoch(rid) then
  -- Made for a subscriber: kept only as long as a history would be, so that subscribing to
  -- names nobody publishes to leaves little behind.
  new_epoch(ARGV[1], rid)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return redis.call('HMGET', KEYS[2], 'e', 'o', 'x', 't')
"""
)
_PUBLISH_SHA = hashlib.sha1(_PUBLISH.encode()).hexdigest()

#: Most streams one XREAD names (a full read of more is made of several).
_STREAMS_PER_READ = 1000

#: Channels whose publish arguments :meth:`RedisStreams._publish_args` keeps at most.
_PUBLISH_ARGS_KEPT = 4096

#: How long the reader waits for a notification before it checks its subscription's
#: connection with a PING (which must come back within ``broker_timeout_seconds``).
_BLOCK_MILLISECONDS = 10_000


class _Entry(NamedTuple):
    """One stream entry as the reader reads it: its id and its fields."""

    identifier: bytes
    field_values: dict[bytes, bytes]


class _Watch:
    """One watched channel: where its stream is read from, the last sequence seen, and the
    batches read but not yet delivered (at most ``MAX_PENDING_BATCHES``)."""

    __slots__ = (
        "draining",
        "epoch",
        "epoch_text",
        "excluded",
        "inline",
        "last_seq",
        "pending",
        "position",
        "positioned",
        "positioning",
        "read_at",
    )

    def __init__(self, inline: bool) -> None:
        #: The id of the last entry read (None: not positioned yet), and it as numbers.
        self.position: bytes | None = None
        self.read_at = (0, 0)
        #: Its deliveries never wait (no ``block`` policy): the reader makes them itself
        #: while nothing of the channel is pending.
        self.inline = inline
        #: The epoch and offset of the last entry delivered (or the last one at positioning).
        self.epoch: bytes | None = None
        self.epoch_text = ""
        self.last_seq: int | None = None
        self.positioned = trio.Event()
        self.positioning = False
        #: Entries read, not yet delivered, in stream order.
        self.pending: deque[Any] = deque()
        #: A task is delivering ``pending``.
        self.draining = False
        #: Left out of a read (``pending`` was full): to be read again once it is not.
        self.excluded = False


#: Queued among a channel's pending entries when Redis restarted (see ``_restarted``).
_RESTARTED = object()

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
        self._settings = settings
        self._deliver_to = deliver
        self._max_len = str(settings.redis_stream_max_messages)
        self._meta_ttl_ms = str(max(1, round(settings.history_meta_ttl_seconds * 1000)))
        self._batch = settings.redis_read_batch_messages
        self._position_script = connection.client.register_script(_POSITION)
        #: The hot commands' connection: every publish script and the reader's XREADs.
        self.pipeline = lean.Pipeline(lean.Address.from_url(connection.url))
        self._watches: dict[str, _Watch] = {}
        self._kept_publish_args: dict[str, tuple[lean.Encoded, bytes, bytes]] = {}
        # The reader's subscription to the watched channels' notifications (None while it
        # is not connected), and the channels to read at its next read.
        self._subscriber: lean.Subscriber | None = None
        self._subscriber_changed = trio.Event()
        self._notify_prefix = connection.key("n", "").encode()
        self._notified: set[str] = set()
        # Where each channel's deliveries run (see run_deliveries); None until it runs.
        self._deliveries: trio.Nursery | None = None
        self.gaps = 0
        #: Stream entries skipped because no relay wrote them (missing or bad fields).
        self.malformed = 0
        #: Round trips to Redis: publishes (the script), and reads of positions and history
        #: (a resume, a channel's first consumer); the blocking reads wait, so are not timed.
        self.round_trips = {"publish": Histogram(), "read": Histogram()}
        #: The reader's XREADs, and the streams they named in all (their ratio: streams per
        #: read); the full reads of every watched stream (one per (re)connection with
        #: channels watched, each in parts of at most ``_STREAMS_PER_READ``).
        self.reads = 0
        self.streams_read = 0
        self.full_reads = 0

    async def publish(
        self,
        name: str,
        encoded: list[tuple[bytes, bytes]],
        traces: dict[int, Trace] | None = None,
    ) -> int:
        """Append the messages to the channel's stream in one script call (one round trip);
        return the first one's offset (the others follow it). ``traces``: the
        traced messages' stage times (by index), carried in their entries and stamped with
        the time Redis stored them.

        Raises :class:`BrokerUnavailable` if Redis fails or does not confirm in time.
        """
        connection = self._connection
        head, history_ttl_ms, notify = self._publish_args(name)
        args: list[str | bytes | object] = [head, _now_ms(), b"%d" % len(encoded)]
        args += [history_ttl_ms, b"1" if traces else b"0", lean.RUN_ID, notify]
        for index, (data, text) in enumerate(encoded):
            trace = traces.get(index) if traces else None
            args += [data, text, trace.encode() if trace is not None else b""]
        # Shielded, and bounded by broker_timeout_seconds (one scope does both): a publish
        # given up (an HTTP publish's timeout, a producer closing) is given up before or
        # after its round trip, never inside it, so "not published" is never a guess.
        started = time.perf_counter()
        timeout = connection.timeout_seconds
        with trio.CancelScope(shield=True, deadline=trio.current_time() + timeout) as scope:
            try:
                try:
                    result: Any = await self.pipeline.call(b"EVALSHA", _PUBLISH_SHA, *args)
                except lean.ResponseError as error:
                    if not str(error).startswith("NOSCRIPT"):
                        raise
                    # A Redis that never ran it (new, restarted, flushed): sent whole, once.
                    result = await self.pipeline.call(b"EVAL", _PUBLISH, *args)
            except REDIS_ERRORS as error:
                raise connection.unavailable("publish", error) from None
        if scope.cancelled_caught:
            raise connection.unavailable("publish", trio.TooSlowError())
        self.round_trips["publish"].observe(time.perf_counter() - started)
        if traces:
            accepted_ns = int(result[2]) * 1000
            for trace in traces.values():
                trace.accepted_ns = accepted_ns
        return int(result[1])

    def _publish_args(self, name: str) -> tuple[lean.Encoded, bytes, bytes]:
        """The publish script's arguments that depend on the channel only (its keys, its
        history's time to live, its notification channel), kept for the channels published
        to lately (at most ``_PUBLISH_ARGS_KEPT``: the settings' rules are not matched per
        publish)."""
        kept = self._kept_publish_args.get(name)
        if kept is not None:
            return kept
        connection = self._connection
        head = lean.encode_arguments(
            [
                2,
                connection.key("ch", name),
                connection.key("meta", name),
                self._max_len,
                connection.ttl_ms,
                self._meta_ttl_ms,
            ]
        )
        history_ttl = self._settings.channel_config(name).history_ttl_seconds
        kept = (head, b"%d" % round(history_ttl * 1000), self._notify_key(name))
        if len(self._kept_publish_args) >= _PUBLISH_ARGS_KEPT:
            self._kept_publish_args.clear()
        self._kept_publish_args[name] = kept
        return kept

    def _read_ttl_ms(self, name: str) -> str:
        """How long a position made for a subscriber (no publish yet) is kept: a history's
        time to live."""
        return str(max(1, round(self._settings.channel_config(name).history_ttl_seconds * 1000)))

    async def recover(self, name: str, since: Position | None) -> Recovery:
        """The channel's position (made, with a new epoch, if it has none) and, for
        ``since``, the messages after it: one script call, then XRANGE pages of
        ``redis_read_batch_messages`` (stopping once past the channel's ``history_bytes``).

        Raises :class:`BrokerUnavailable` if Redis fails or does not answer in time.
        """
        connection, settings = self._connection, self._settings
        keys = [connection.key("ch", name), connection.key("meta", name)]
        now = _now_ms()
        reads = self.round_trips["read"]
        started = time.perf_counter()
        with connection.failing_as_unavailable("recover"):
            meta: Any = await self._position_script(keys=keys, args=[now, self._read_ttl_ms(name)])
        reads.observe(time.perf_counter() - started)
        epoch = _as_bytes(meta[0]).decode()
        top, expired_through, last_publish = (int(value) for value in meta[1:4])
        position = Position(epoch, top)
        if since is None:
            return Recovery(position, recovered=False)
        config = settings.channel_config(name)
        idle_seconds = (int(now) - last_publish) / 1000
        expired = history_expired(
            since, top, expired_through, idle_seconds, config.history_ttl_seconds
        )
        reason = recovery_reason(
            since,
            epoch,
            top,
            config,
            expired=expired,
            recovery_max_messages=settings.recovery_max_messages,
        )
        if reason is None and since.offset < top:
            entries: list[tuple[int, Payload]] = []
            sizes = 0
            start = since.offset + 1
            with connection.failing_as_unavailable("recover"):
                while start <= top and sizes <= config.history_bytes:
                    started = time.perf_counter()
                    page = await connection.client.xrange(
                        keys[0], start=f"{epoch}-{start}", end=f"{epoch}-{top}", count=self._batch
                    )
                    reads.observe(time.perf_counter() - started)
                    if not page:
                        break
                    for entry in page:
                        offset, payload = _decoded(entry.identifier, entry.field_values)[1:]
                        entries.append((offset, payload))
                        sizes += size_of(payload)
                    start = entries[-1][0] + 1
            reason = reason_after_reading(since, top, entries, sizes, config.history_bytes)
            if reason is None:
                return Recovery(position, recovered=True, entries=tuple(entries))
        return Recovery(position, recovered=reason is None, reason=reason)

    # -- joining and leaving channels --

    def watch(self, name: str) -> None:
        if name not in self._watches:
            config = self._settings.channel_config(name)
            # Channel.deliver never waits but for a block policy (or a queue's room).
            inline = config.mode == "broadcast" and config.slow_consumer_policy != "block"
            self._watches[name] = _Watch(inline)
            if self._subscriber is not None:
                self._subscriber.keep(self._notify_key(name))

    def unwatch(self, name: str) -> None:
        if self._watches.pop(name, None) is not None and self._subscriber is not None:
            self._subscriber.unsubscribe_nowait(self._notify_key(name))
            self._read_soon()

    def _notify_key(self, name: str) -> bytes:
        """The pub/sub channel the publish script notifies for channel ``name``."""
        return self._notify_prefix + name.encode()

    def _read_soon(self, name: str | None = None) -> None:
        """Have the reader read channel ``name`` (if given) at once."""
        if name is not None:
            self._notified.add(name)
        if self._subscriber is not None:
            self._subscriber.wake()

    @property
    def watched(self) -> int:
        """How many channels are watched."""
        return len(self._watches)

    async def wait_watching(self, name: str) -> None:
        """Subscribe to channel ``name``'s notifications, then read where its stream ends, so
        that reading starts right after it; have the reader read it once.

        Raises :class:`BrokerUnavailable` if Redis is down or does not answer in time.
        """
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
                # Subscribed first: whatever is published after the position read below is
                # notified.
                while self._subscriber is None:
                    await self._subscriber_changed.wait()
                await self._subscriber.subscribe([self._notify_key(name)])
                started = time.perf_counter()
                entries = await connection.client.xrevrange(connection.key("ch", name), count=1)
                self.round_trips["read"].observe(time.perf_counter() - started)
                if entries:
                    _set_position(watch, _as_bytes(entries[0].identifier))
                    epoch, _, offset = _as_bytes(entries[0].identifier).partition(b"-")
                    watch.epoch, watch.epoch_text = epoch, epoch.decode()
                    watch.last_seq = int(offset)
                else:
                    _set_position(watch, b"0-0")
                watch.positioned.set()
                self._read_soon(name)  # what came between the subscription and the position
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
        """Own the tasks that deliver each channel's batches, and the hot commands'
        :attr:`pipeline`, for the broker's lifetime.

        Apart from the reader, so that one channel whose delivery waits (a ``block``
        consumer) holds up neither the reader nor any other channel, and so that a Redis
        error (which ends the reader until it reconnects) never cuts a delivery in half.
        """
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.pipeline.run)
                self._deliveries = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._deliveries = None

    async def read_forever(self, restarted: bool) -> None:
        """Read the notified watched streams into ``deliver`` until a Redis error (or
        cancellation). For :meth:`RedisConnection.keep_connected`.

        Connects a subscription to every watched channel's notifications, reads every watched
        stream once (what was published before it was not notified to this relay), then
        takes the notifications that follow what it read, and reads, each time it wakes, the
        streams it has to (a notification missed, a whole batch read: there may be more).
        Each channel's messages are delivered in order: by the reader itself when their
        deliveries never wait, else by a task of their own (:meth:`run_deliveries`); a channel
        with ``MAX_PENDING_BATCHES`` undelivered is left out until one is delivered.
        ``restarted``: Redis restarted since the last connection: every watched channel may
        have a gap, reported first.
        """
        if restarted:
            await self._restarted()
        connection = self._connection
        with connection.deadline():
            stream = await lean.open_stream(self.pipeline.address)
        try:
            subscriber = lean.Subscriber(stream, connection.timeout_seconds)
            keys = [self._notify_key(n) for n in self._watches]
            with connection.deadline():
                await subscriber.subscribe_reading(keys)
            self._set_subscriber(subscriber)
            # A channel left meanwhile (with no subscriber to unsubscribe through) would go
            # on sending its notifications here: unsubscribed at the first wait.
            for key in set(keys).difference(map(self._notify_key, self._watches)):
                subscriber.unsubscribe_nowait(key)
            self._notified.update(self._watches)
            full = True
            while True:
                if self._notified:
                    chosen = self._take_notified()
                    self.full_reads += full and bool(chosen)
                    full = False
                    # In parts: no one reply holds every watched stream's batch.
                    for start in range(0, len(chosen), _STREAMS_PER_READ):
                        await self._read(chosen[start : start + _STREAMS_PER_READ])
                    continue
                messages = await subscriber.wait_messages(_BLOCK_MILLISECONDS / 1000)
                for key, data in messages:
                    await self._notification(key, data)
        finally:
            self._set_subscriber(None)
            await stream.aclose()

    def _set_subscriber(self, subscriber: lean.Subscriber | None) -> None:
        self._subscriber = subscriber
        self._subscriber_changed.set()
        self._subscriber_changed = trio.Event()

    async def _notification(self, key: bytes, data: bytes) -> None:
        """A publish script's notification: its messages are taken as read if they follow
        what was read of their channel; else the channel's stream is read."""
        name = key[len(self._notify_prefix) :].decode()
        watch = self._watches.get(name)
        if watch is None or watch.position is None or name in self._notified:
            return  # not watched, not positioned yet (it is read then), or read next anyway
        try:
            entries = _notified_entries(data)
        except ValueError:
            entries = []
        if not entries:  # not a relay's notification: what it announces is in the stream
            self._notified.add(name)
            return
        last = entries[-1]
        if _id_key(last.identifier) <= watch.read_at:
            return  # read from the stream already
        fresh = [entry for entry in entries if _id_key(entry.identifier) > watch.read_at]
        epoch, seq = _id_key(fresh[0].identifier)
        if (epoch, seq - 1) != watch.read_at:
            # What came before it was not read (a notification missed, or a new epoch, or a
            # reading behind): the stream has it all, in order.
            self._notified.add(name)
            return
        if len(watch.pending) >= MAX_PENDING_BATCHES * self._batch:
            watch.excluded = True  # left in the stream: read once a batch is delivered
            return
        await self._accept(name, watch, fresh)

    async def _accept(self, name: str, watch: _Watch, entries: list[_Entry]) -> None:
        """Entries read for ``watch``, next in its stream: delivered now when its deliveries
        never wait and none is pending, else queued for its delivery task."""
        _set_position(watch, entries[-1].identifier)
        if watch.inline and not watch.pending and not watch.draining:
            await self._deliver_or_report(name, watch, entries)
            return
        watch.pending.extend(entries)
        deliveries = self._deliveries
        if not watch.draining and deliveries is not None:
            watch.draining = True
            deliveries.start_soon(self._drain, name, watch)

    def _take_notified(self) -> list[tuple[str, _Watch]]:
        """The notified channels to read now: watched, positioned, and with room."""
        notified, self._notified = self._notified, set()
        chosen = []
        room = MAX_PENDING_BATCHES * self._batch
        for name in notified:
            watch = self._watches.get(name)
            if watch is None or watch.position is None:
                continue  # left, or its wait_watching has it read once positioned
            if len(watch.pending) >= room:
                watch.excluded = True  # read again once a batch is delivered (_drain)
                continue
            chosen.append((name, watch))
        return chosen

    async def _read(self, chosen: list[tuple[str, _Watch]]) -> None:
        """One non-blocking XREAD of the ``chosen`` streams, each from where it was left;
        what it gets goes to each channel's deliveries."""
        if not chosen:
            return
        key = self._connection.key
        keys = [key("ch", name).encode() for name, _ in chosen]
        positions = [watch.position for _, watch in chosen]
        self.reads += 1
        self.streams_read += len(chosen)
        # Shielded (the round trip is shared) and bounded.
        deadline = trio.current_time() + self._connection.timeout_seconds
        with trio.CancelScope(shield=True, deadline=deadline) as scope:
            reply: Any = await self.pipeline.call(
                b"XREAD", b"COUNT", self._batch, b"STREAMS", *keys, *positions
            )
        if scope.cancelled_caught:
            raise trio.TooSlowError("Redis did not answer an XREAD in time")
        reading = dict(zip(keys, chosen, strict=True))
        for stream_key, raw_entries in reply or ():
            name, watch = reading[stream_key]
            if self._watches.get(name) is not watch:
                continue  # left meanwhile (and perhaps joined again, with a new position)
            entries = [
                _Entry(identifier, dict(zip(fields[::2], fields[1::2], strict=True)))
                for identifier, fields in raw_entries
            ]
            if len(entries) >= self._batch:
                self._notified.add(name)  # a whole batch: there may be more
            await self._accept(name, watch, entries)

    async def _drain(self, name: str, watch: _Watch) -> None:
        """Deliver ``watch``'s pending batches in order, an entry at a time; wake the reader
        if it left the channel out of its read meanwhile.

        An unexpected failure drops what was pending for that channel, reported as a gap:
        the other channels' deliveries, and the reader, go on, and so does this drain with
        whatever the reader queued for the channel meanwhile (while it is draining, nothing
        else would deliver that).
        """
        pending = watch.pending
        try:
            while pending and self._watches.get(name) is watch:
                try:
                    # Taken off first: an entry is never delivered twice, even if a delivery
                    # is cut (the broker stopping).
                    entry = pending.popleft()
                    if entry is _RESTARTED:
                        await self._restart_gap(name, watch)
                    else:
                        await self._deliver(name, watch, (entry,))
                except Exception:
                    await self._delivery_failed(name, watch)
                if watch.excluded and len(pending) < MAX_PENDING_BATCHES * self._batch:
                    watch.excluded = False
                    self._read_soon(name)
        finally:
            watch.draining = False

    async def _deliver_or_report(self, name: str, watch: _Watch, entries: list[_Entry]) -> None:
        """Deliver ``entries`` now (the reader's own deliveries, which never wait); a failure
        is reported as a gap, and the reader goes on."""
        try:
            await self._deliver(name, watch, tuple(entries))
        except Exception:
            await self._delivery_failed(name, watch)

    async def _delivery_failed(self, name: str, watch: _Watch) -> None:
        """Called in an ``except`` block: drop what is pending for ``watch``, report a gap."""
        log.exception("channel %s: a delivery failed; what was pending is dropped", name)
        if _RESTARTED in watch.pending:
            # Redis restarted behind what is dropped: the next epoch is taken without a
            # gap of its own (the one below stands for both losses).
            watch.epoch = None
        watch.pending.clear()
        # The gap below stands for everything read and skipped, up to the last entry read:
        # the next one is taken as following it (a jump past it is a gap of its own, counted).
        # What was left in the stream while the channel was full is read now.
        watch.last_seq = watch.read_at[1]
        if watch.excluded:
            watch.excluded = False
            self._read_soon(name)
        try:
            await self._gap(name, None, "a delivery failed on this relay")
        except Exception:  # the other channels' deliveries go on, whatever happens here
            log.exception("channel %s: the gap could not be reported either", name)

    async def _deliver(self, name: str, watch: _Watch, entries: tuple[Any, ...]) -> None:
        """Deliver what was read for ``watch``, unless its channel was left (and perhaps joined
        again: a new watch starts after what was published before it)."""
        for entry in entries:
            if self._watches.get(name) is not watch:
                return
            try:
                epoch, seq, payload = _decoded(entry.identifier, entry.field_values)
            except (KeyError, ValueError, TypeError):
                # Not written by a relay (or by another version): skip it, say so, go on.
                self.malformed += 1
                log.warning("channel %s: skipped a malformed stream entry", name)
                continue
            last = watch.last_seq
            if epoch != watch.epoch:
                # A new history: the channel's position was lost (its keys expired or were
                # evicted, Redis restarted without them). Its offsets start from 1 again.
                had_one = watch.epoch is not None
                watch.epoch, watch.epoch_text = epoch, epoch.decode()
                if had_one:
                    reason = "the channel's history was lost: a new epoch began"
                    await self._gap(name, None, reason, watch.epoch_text)
            elif last is not None and seq > last + 1:
                await self._gap(
                    name, seq - last - 1, "messages trimmed before this relay read them"
                )
            watch.last_seq = seq
            trace = None
            fields = entry.field_values
            if b"r" in fields:
                try:
                    trace = Trace.decode(fields[b"r"], int(fields[b"a"]) * 1000)
                except (KeyError, ValueError):
                    trace = None  # a trace we cannot read: deliver the message untraced
            await self._deliver_to(name, payload, seq, watch.epoch_text, trace)

    async def _restarted(self) -> None:
        """Redis lost what it held: every watched channel may have a gap. A channel whose
        deliveries are behind gets it after what was read before the restart (its drain
        reports it there), not ahead of those messages."""
        for name, watch in list(self._watches.items()):
            if watch.pending or watch.draining:
                watch.pending.append(_RESTARTED)
                continue
            await self._restart_gap(name, watch)

    async def _restart_gap(self, name: str, watch: _Watch) -> None:
        # Its next epoch is unknown: the one read next is taken without a second gap
        # (positioned consumers' writers still tell their clients the new epoch).
        watch.last_seq = watch.epoch = None
        await self._gap(name, None, "the broker restarted: messages may have been lost")

    async def _gap(
        self, name: str, count: int | None, reason: str, epoch: str | None = None
    ) -> None:
        self.gaps += 1
        log.warning("channel %s: gap of %s messages (%s)", name, count, reason)
        await self._deliver_to(name, Gap(count, reason, epoch), 0, epoch or "", None)


def _as_bytes(value: str | bytes) -> bytes:
    """A stream id as bytes (the client decodes nothing: ``decode_responses=False``)."""
    return value if isinstance(value, bytes) else value.encode()


def _decoded(identifier: str | bytes, fields: Any) -> tuple[bytes, int, Payload]:
    """An entry's epoch, offset (from its id) and message; KeyError / ValueError / TypeError
    if it is not a relay's."""
    epoch, _, offset = _as_bytes(identifier).partition(b"-")
    seq = int(offset)
    data = fields[b"p"]
    if not isinstance(data, bytes):
        raise TypeError("the payload is not bytes")
    kind = fields[b"t"]
    if kind == b"1":
        return epoch, seq, data.decode()
    if kind == b"0":
        return epoch, seq, data
    raise ValueError("unknown payload type")


def _id_key(identifier: bytes) -> tuple[int, int]:
    """A stream id as numbers, ordered as Redis orders ids."""
    epoch, _, offset = identifier.partition(b"-")
    return int(epoch), int(offset)


def _set_position(watch: _Watch, identifier: bytes) -> None:
    """``watch``'s stream is read up to ``identifier``."""
    watch.position = identifier
    watch.read_at = _id_key(identifier)


def _notified_entries(data: bytes) -> list[_Entry]:
    """The entries a publish script's notification carries, as the stream holds them.

    The format: ``{epoch} {first offset} {accepted} {count}\\n``, then for each message
    ``{payload bytes} {trace bytes} {type}\\n`` and the payload and the trace. Raises
    ``ValueError`` for anything else.
    """
    end = data.index(b"\n")
    epoch, first, accepted, count = data[:end].split(b" ")
    int(epoch)  # digits, or ValueError
    offset = int(first)
    entries = []
    at = end + 1
    for i in range(int(count)):
        end = data.index(b"\n", at)
        payload_bytes, trace_bytes, kind = data[at:end].split(b" ")
        payload_end = end + 1 + int(payload_bytes)
        trace_end = payload_end + int(trace_bytes)
        if trace_end > len(data):
            raise ValueError("a notification cut short")
        fields = {b"p": data[end + 1 : payload_end], b"t": kind}
        if trace_end > payload_end:
            fields[b"r"], fields[b"a"] = data[payload_end:trace_end], accepted
        entries.append(_Entry(b"%s-%d" % (epoch, offset + i), fields))
        at = trace_end
    if at != len(data):
        raise ValueError("a notification with more than it says")
    return entries


def _now_ms() -> str:
    """This relay's wall clock in milliseconds: a publish's time (a history's idle time is
    measured with it; a new epoch's number is Redis's clock)."""
    return str(time.time_ns() // 1_000_000)
