"""Acknowledged queue delivery, the pure part (issue #16): jobs, a consumer's in-flight set.

A job of an acked queue channel is handed to one framed consumer at a time and stays *in
flight* for it until the consumer acks it (done), nacks it (give it back), or its
``ack_timeout_seconds`` pass; a job handed out ``max_deliveries`` times without an ack goes to
the dead-letter channel with its history. This module holds that bookkeeping without I/O
(times are passed in, but for the wall clock a history is stamped with), so it is tested
synchronously; ``routes/jobs.py`` drives it over a :class:`~triorelay.brokers.base.JobSource`.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
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
        #: Delivery id -> (job, deadline), in the order handed out: with one timeout for
        #: every job, that is deadline order too, so the first is the next to time out and
        #: nothing is kept for a settled job (an OrderedDict's first item is O(1) however
        #: many were removed before it).
        self._jobs: OrderedDict[int, tuple[Job, float]] = OrderedDict()
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
        self._jobs[delivery_id] = (job, now + self.ack_timeout_seconds)
        return delivery_id

    def ack(self, delivery_id: int) -> Job | None:
        """The consumer is done with it: return it, to be settled. None (counted as refused)
        for an id that is not in flight: unknown, already settled, or timed out and given to
        another consumer."""
        held = self._jobs.pop(delivery_id, None)
        if held is None:
            self.refused += 1
            return None
        self.acked += 1
        return held[0]

    def nack(self, delivery_id: int, now: float) -> Returned | None:
        """The consumer gives it back; None (counted as refused) if it is not in flight."""
        held = self._jobs.pop(delivery_id, None)
        if held is None:
            self.refused += 1
            return None
        self.nacked += 1
        return self._returned(held[0], now, "nacked")

    def next_deadline(self) -> float | None:
        """When the earliest job in flight times out (None: nothing in flight)."""
        jobs = self._jobs
        if not jobs:
            return None
        _, deadline = jobs[next(iter(jobs))]
        return deadline

    def expire(self, now: float) -> list[Returned]:
        """Take back every job whose deadline has passed (a late ack is then refused)."""
        returned = []
        jobs = self._jobs
        while jobs:
            delivery_id = next(iter(jobs))
            job, deadline = jobs[delivery_id]
            if deadline > now:
                break
            del jobs[delivery_id]
            self.timed_out += 1
            returned.append(self._returned(job, now, "timed out"))
        return returned

    def give_back_all(self, now: float) -> list[Returned]:
        """The consumer left: every job it held comes back at once, oldest first."""
        held = list(self._jobs.values())
        self._jobs.clear()
        return [self._returned(job, now, "consumer left") for job, _ in held]

    def jobs(self) -> list[Job]:
        """The jobs in flight, oldest first."""
        return [job for job, _ in self._jobs.values()]

    def _returned(self, job: Job, now: float, why: Outcome) -> Returned:
        job.history.append((self._wall_clock(), self.consumer, why))
        return Returned(job, dead=job.deliveries >= self.max_deliveries)
