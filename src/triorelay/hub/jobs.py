"""Acked queue channels on this relay: the memory broker's job queue, and a consumer's side
of any :class:`~triorelay.brokers.base.JobSource`.

A job's life (``docs/topics/queue-delivery.md``): *ready* in the queue → taken by one
consumer, *in flight* until it acks it (gone), nacks it, times out or leaves (it comes back,
*delayed* by the redelivery backoff, then ready again) → after ``max_deliveries`` deliveries
without an ack, published on the dead-letter channel. :class:`JobQueue` holds the ready and
delayed jobs of one channel; what is in flight is each consumer's
(:class:`~triorelay.hub.acks.InFlight`), its bytes still counted in the relay's
:class:`~triorelay.hub.buffers.QueueBudget` until it is settled.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque

import trio

from triorelay.brokers.base import Job, JobSource
from triorelay.envelopes import Payload
from triorelay.errors import QueueFull
from triorelay.hub.buffers import Occupancy, QueueBudget


class _Taker:
    """A consumer waiting in :meth:`JobQueue.take`: the job handed to it, when one is."""

    __slots__ = ("event", "job")

    def __init__(self) -> None:
        self.job: Job | None = None
        self.event = trio.Event()


class JobQueue:
    """One acked queue channel's jobs on this relay (memory broker): a
    :class:`~triorelay.brokers.base.JobSource`.

    Bounds: at most ``max_messages`` jobs waiting (ready or delayed) before :meth:`put` makes
    producers wait, and their bytes, with those in flight, within the relay's
    :class:`QueueBudget`. A job that comes back is always taken back, even past the bound: it
    was accepted once, and what is in flight is bounded by ``max_in_flight`` per consumer.

    Consumers waiting in :meth:`take` are served in the order they came, and a job that
    comes back goes to one of them first: a consumer that nacks a job is not waiting at that
    moment, so the job goes to another one when there is one.
    """

    def __init__(
        self,
        max_messages: int,
        occupancy: Occupancy,
        budget: QueueBudget,
        full_timeout_seconds: float,
    ) -> None:
        self._max_messages = max_messages
        self._occupancy = occupancy
        self.budget = budget
        self._full_timeout = full_timeout_seconds
        self._ready: deque[Job] = deque()
        #: (ready at, tie-break, job), earliest first.
        self._delayed: list[tuple[float, int, Job]] = []
        self._order = itertools.count()
        #: Consumers waiting for a job, first come first served (one entry per consumer).
        self._takers: deque[_Taker] = deque()
        self._room = trio.lowlevel.ParkingLot()
        self.closed = False

    def __len__(self) -> int:
        """Jobs waiting to be handed out (ready or delayed)."""
        return len(self._ready) + len(self._delayed)

    @property
    def full(self) -> bool:
        return len(self) >= self._max_messages

    async def wait_for_room(self, size: int) -> None:
        """Return once a job of ``size`` would be queued without waiting; raise
        :class:`trio.ClosedResourceError` once the queue is closed."""
        while True:
            if self.closed:
                raise trio.ClosedResourceError("the queue is closed")
            if not self.budget.fits(size):
                await self.budget.wait_for_change()
            elif self.full:
                await self._room.park()
            else:
                return

    async def put(self, payload: Payload, size: int, seq: int) -> None:
        """Queue a new job, waiting for room at most ``full_timeout_seconds`` (then
        :class:`~triorelay.errors.QueueFull`); :class:`trio.ClosedResourceError` once closed."""
        if self.full or not self.budget.fits(size) or self.closed:
            with trio.move_on_after(self._full_timeout):
                await self.wait_for_room(size)
            if self.full or not self.budget.fits(size):
                raise QueueFull(
                    f"the queue stayed full for {self._full_timeout:g} s: message not queued"
                )
        self.budget.add(size)
        self._offer(Job(payload, size, seq))

    async def take(self, consumer_id: int) -> Job:
        """The next ready job, waiting for one (or for a delayed one's time); raises
        :class:`trio.EndOfChannel` once the queue is closed."""
        while True:
            self._promote(trio.current_time())
            if self._ready:
                job = self._ready.popleft()
                self._occupancy.remove()
                if self._room:
                    self._room.unpark_all()
                return job
            if self.closed:
                raise trio.EndOfChannel
            taker = _Taker()
            self._takers.append(taker)
            try:
                with trio.move_on_at(self._delayed[0][0] if self._delayed else float("inf")):
                    await taker.event.wait()
            except BaseException:
                # Cancelled: a job handed over meanwhile goes to the next one (first in line).
                if taker.job is not None:
                    self._offer(taker.job, first=True)
                raise
            finally:
                if taker.job is None:
                    self._takers.remove(taker)
            if taker.job is not None:
                return taker.job
            # Woken for a delayed job's time, or the queue closed: look again.

    async def settle(self, jobs: list[Job]) -> None:
        """Acked: the jobs' bytes leave the budget (no checkpoint)."""
        for job in jobs:
            self.budget.remove(job.size)

    def give_back(self, job: Job, delay_seconds: float) -> None:
        """Take ``job`` back, ready again after ``delay_seconds``."""
        if self.closed:  # shutting down: the memory queue goes with the relay
            self.budget.remove(job.size)
            return
        if delay_seconds <= 0:
            self._offer(job)
            return
        ready_at = trio.current_time() + delay_seconds
        earliest = self._delayed[0][0] if self._delayed else float("inf")
        heapq.heappush(self._delayed, (ready_at, next(self._order), job))
        self._occupancy.add()
        if ready_at < earliest:
            self._wake_takers()  # they wait until the earliest one: look again

    def release(self, consumer_id: int) -> None:
        """Nothing to do: what a consumer held was given back job by job."""

    def close(self) -> None:
        """Refuse new jobs and end every consumer's :meth:`take`; what waits is dropped."""
        self.closed = True
        for job in self._ready:
            self.budget.remove(job.size)
        for _, _, job in self._delayed:
            self.budget.remove(job.size)
        self._occupancy.remove(len(self))
        self._ready.clear()
        self._delayed.clear()
        self._wake_takers()
        self._room.unpark_all()
        self.budget.wake()

    def _offer(self, job: Job, *, first: bool = False) -> None:
        """Hand ``job`` to the consumer waiting longest, else queue it as ready (``first``:
        before the others)."""
        if self._takers:
            taker = self._takers.popleft()
            taker.job = job
            taker.event.set()
            return
        if first:
            self._ready.appendleft(job)
        else:
            self._ready.append(job)
        self._occupancy.add()

    def _promote(self, now: float) -> None:
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            self._occupancy.remove()
            self._offer(heapq.heappop(delayed)[2])

    def _wake_takers(self) -> None:
        for taker in self._takers:
            taker.event.set()


class JobReader:
    """A consumer's side of an acked queue channel's :class:`JobSource`.

    A framed consumer takes :class:`Job` objects (:meth:`take`) and settles them itself
    (``routes/jobs.py``). A raw consumer reads it as its inbox, one payload at a time, and
    the job is done once written to its socket (:meth:`acknowledge`): delivery is the ack,
    as on any queue channel.
    """

    __slots__ = ("_closed", "_consumer_id", "_job", "last_size", "source")

    def __init__(self, source: JobSource, consumer_id: int) -> None:
        self.source = source
        self._consumer_id = consumer_id
        self._job: Job | None = None
        self._closed = False
        self.last_size = 0

    @property
    def closed(self) -> bool:
        return self._closed

    async def take(self) -> Job:
        """The next job for this consumer (see :meth:`JobSource.take`)."""
        if self._closed:
            raise trio.EndOfChannel
        job = await self.source.take(self._consumer_id)
        self.last_size = job.size
        return job

    # -- the inbox of a raw consumer --

    async def receive(self) -> Payload:
        job = self._job = await self.take()
        job.deliveries += 1
        return job.payload

    def receive_nowait(self) -> Payload:
        raise trio.WouldBlock

    def requeue(self, payload: Payload) -> bool:
        """Not written: the job goes back at once (its delivery counted)."""
        job, self._job = self._job, None
        if job is not None:
            self.source.give_back(job, 0.0)
        return True

    async def acknowledge(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            await self.source.settle([job])

    def close(self) -> int:
        if not self._closed:
            self._closed = True
            self.requeue("")
            self.source.release(self._consumer_id)
        return 0
