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
- **Release** (a consumer left): after its give-backs (one queue, in order), what is still
  pending for it goes back as queues do (:meth:`RedisQueues.give_back_pending`).
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
from triorelay.brokers.redis.connection import REDIS_ERRORS, RedisConnection
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
    local h = '[' .. died .. ']'
    if f.h and f.h ~= '[]' then h = string.sub(f.h, 1, -2) .. ',' .. died .. ']' end
    redis.call('XADD', KEYS[1], '*', 'p', f.p, 't', f.t, 's', f.s,
      'd', (tonumber(f.d) or 0) + pending[4], 'h', h)
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
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if not entry then return 0 end
local f = fields_of(entry)
local job = {'p', f.p, 't', f.t, 's', f.s, 'd', ARGV[4], 'h', ARGV[5]}
if tonumber(ARGV[6]) > 0 then
  redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[6]), cmsgpack.pack(job))
else
  redis.call('XADD', KEYS[1], '*', unpack(job))
end
return 1
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

#: Most entries a sweep moves at once, of each kind (due, rescued): a full batch sweeps again.
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


class RedisJobStore:
    """The acked side of :class:`~triorelay.brokers.redis.RedisBroker`: every acked channel's
    jobs taken here, their leases, and what goes back to Redis in the background
    (:meth:`run`)."""

    def __init__(
        self, connection: RedisConnection, queues: RedisQueues, *, claim_idle_seconds: float
    ) -> None:
        self._connection = connection
        self._queues = queues
        client = connection.client
        self._sweep_script = client.register_script(_SWEEP)
        self._give_back_script = client.register_script(_GIVE_BACK)
        self._settle_script = client.register_script(_SETTLE)
        self._renew_script = client.register_script(_RENEW)
        self._claim_idle_ms = max(1, round(claim_idle_seconds * 1000))
        #: This relay's jobs taken and not yet settled or written back (their leases are
        #: renewed). Bounded by the jobs in flight (``max_in_flight`` per consumer) and
        #: those waiting in ``_returns``.
        self._held: set[JobReceipt] = set()
        #: Give-backs and releases to write, in order. Bounded: a give-back is of a job held
        #: (above), and a consumer's next take waits until its give-backs are written
        #: (:meth:`take`); a release is one per consumer leaving.
        self._returns: deque[_GiveBack | _Release] = deque()
        self._returning: Counter[str] = Counter()  # consumer → its give-backs in _returns
        self._returns_wanted = trio.Event()
        self._written = trio.Event()
        #: Channel → when (trio time) its next delayed job is due.
        self._promote_at: dict[str, float] = {}
        self._promote_wanted = trio.Event()
        self.rescued = self.promoted = self.renewed = self.malformed = 0

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
            for receipts in by_key.values():
                self._held.difference_update(receipts)

    def give_back(self, job: Job, delay_seconds: float) -> None:
        """Queue ``job`` to go back (written in the background, retried while Redis is down)."""
        receipt = job.receipt
        assert isinstance(receipt, JobReceipt)
        delay_ms = max(0, round(delay_seconds * 1000))
        self._returns.append(_GiveBack(job, receipt, delay_ms))
        self._returning[receipt.consumer] += 1
        self._returns_wanted.set()

    def release(self, name: str, consumer_id: int) -> None:
        """Queue giving back what the consumer still holds, after its give-backs."""
        self._returns.append(_Release(name, self._queues.consumer_name(consumer_id)))
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
        # what is still queued then is rescued after the claim time, as a dead relay's.
        while True:
            await self._returns_wanted.wait()
            self._returns_wanted = trio.Event()
            while self._returns:
                await self._connection.wait_ready()
                if not await self._write_next():
                    await trio.sleep(0.05)  # then wait_ready waits out an outage

    async def _write_next(self) -> bool:
        """Write the first give-back or release; False (kept first) if Redis failed."""
        work = self._returns[0]
        try:
            with self._connection.deadline():
                await self._write(work)
        except REDIS_ERRORS as error:
            self._connection.note_error(f"give back: {error}")
            return False
        self._returns.popleft()
        if isinstance(work, _GiveBack):
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
            await self._queues.give_back_pending(key, work.consumer)
            self._held = {
                held for held in self._held if (held.key, held.consumer) != (key, work.consumer)
            }
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
            held: dict[str, dict[str, list[str | bytes]]] = {}
            for receipt in self._held:
                held.setdefault(receipt.key, {}).setdefault(receipt.consumer, []).append(
                    receipt.entry
                )
            for key, consumers in held.items():  # one script per channel
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
