"""Acked queue channels on Redis (issue #16): the jobs of ``ack = "explicit"`` channels.

An acked channel ``c`` is a queue channel (:mod:`.queues`): the same stream ``{prefix}q:{c}``,
group ``triorelay``, publish script and sequence key ``{prefix}qseq:{c}``, so a producer's ack
means the job is stored. What changes is how long a consumer holds an entry, and what happens
when it comes back:

- **Fields**: ``p`` (payload), ``t`` (``1`` text), ``s`` (sequence number) and, once the job
  came back, ``d`` (deliveries so far) and ``h`` (its history, JSON ``[[unix time, consumer,
  outcome], ...]``). Entries are never changed: a job that comes back is a new entry with
  ``d`` and ``h`` updated, the old one acknowledged and deleted in the same script.
- **Take**: first a *sweep* of the channel (one script, at most once per block time per
  channel and relay), then ``XREADGROUP`` as queues do. The sweep moves delayed jobs that are
  due back to the stream, and *rescues* the jobs of relays that died: entries pending,
  unrenewed, for ``redis_claim_idle_seconds`` (``XPENDING ... IDLE``) are copied to the end of
  the stream with their lost deliveries counted (``d`` + the entry's delivery count) and
  ``[now, "<its consumer>", "relay died"]`` added to ``h``, the original acknowledged and
  deleted, and the dead consumer forgotten once it holds nothing. (Copied rather than claimed
  with ``XAUTOCLAIM``: the history a claim adds would live in one relay's memory only, lost
  if that relay died too; and a job that comes back goes to the end, as in the memory queue.)
- **Leases**: a job may stay in flight longer than the claim time (``ack_timeout_seconds``),
  so every claim time / 3 this relay renews its jobs in flight (``XCLAIM ... 0 ... JUSTID``,
  to the same consumer: the idle time starts again, no delivery counted). Only a relay that
  stops renewing (dead, or cut from Redis) has its jobs rescued.
- **Settle** (one script): ``XACK`` and ``XDEL`` each job; the keys expire
  ``redis_stream_ttl_seconds`` once neither the stream nor the delayed set holds a job.
- **Give back** (one script, in the background): only if the entry is still pending for the
  consumer (so a retry, or a job rescued meanwhile, gives nothing back twice): delay 0, a
  copy goes to the end of the stream; else the copy waits in the sorted set
  ``{prefix}qdelay:{c}`` (score: due time in Redis's clock, ms; member: the fields, msgpack),
  which publishing counts against ``queue_buffer_messages`` and which keeps the queue's keys
  from expiring. Delayed jobs are moved back by a timer in the relay that gave them back (or
  that learnt of them in a sweep) at their due time, or by any relay's next sweep: a relay
  that dies leaves none behind.
- **Release** (a consumer that read its channel left; one script per batch of its entries):
  after its give-backs (one queue, in order), what is still pending for it goes back counted
  as a rescue's is (``d`` + the entry's delivery count, ``[Redis's time, "<consumer>",
  "consumer left"]`` added to ``h``), and the consumer is forgotten. At shutdown the hub
  closes the channels before the routes give their jobs back, so the release comes first:
  the route's give-backs then find nothing pending and write nothing, and the job still
  comes back counted.
- **Writing back**: give-backs and releases are retried while Redis is unavailable and
  dropped (logged, counted) when Redis refuses them, their jobs then coming back after the
  claim time; at most ``max_connections`` releases wait (:meth:`RedisJobStore.release`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, cast

import trio

from triorelay.brokers.base import Job, Outcome
from triorelay.brokers.redis.connection import (
    REDIS_ERRORS,
    UNAVAILABLE_ERRORS,
    RedisConnection,
)
from triorelay.brokers.redis.queues import GROUP, RedisQueues

log = logging.getLogger(__name__)

_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fields_of(entry)
  local fields = {}
  for i = 1, #entry[2], 2 do fields[entry[2][i]] = entry[2][i + 1] end
  return fields
end
local function appended(h, item)  -- history h (JSON, or nil) with one more item
  if h and h ~= '[]' then return string.sub(h, 1, -2) .. ',' .. item .. ']' end
  return '[' .. item .. ']'
end
"""
_SWEEP = (
    _NOW_MS
    + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[1], '*', unpack(cmsgpack.unpack(member)))
  redis.call('ZREM', KEYS[2], member)
