"""Acknowledged queue delivery, the pure part (issue #16): jobs, a consumer's in-flight set.

A job of an acked queue channel is handed to one framed consumer at a time and stays *in
flight* for it until the consumer acks it (done), nacks it (give it back), or its
``ack_timeout_seconds`` pass; a job handed out ``max_deliveries`` times without an ack goes to
the dead-letter channel with its history. This module holds that bookkeeping without I/O
(times are passed in, but for the wall clock a history is stamped with), so it is tested
synchronously; ``routes/jobs.py`` drives it over a :class:`~triorelay.brokers.base.JobSource`.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from triorelay.brokers.base import Job, Outcome


@dataclass(frozen=True, slots=True)
class Returned:
    """A job that came back: put it back in its queue, or (``dead``) on the dead-letter
    channel, its deliveries used up."""

    job: Job
    dead: bool


class InFlight:
    """One consumer's jobs handed out and not yet acknowledged.

    At most ``max_in_flight`` at once (:attr:`full`: hand out no more until one is acked:
    per-consumer backpressure); each has its deadline ``ack_timeout_seconds`` after it was
    handed out. Delivery ids are unique to this consumer's connection.
    """

    def __init__(
        self,
        consumer: str,
        *,
        max_in_flight: int,
        ack_timeout_seconds: float,
        max_deliveries: int,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        #: Who holds the jobs, as their histories name it.
        self.consumer = consumer
        self._wall_clock = wall_clock
        self.max_in_flight = max_in_flight
        self.ack_timeout_seconds = ack_timeout_seconds
        self.max_deliveries = max_deliveries
        self._jobs: dict[int, Job] = {}
        #: (deadline, delivery id), earliest first; entries of settled jobs are skipped.
        self._deadlines: list[tuple[float, int]] = []
        self._ids = itertools.count(1)
        self.acked = self.nacked = self.timed_out = self.refused = 0

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def full(self) -> bool:
        return len(self._jobs) >= self.max_in_flight

    def hand_out(self, job: Job, now: float) -> int:
        """``job`` goes to this consumer: one more delivery; return its delivery id."""
        job.deliveries += 1
        delivery_id = next(self._ids)
        self._jobs[delivery_id] = job
        heapq.heappush(self._deadlines, (now + self.ack_timeout_seconds, delivery_id))
        return delivery_id

    def ack(self, delivery_id: int) -> Job | None:
        """The consumer is done with it: return it, to be settled. None (counted as refused)
        for an id that is not in flight: unknown, already settled, or timed out and given to
        another consumer."""
        job = self._jobs.pop(delivery_id, None)
        if job is None:
            self.refused += 1
            return None
        self.acked += 1
        return job

    def nack(self, delivery_id: int, now: float) -> Returned | None:
        """The consumer gives it back; None (counted as refused) if it is not in flight."""
        job = self._jobs.pop(delivery_id, None)
        if job is None:
            self.refused += 1
            return None
        self.nacked += 1
        return self._returned(job, now, "nacked")

    def next_deadline(self) -> float | None:
        """When the earliest job in flight times out (None: nothing in flight)."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][1] not in self._jobs:
            heapq.heappop(deadlines)  # settled meanwhile
        return deadlines[0][0] if deadlines else None

    def expire(self, now: float) -> list[Returned]:
        """Take back every job whose deadline has passed (a late ack is then refused)."""
        returned = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, delivery_id = heapq.heappop(deadlines)
            job = self._jobs.pop(delivery_id, None)
            if job is not None:
                self.timed_out += 1
                returned.append(self._returned(job, now, "timed out"))
        return returned

    def give_back_all(self, now: float) -> list[Returned]:
        """The consumer left: every job it held comes back at once, oldest first."""
        jobs = sorted(self._jobs.items())
        self._jobs.clear()
        self._deadlines.clear()
        return [self._returned(job, now, "consumer left") for _, job in jobs]

    def jobs(self) -> list[Job]:
        """The jobs in flight, oldest first."""
        return [job for _, job in sorted(self._jobs.items())]

    def _returned(self, job: Job, now: float, why: Outcome) -> Returned:
        job.history.append((self._wall_clock(), self.consumer, why))
        return Returned(job, dead=job.deliveries >= self.max_deliveries)
