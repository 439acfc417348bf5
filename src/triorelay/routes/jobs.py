"""A framed consumer of an acked queue channel: jobs out, acks and nacks in.

``/ws/consumer/{channel}`` with the ``triorelay.v1`` subprotocol on a channel whose rule says
``ack = "explicit"`` (``docs/topics/queue-delivery.md``). The connection runs three things:

- the **writer** takes a job whenever the consumer holds fewer than ``max_in_flight``, and
  sends it as a job frame with its delivery id and count (:func:`framing.encode_job`);
- the **client's frames** (read by Hypercorn's reader task where the fast path allows) are
  acks, which settle their jobs in one broker round trip per read, and nacks, which give the
  job back after the redelivery backoff (or the delay the nack asks for); anything else is
  answered ``refused`` and changes nothing;
- the **timer** takes back jobs held past ``ack_timeout_seconds``: they go to another
  consumer, and a late ack is refused.

A job that comes back after ``max_deliveries`` deliveries is published on the dead-letter
channel instead, with its history (:func:`framing.dead_letter`), then settled. When the
consumer leaves, cleanly or not, everything it held goes back at once.
"""

from __future__ import annotations

import logging

import trio

from triorelay import framing
from triorelay.brokers.base import Job, JobSource
from triorelay.envelopes import Payload
from triorelay.errors import BrokerUnavailable, RequestError, ServiceError
from triorelay.hub import Consumer
from triorelay.hub.acks import InFlight, Returned
from triorelay.hub.jobs import JobReader
from triorelay.hub.statistics import JobCounters
from triorelay.routes.session import Session
from triorelay.settings import ChannelConfig

log = logging.getLogger(__name__)

DEAD_REASON = "max_deliveries"
"""Why a job is on the dead-letter channel: it was handed out ``max_deliveries`` times."""