end
if #due > 0 then
  redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0')
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[3])
end
local rescued = 0
local idle = {}
if tonumber(ARGV[2]) > 0 then
  idle = redis.pcall('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[2], '-', '+', ARGV[4])
  if idle.err then idle = {} end  -- no group: nothing pending
end
for _, pending in ipairs(idle) do
  local id, consumer = pending[1], pending[2]
  local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
  local f = entry and fields_of(entry) or {}
  if f.p and f.t and f.s then  -- else not a job: dropped
    local died = '[' .. ARGV[3] .. ',' .. cjson.encode(consumer) .. ',"relay died"]'
    redis.call('XADD', KEYS[1], '*', 'p', f.p, 't', f.t, 's', f.s,
      'd', (tonumber(f.d) or 0) + pending[4], 'h', appended(f.h, died))
    rescued = rescued + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], id)
  redis.call('XDEL', KEYS[1], id)
  if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, consumer) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], consumer)
  end
end
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2]
return {#due, rescued, next_due and math.max(0, tonumber(next_due) - now) or -1}
"""
)
_GIVE_BACK = (
    _NOW_MS
    + """
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if pending.err or #pending == 0 or pending[1][2] ~= ARGV[3] then
  return 0  -- not this consumer's any more (given back already, rescued, Redis restarted)
end
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])[1]
-- The copy first: a script that fails keeps what it wrote before (Redis has no rollback), so
-- a copy refused (a key of the wrong type, maxmemory) leaves the job pending, to be rescued.
if entry then
  local f = fields_of(entry)
  local job = {'p', f.p, 't', f.t, 's', f.s, 'd', ARGV[4], 'h', ARGV[5]}
  if tonumber(ARGV[6]) > 0 then
    redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[6]), cmsgpack.pack(job))
  else
    redis.call('XADD', KEYS[1], '*', unpack(job))
  end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return entry and 1 or 0
"""
)
_RELEASE = (
    _NOW_MS
    + """
local batch = tonumber(ARGV[3])
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', batch, ARGV[2])
if pending.err then return 0 end  -- no group: the stream is gone, and what it held with it
local t = redis.call('TIME')
local left = '[' .. t[1] .. '.' .. string.format('%06d', tonumber(t[2])) .. ','
  .. cjson.encode(ARGV[2]) .. ',"consumer left"]'
for _, p in ipairs(pending) do
  local entry = redis.call('XRANGE', KEYS[1], p[1], p[1])[1]
  local f = entry and fields_of(entry) or {}
  if f.p and f.t and f.s then  -- else not a job: dropped
    redis.call('XADD', KEYS[1], '*', 'p', f.p, 't', f.t, 's', f.s,
      'd', (tonumber(f.d) or 0) + p[4], 'h', appended(f.h, left))
  end
  redis.call('XACK', KEYS[1], ARGV[1], p[1])
  redis.call('XDEL', KEYS[1], p[1])