class JobConsumer:
    """One framed consumer of an acked queue channel (see the module)."""

    def __init__(self, session: Session[Consumer], config: ChannelConfig) -> None:
        self.session = session
        self.consumer = session.connection
        reader = self.consumer.inbox
        assert isinstance(reader, JobReader)
        self.reader = reader
        self.source: JobSource = reader.source
        self.config = config
        self.channel = self.consumer.channel_name
        hub = session.relay.hub
        counters = self.consumer.channel_counters.jobs
        assert counters is not None  # an acked queue channel's
        self.counters: JobCounters = counters
        self.in_flight = InFlight(
            f"{hub.broker.node}:{self.consumer.id}",
            max_in_flight=config.max_in_flight,
            ack_timeout_seconds=config.ack_timeout_seconds,
            max_deliveries=config.max_deliveries,
        )
        #: Jobs being published on the dead-letter channel: they still count as in flight
        #: (against ``max_in_flight``, and in the counts) until that is done.
        self._burying = 0
        #: Set when a job was settled or handed out: the writer and the timer look again.
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        """Serve the consumer until it leaves or the hub ends its stream; then give back
        whatever it still holds."""
        session = self.session
        opening = framing.subscribed_jobs(
            self.channel,
            max_in_flight=self.config.max_in_flight,
            ack_timeout_seconds=self.config.ack_timeout_seconds,
            max_deliveries=self.config.max_deliveries,
        )
        try:
            if not await session.socket.send_many([opening]):
                self.consumer.disconnected = True
                return
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._read_client)
                nursery.start_soon(self._expire)
                await self._write()
                nursery.cancel_scope.cancel()
        finally:
            self._give_back_all()

    # -- out: jobs --

    async def _write(self) -> None:
        in_flight, socket, counters = self.in_flight, self.session.socket, self.counters
        while True:
            while len(in_flight) + self._burying >= self.config.max_in_flight:
                await self._wait_for_change()
            try:
                job = await self.reader.take()
            except trio.EndOfChannel:
                return  # the hub ended the stream: shutdown
            if job.deliveries >= self.config.max_deliveries:
                # Used up elsewhere (given back by a consumer that left, or a dead relay's).
                counters.count("in_flight")
                self._bury(job)
                continue
            delivery_id = in_flight.hand_out(job, trio.current_time())
            counters.count("in_flight")
            if job.deliveries > 1:
                counters.count("redelivered")
            self.consumer.count_taken()
            self._wake()
            frame = framing.encode_job(self.channel, delivery_id, job.deliveries, job.payload)
            if not await socket.send_many([frame]):
                return  # the client is gone; what it holds goes back in run()

    # -- in: acks and nacks --

    async def _read_client(self) -> None:
        await self.session.read_inbound(self._on_frames)
        self.consumer.disconnected = True
        self.session.scope.cancel()

    async def _on_frames(self, payloads: list[Payload]) -> None:
        """Act on one read's frames: settle the acked jobs together, give back the nacked."""
        if self.session.refreshable:
            payloads = await self.session.take_controls(payloads)
        now = trio.current_time()
        acked: list[Job] = []
        refusals: list[Payload] = []
        for payload in payloads:
            try:
                settle = framing.read_settle(payload) if isinstance(payload, str) else None
            except ValueError:
                settle = None
            if settle is None:
                self.counters.count("refused")
                refusals.append(framing.refused(self.channel, "unknown", None, "malformed"))
                continue
            if settle.kind == "ack":
                job = self.in_flight.ack(settle.delivery_id)
                if job is not None:
                    acked.append(job)
                    continue
            else:
                returned = self.in_flight.nack(settle.delivery_id, now)
                if returned is not None:
                    self.counters.count("nacked")
                    self._come_back(returned, settle.delay_seconds)
                    continue
            self.counters.count("refused")
            refusals.append(
                framing.refused(self.channel, settle.kind, settle.delivery_id, "not_in_flight")
            )
        if acked:
            self.counters.count("acked", len(acked))
            self.counters.count("in_flight", -len(acked))
            self._wake()
            try:
                await self.source.settle(acked)
            except BrokerUnavailable as error:
                # The broker gives them back after its claim time: delivered at least once.
                log.warning("could not settle %d acked jobs: %s", len(acked), error)
        if refusals:
            # Waiting for the consumer to read its refusals is not the relay holding its
            # reading back: one that never reads is a silent peer, for liveness to close.
            self.session.release()
            await self.session.socket.send_many(refusals)

    # -- timeouts, and jobs coming back --

    async def _expire(self) -> None:
        in_flight = self.in_flight
        while True:
            deadline = in_flight.next_deadline()
            if deadline is None:
                await self._wait_for_change()
                continue
            await trio.sleep_until(deadline)
            returned = in_flight.expire(trio.current_time())
            self.counters.count("timed_out", len(returned))
            for job in returned:
                self._come_back(job, None)

    def _come_back(self, returned: Returned, delay_seconds: float | None) -> None:
        """A job the consumer held is no longer its: back to the queue, or to the dead."""
        job = returned.job
        if returned.dead:
            self._bury(job)
            return
        self.counters.count("in_flight", -1)
        self._wake()
        if delay_seconds is None:
            delay_seconds = self.config.redelivery_delay(job.deliveries)
        self.source.give_back(job, delay_seconds)

    def _give_back_all(self) -> None:
        """The consumer left: everything it held goes back at once (a job that used up its
        deliveries is dead-lettered by whoever takes it next)."""
        returned = self.in_flight.give_back_all(trio.current_time())
        self.counters.count("in_flight", -len(returned))
        for job in returned:
            self.source.give_back(job.job, 0.0)

    def _bury(self, job: Job) -> None:
        """Dead-letter ``job`` (counted in flight until that is done), in a task of the
        consumer's nursery; when the consumer is leaving, give it back instead: the next
        consumer to take it buries it."""
        nursery = self._nursery
        if nursery is not None and not nursery.cancel_scope.cancel_called:
            self._burying += 1
            try:
                nursery.start_soon(self._dead_letter, job)
                return
            except RuntimeError:  # the nursery has closed: the consumer is leaving
                self._burying -= 1
        self.counters.count("in_flight", -1)
        self._wake()
        self.source.give_back(job, 0.0)

    async def _dead_letter(self, job: Job) -> None:
        try:
            await self._publish_dead(job)
        finally:
            self._burying -= 1
            self.counters.count("in_flight", -1)
            self._wake()

    async def _publish_dead(self, job: Job) -> None:
        """Publish ``job`` on the dead-letter channel, then settle it; if the publish fails
        (or the consumer leaves before it is accepted), the job goes back instead: never
        lost, and never both dead and back once the publish is accepted."""
        dead = self.config.dead_letter_of(self.channel)
        history = [
            {"at": at, "consumer": consumer, "outcome": outcome}
            for at, consumer, outcome in job.history
        ]
        relay = self.session.relay
        message = framing.dead_letter(
            self.channel,
            job.payload,
            seq=job.seq,
            deliveries=job.deliveries,
            reason=DEAD_REASON,
            history=history,
            max_bytes=relay.settings.max_message_bytes,
        )
        published: list[int] = []
        try:
            with relay.hub.attach_producer(dead) as producer:
                await producer.publish_many([message], published)
        except (RequestError, ServiceError, trio.ClosedResourceError) as error:
            if not published:
                log.warning(
                    "job %d of %s not dead-lettered on %s: %s", job.seq, self.channel, dead, error
                )
                self.source.give_back(job, self.config.redelivery_delay(job.deliveries))
                return
        except BaseException:
            if not published:
                self.source.give_back(job, 0.0)
            else:  # published, then cancelled: it is dead, settle it before leaving
                await self._settle_dead(job)
            raise
        await self._settle_dead(job)

    async def _settle_dead(self, job: Job) -> None:
        self.counters.count("dead_lettered")
        # Shielded (bounded): a dead job left unsettled would come back to life.
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(self.session.relay.settings.broker_timeout_seconds),
        ):
            try:
                await self.source.settle([job])
            except BrokerUnavailable as error:
                log.warning("a dead-lettered job was not settled (it may come back): %s", error)

    # -- waking --

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_for_change(self) -> None:
        await self._changed.wait()