end
if #pending < batch then
  -- Nothing left pending: forget the consumer (one deleted holding entries would drop them).
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return #pending
"""
)
_SETTLE = """
for i = 3, #ARGV do
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
end
if redis.call('XLEN', KEYS[1]) == 0 and redis.call('ZCARD', KEYS[3]) == 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
"""
_RENEW = """
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  local command = {'XCLAIM', KEYS[1], ARGV[1], ARGV[i], 0}
  for j = i + 2, i + 1 + n do command[#command + 1] = ARGV[j] end
  command[#command + 1] = 'JUSTID'
  redis.pcall(unpack(command))  -- a group gone (Redis restarted) renews nothing
  i = i + 2 + n
end
"""

#: Most entries a sweep moves at once, of each kind (due, rescued), or a release gives back:
#: a full batch goes again.
SWEEP_BATCH = 100
#: Most ids of one consumer in one ``XCLAIM`` (Lua's stack bounds a command's arguments).
RENEW_CHUNK = 1000
#: Most channels with a promotion timer here; past it, delayed jobs wait for a sweep.
MAX_PROMOTION_TIMES = 10_000


@dataclass(frozen=True, slots=True)
class JobReceipt:
    """A job's stream entry, and the consumer (Redis name) it is pending for."""

    name: str
    key: str
    entry: str | bytes
    consumer: str


@dataclass(frozen=True, slots=True)
class _GiveBack:
    job: Job
    receipt: JobReceipt
    delay_ms: int


@dataclass(frozen=True, slots=True)
class _Release:
    name: str
    consumer: str


class _Held:
    """This relay's jobs taken and not yet settled or written back (their leases are
    renewed), by stream and consumer: a consumer's are let go of in one step, whatever the
    others hold."""

    __slots__ = ("_by_consumer", "_count")

    def __init__(self) -> None:
        self._by_consumer: dict[tuple[str, str], set[JobReceipt]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, receipt: JobReceipt) -> None:
        held = self._by_consumer.setdefault((receipt.key, receipt.consumer), set())
        if receipt not in held:
            held.add(receipt)
            self._count += 1

    def discard(self, receipt: JobReceipt) -> None:
        key = (receipt.key, receipt.consumer)
        held = self._by_consumer.get(key)
        if held is not None and receipt in held:
            held.remove(receipt)
            self._count -= 1
            if not held:
                del self._by_consumer[key]

    def discard_consumer(self, key: str, consumer: str) -> None:
        """Let go of everything ``consumer`` holds on stream ``key``."""
        self._count -= len(self._by_consumer.pop((key, consumer), ()))

    def by_stream(self) -> dict[str, dict[str, list[str | bytes]]]:
        """Stream key → consumer → the entry ids it holds."""
        streams: dict[str, dict[str, list[str | bytes]]] = {}
        for (key, consumer), held in self._by_consumer.items():
            streams.setdefault(key, {})[consumer] = [receipt.entry for receipt in held]
        return streams


class RedisJobStore:
    """The acked side of :class:`~triorelay.brokers.redis.RedisBroker`: every acked channel's
    jobs taken here, their leases, and what goes back to Redis in the background
    (:meth:`run`)."""

    def __init__(
        self,
        connection: RedisConnection,
        queues: RedisQueues,
        *,
        claim_idle_seconds: float,
        max_releases: int = 50_000,
    ) -> None:
        self._connection = connection
        self._queues = queues
        client = connection.client
        self._sweep_script = client.register_script(_SWEEP)
        self._give_back_script = client.register_script(_GIVE_BACK)
        self._release_script = client.register_script(_RELEASE)
        self._settle_script = client.register_script(_SETTLE)
        self._renew_script = client.register_script(_RENEW)
        self._claim_idle_ms = max(1, round(claim_idle_seconds * 1000))
        #: This relay's jobs taken and not yet settled or written back. Bounded by the jobs
        #: in flight (``max_in_flight`` per consumer) and those waiting in ``_returns``.
        self._held = _Held()
        #: Give-backs and releases to write, in order. Bounded: a give-back is of a job held
        #: (above), and a consumer's next take waits until its give-backs are written
        #: (:meth:`take`); a release is one per consumer that read its channel and left,
        #: at most ``max_releases`` of them (:meth:`release`).
        self._returns: deque[_GiveBack | _Release] = deque()
        self._releases = 0  # of them in _returns
        self._max_releases = max_releases
        self._returning: Counter[str] = Counter()  # consumer → its give-backs in _returns
        self._returns_wanted = trio.Event()
        self._written = trio.Event()
        #: Channel → when (trio time) its next delayed job is due.
        self._promote_at: dict[str, float] = {}
        self._promote_wanted = trio.Event()
        self.rescued = self.promoted = self.renewed = self.malformed = 0
        #: Give-backs and releases Redis refused (not retried: see :meth:`_write_next`), and
        #: releases past ``max_releases`` (:meth:`release`).
        self.returns_dropped = 0

    # -- what consumers call (through RedisJobs) --

    async def take(self, name: str, consumer_id: int) -> Job:
        """The next job for this consumer, waiting for one (and for Redis)."""
        queues = self._queues
        consumer = queues.consumer_name(consumer_id)
        while self._returning.get(consumer):
            await self._written.wait()  # its give-backs first: they are in the stream then
        while True:
            entry = await queues.take_entry(name, consumer_id, self._sweep_before_read)
            receipt = JobReceipt(name, queues.key(name), entry.identifier, consumer)
            job = self._job_of(entry.field_values, receipt)
            if job is not None:
                self._held.add(receipt)
                return job
            self.malformed += 1
            log.warning("dropping a malformed job entry %r of %s", receipt.entry, name)
            # Not written by a relay: nothing to deliver. If this fails it is rescued later,
            # and dropped then.
            with contextlib.suppress(*REDIS_ERRORS), self._connection.deadline():
                await self._settle_script(
                    keys=self._keys(name), args=[GROUP, self._connection.ttl_ms, receipt.entry]
                )

    async def settle(self, jobs: list[Job]) -> None:
        """Acknowledge and delete ``jobs`` (one script per channel: one round trip). Raises
        :class:`~triorelay.errors.BrokerUnavailable`; the jobs are then no longer renewed,
        and come back after the claim time."""
        by_key: dict[str, list[JobReceipt]] = {}
        for job in jobs:
            assert isinstance(job.receipt, JobReceipt)
            by_key.setdefault(job.receipt.key, []).append(job.receipt)
        connection = self._connection
        try:
            for receipts in by_key.values():
                args = [GROUP, connection.ttl_ms, *(receipt.entry for receipt in receipts)]
                with connection.failing_as_unavailable("settle"):
                    await self._settle_script(keys=self._keys(receipts[0].name), args=args)
        finally:
            for receipt in (receipt for receipts in by_key.values() for receipt in receipts):
                self._held.discard(receipt)

    def give_back(self, job: Job, delay_seconds: float) -> None:
        """Queue ``job`` to go back (written in the background, retried while Redis is down)."""
        receipt = job.receipt
        assert isinstance(receipt, JobReceipt)
        delay_ms = max(0, round(delay_seconds * 1000))
        self._returns.append(_GiveBack(job, receipt, delay_ms))
        self._returning[receipt.consumer] += 1
        self._returns_wanted.set()

    def release(self, name: str, consumer_id: int) -> None:
        """Queue giving back what the consumer still holds, after its give-backs.

        Nothing to do for a consumer that never read its channel (Redis knows nothing of it:
        one that came and went while Redis was down, for one). Releases wait only while Redis
        is unavailable, one per consumer that read and left meanwhile; past ``max_releases``
        waiting, one more is dropped and counted: its jobs are no longer renewed and come
        back after the claim time, as a dead relay's.
        """
        consumer = self._queues.consumer_name(consumer_id)
        if not self._queues.left(name, consumer):
            return
        if self._releases >= self._max_releases:
            self.returns_dropped += 1
            self._held.discard_consumer(self._queues.key(name), consumer)
            log.warning("%d job releases wait for Redis: one more dropped", self._releases)
            return
        self._returns.append(_Release(name, consumer))
        self._releases += 1
        self._returns_wanted.set()

    # -- background work --

    async def run(self) -> None:
        """Write give-backs and releases, renew leases, promote delayed jobs; until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_returns)
            nursery.start_soon(self._run_renewals)
            nursery.start_soon(self._run_promotions)

    async def wait_written(self) -> None:
        """Return once every give-back and release queued so far is written."""
        while self._returns:
            await self._written.wait()

    async def _run_returns(self) -> None:
        # Not flushed when cancelled: coredis's connections end in the same cancellation, so
        # what is still queued then is rescued after the claim time, as a dead relay's (a
        # graceful shutdown flushes first: RedisBroker.flush).
        while True:
            await self._returns_wanted.wait()
            self._returns_wanted = trio.Event()
            while self._returns:
                await self._connection.wait_ready()
                if not await self._write_next():
                    await trio.sleep(0.05)  # then wait_ready waits out an outage

    async def _write_next(self) -> bool:
        """Write the first give-back or release; False (kept first, to retry) if Redis is
        unavailable. One that Redis refuses (a script error: a key of the wrong type,
        ``maxmemory``) is dropped, logged and counted, not retried (a retry would fail the
        same way, holding up every write after it): its jobs stay pending in Redis, no longer
        renewed here, so they come back after the claim time."""
        work = self._returns[0]
        try:
            with self._connection.deadline():
                await self._write(work)
        except UNAVAILABLE_ERRORS as error:
            self._connection.note_error(f"give back: {error}")
            return False
        except REDIS_ERRORS as error:
            self._connection.note_error(f"give back: {error}")
            self.returns_dropped += 1
            what = "a release" if isinstance(work, _Release) else "a give-back"
            log.warning(
                "Redis refused %s of %s (%s): dropped, its jobs come back after the claim time",
                what,
                work.name if isinstance(work, _Release) else work.receipt.name,
                error,
            )
        self._returns.popleft()
        if isinstance(work, _Release):
            self._releases -= 1
            self._held.discard_consumer(self._queues.key(work.name), work.consumer)
        else:
            self._held.discard(work.receipt)
            self._returning[work.receipt.consumer] -= 1
            if not self._returning[work.receipt.consumer]:
                del self._returning[work.receipt.consumer]
        self._written.set()
        self._written = trio.Event()
        return True

    async def _write(self, work: _GiveBack | _Release) -> None:
        if isinstance(work, _Release):
            key = self._queues.key(work.name)
            args = [GROUP, work.consumer, str(SWEEP_BATCH)]
            while int(await self._release_script(keys=[key], args=args)) >= SWEEP_BATCH:
                pass  # a full batch: more may be pending
            return
        job, receipt = work.job, work.receipt
        history = json.dumps([list(item) for item in job.history], separators=(",", ":"))
        fields = [str(job.deliveries), history, str(work.delay_ms)]
        await self._give_back_script(
            keys=[receipt.key, self._connection.key("qdelay", receipt.name)],
            args=[GROUP, receipt.entry, receipt.consumer, *fields],
        )
        if work.delay_ms > 0:
            self._promote_later(receipt.name, work.delay_ms / 1000)

    async def _run_renewals(self) -> None:
        # Three renewals per claim time: two may fail (a slow Redis) before another relay
        # takes a live relay's job for a dead one's.
        while True:
            await trio.sleep(self._claim_idle_ms / 3000)
            if not self._connection.ready:
                continue  # the jobs may be rescued meanwhile: at least once
            for key, consumers in self._held.by_stream().items():  # one script per channel
                args: list[str | bytes] = [GROUP]
                for consumer, ids in consumers.items():
                    for start in range(0, len(ids), RENEW_CHUNK):
                        chunk = ids[start : start + RENEW_CHUNK]
                        args += [consumer, str(len(chunk)), *chunk]
                try:
                    with self._connection.deadline():
                        await self._renew_script(keys=[key], args=args)
                except REDIS_ERRORS as error:
                    self._connection.note_error(f"renew: {error}")
                    continue
                self.renewed += sum(len(ids) for ids in consumers.values())

    async def _run_promotions(self) -> None:
        while True:
            self._promote_wanted = trio.Event()
            if not self._promote_at:
                await self._promote_wanted.wait()
                continue
            name = min(self._promote_at, key=self._promote_at.__getitem__)
            with trio.move_on_at(self._promote_at[name]):
                await self._promote_wanted.wait()
                continue  # a sooner one may have come: look again
            del self._promote_at[name]
            await self._connection.wait_ready()
            try:
                await self._sweep(name, rescue=False)
            except REDIS_ERRORS as error:
                self._connection.note_error(f"promote: {error}")
                self._promote_later(name, 0.05)

    def _promote_later(self, name: str, delay_seconds: float) -> None:
        """Promote ``name``'s delayed jobs ``delay_seconds`` from now (or sooner, if due)."""
        at = trio.current_time() + delay_seconds + 0.001  # due on Redis's clock by then
        earliest = self._promote_at.get(name)
        if earliest is not None and earliest <= at:
            return
        if earliest is None and len(self._promote_at) >= MAX_PROMOTION_TIMES:
            return  # a sweep (any relay's take) still moves them, up to a block time late
        self._promote_at[name] = at
        self._promote_wanted.set()

    async def _sweep_before_read(self, name: str, key: str, consumer: str) -> None:
        if self._queues.claim_due(name):
            while await self._sweep(name, rescue=True) >= SWEEP_BATCH:
                pass  # a dead relay left many: go on

    async def _sweep(self, name: str, *, rescue: bool) -> int:
        """Move ``name``'s due delayed jobs back and (``rescue``) rescue dead relays' jobs;
        return the larger count of the two (a full batch: more may be left)."""
        stream, seq, delayed = self._keys(name)
        idle = str(self._claim_idle_ms if rescue else 0)
        with self._connection.deadline():
            result: Any = await self._sweep_script(
                keys=[stream, delayed, seq],
                args=[GROUP, idle, f"{time.time():.3f}", str(SWEEP_BATCH)],
            )
        promoted, rescued, next_due_ms = (int(value) for value in result)
        self.promoted += promoted
        self.rescued += rescued
        if next_due_ms >= 0:
            self._promote_later(name, next_due_ms / 1000)
        return max(promoted, rescued)

    # -- bookkeeping --

    def _keys(self, name: str) -> list[str]:
        """Channel ``name``'s stream, sequence and delayed-jobs keys."""
        key = self._connection.key
        return [self._queues.key(name), key("qseq", name), key("qdelay", name)]

    def _job_of(self, fields: dict[bytes, bytes], receipt: JobReceipt) -> Job | None:
        try:
            data = fields[b"p"]
            payload = data.decode() if fields[b"t"] == b"1" else data
            history = [
                (float(at), str(consumer), cast(Outcome, outcome))
                for at, consumer, outcome in json.loads(fields.get(b"h", b"[]"))
            ]
            return Job(
                payload,
                len(data),
                int(fields[b"s"]),
                deliveries=int(fields.get(b"d", b"0")),
                history=history,
                receipt=receipt,
            )
        except (KeyError, ValueError, TypeError):
            return None

    def statistics(self) -> dict[str, int]:
        return {
            "jobs_held": len(self._held),
            "jobs_returning": len(self._returns),
            "jobs_rescued": self.rescued,
            "jobs_promoted": self.promoted,
            "job_leases_renewed": self.renewed,
            "malformed_jobs": self.malformed,
            "job_returns_dropped": self.returns_dropped,
        }


class RedisJobs:
    """One acked queue channel's :class:`~triorelay.brokers.base.JobSource` on Redis."""

    __slots__ = ("name", "store")

    def __init__(self, store: RedisJobStore, name: str) -> None:
        self.store = store
        self.name = name

    async def take(self, consumer_id: int) -> Job:
        return await self.store.take(self.name, consumer_id)

    async def settle(self, jobs: list[Job]) -> None:
        await self.store.settle(jobs)

    def give_back(self, job: Job, delay_seconds: float) -> None:
        self.store.give_back(job, delay_seconds)

    def release(self, consumer_id: int) -> None:
        self.store.release(self.name, consumer_id)
