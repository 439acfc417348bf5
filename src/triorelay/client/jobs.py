"""``consume_jobs()``: the jobs of an acked queue channel, each to ack or nack, across
reconnections; and reading what its dead-letter channel gets.

A channel whose rule says ``mode = "queue"`` and ``ack = "explicit"`` hands each job to one
framed consumer and keeps it in flight until that consumer acks it (done) or nacks it (give
it back); a job not acked within the rule's ``ack_timeout_seconds``, or held by a consumer
whose connection ends, goes to another consumer, its delivery count up by one, and after
``max_deliveries`` deliveries to the dead-letter channel. Delivery is at least once: a job
may come again after it was done, if its ack was lost (``docs/how-to/run-a-worker-pool.md``;
the frames are those of :mod:`triorelay.framing`, the reference ``docs/reference/client.md``).

:class:`JobState` reads the frames (pure, no I/O); :func:`consume_jobs` runs a
:class:`~triorelay.client.connector.Connector` with it and gives the jobs to the caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from triorelay.client.backoff import Backoff
from triorelay.client.connection import (
    CLOSE_TIMEOUT_SECONDS,
    CONNECT_TIMEOUT_SECONDS,
    MAX_FRAME_BYTES,
    Token,
    endpoint_url,
)
from triorelay.client.connector import Connector, Entry, Failure
from triorelay.client.errors import ProtocolError
from triorelay.client.stream import ReceivedMessage, Reconnecting, decode_frame, read_control
from triorelay.envelopes import Payload
from triorelay.framing import MAX_NACK_DELAY_SECONDS, Control, Job
from triorelay.framing import ack as ack_frame
from triorelay.framing import nack as nack_frame
from triorelay.framing import read_dead_letter as dead_letter_fields

BUFFER_JOBS = 16
"""Default bound of the buffer between a job consumer's connection and its reader (the
relay's default ``max_in_flight``: it sends no more than that before an ack)."""


@dataclass(frozen=True, slots=True)
class JobsSubscribed:
    """A connection's first frame: the rules of the channel's acks.

    The relay sends at most ``max_in_flight`` jobs not yet acked or nacked; a job held
    ``ack_timeout_seconds`` goes to another consumer (a later ack is refused); a job handed
    out ``max_deliveries`` times goes to the dead-letter channel.
    """

    channel: str
    max_in_flight: int
    ack_timeout_seconds: float
    max_deliveries: int


@dataclass(frozen=True, slots=True)
class Refused:
    """The relay refused this consumer's ``kind`` (``ack`` or ``nack``, ``unknown`` for a
    frame it could not read) of ``delivery_id``: ``reason`` is ``not_in_flight`` (the job timed
    out and went to another consumer, or was already settled) or ``malformed``."""

    channel: str
    kind: str
    delivery_id: int | None
    reason: str


JobEvent = JobsSubscribed | Refused | Reconnecting
"""What a job consumer reports besides jobs, in stream order."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A job frame as read, with the (trio) time by which the relay takes the job back if no
    ack or nack came: ``ack_timeout_seconds`` after it was read."""

    job: Job
    deadline: float


class JobState:
    """One job consumer's connections, and the frames it lets through. Pure, no I/O.

    Call :meth:`connected` when a connection opens, then :meth:`receive` with each frame.
    ``generation`` numbers the connections (from 1): a job's ack is worth sending only on the
    connection that delivered it. ``clock`` gives the time a job is read (``trio.current_time``
    by default).
    """

    def __init__(self, channel: str, clock: Callable[[], float] = trio.current_time) -> None:
        self.channel = channel
        self.clock = clock
        #: The current connection delivered its ``subscribed`` frame.
        self.subscribed = False
        #: Connections opened (their handshake done); the current one's number.
        self.generation = 0
        #: The current connection's rules (from its ``subscribed`` frame).
        self.rules: JobsSubscribed | None = None

    def query(self) -> Mapping[str, str]:
        """Jobs have no positions: every connection starts with what the queue holds."""
        return {}

    def connected(self) -> None:
        """A new connection opened: its first frame must be ``subscribed``."""
        self.subscribed = False
        self.rules = None
        self.generation += 1

    def stamp(self) -> int:
        """The connection an item came on."""
        return self.generation

    def receive(self, frame: Payload) -> Delivery | JobsSubscribed | Refused | None:
        """What ``frame`` means for the caller; None when it has nothing to show.

        Raises ProtocolError for a malformed frame, a job before ``subscribed``, or a
        ``subscribed`` that is not an acked queue's (the channel's rule does not say
        ``ack = "explicit"``: its consumers get messages, see :func:`subscribe`).
        """
        decoded = decode_frame(frame)
        if isinstance(decoded, Job):
            if decoded.channel != self.channel:
                return None  # several channels per connection are for a later version
            if self.rules is None:
                raise ProtocolError("a job came before the subscribed frame")
            return Delivery(decoded, self.clock() + self.rules.ack_timeout_seconds)
        if isinstance(decoded, Control):
            readers: Mapping[str, Callable[[dict[str, Any]], JobsSubscribed | Refused]] = {
                "subscribed": self._subscribed,
                "refused": self._refused,
            }
            return read_control(decoded, self.channel, readers)
        return None  # messages and frame kinds from a later version

    def _refused(self, fields: dict[str, Any]) -> Refused:
        delivery_id = fields["id"]
        if delivery_id is not None and type(delivery_id) is not int:
            raise TypeError(f"id must be a whole number or null, not {delivery_id!r}")
        return Refused(self.channel, str(fields["kind"]), delivery_id, str(fields["reason"]))

    def _subscribed(self, fields: dict[str, Any]) -> JobsSubscribed:
        if fields.get("ack") != "explicit":
            raise ProtocolError(
                f"channel {self.channel!r} is not an acked queue (its rule needs mode = "
                '"queue" and ack = "explicit"); subscribe() reads other channels'
            )
        timeout = fields["ack_timeout_seconds"]
        if type(timeout) not in (int, float) or not timeout > 0:
            raise ValueError(f"ack_timeout_seconds {timeout!r}")
        rules = JobsSubscribed(
            self.channel,
            max_in_flight=_positive(fields["max_in_flight"]),
            ack_timeout_seconds=float(timeout),
            max_deliveries=_positive(fields["max_deliveries"]),
        )
        self.rules, self.subscribed = rules, True
        return rules


def _positive(value: object) -> int:
    if type(value) is not int or value < 1:
        raise TypeError(f"expected a positive whole number, got {value!r}")
    return value


Settled = Literal["ack", "nack"]


class ReceivedJob:
    """A job of the channel, to :meth:`ack` or :meth:`nack` once (see :func:`consume_jobs`).

    ``payload`` is as it was published (``str`` for text, ``bytes`` for binary);
    ``deliveries`` counts this delivery (1 the first time); ``delivery_id`` names this
    delivery on its connection; ``deadline`` is the trio time past which the relay gives the
    job to another consumer (``ack_timeout_seconds`` after it was read: the relay's clock
    started a little earlier); ``settled`` says whether it was acked or nacked.
    """

    __slots__ = (
        "_consumer",
        "_generation",
        "channel",
        "deadline",
        "deliveries",
        "delivery_id",
        "payload",
        "settled",
    )

    def __init__(self, delivery: Delivery, generation: int, consumer: Jobs) -> None:
        job = delivery.job
        self.channel = job.channel
        self.delivery_id = job.delivery_id
        self.deliveries = job.deliveries
        self.payload: Payload = job.payload
        self.deadline = delivery.deadline
        self.settled: Settled | None = None
        self._generation = generation
        self._consumer = consumer

    @property
    def redelivered(self) -> bool:
        """The job was handed out before (perhaps done, if that consumer's ack was lost)."""
        return self.deliveries > 1

    async def ack(self) -> bool:
        """Tell the relay the job is done: it forgets it.

        Returns True once the ack is written on the connection that delivered the job; False
        when that connection has ended, in which case nothing is sent (the relay gave the job
        back when the connection ended: it comes again, to this consumer or another, with
        ``deliveries`` one higher). A True ack can still be refused (the job timed out
        meanwhile): that comes as a :class:`Refused` event. Raises RuntimeError if the job
        was already acked or nacked.
        """
        return await self._consumer._settle(self, "ack", ack_frame(self.delivery_id))

    async def nack(self, delay_seconds: float | None = None) -> bool:
        """Give the job back, to be handed out again after ``delay_seconds`` (None: the
        channel's redelivery backoff; 0: at once), perhaps to another consumer.

        Returns as :meth:`ack` does. Raises ValueError for a delay below 0 or above a day,
        RuntimeError if the job was already acked or nacked.
        """
        if delay_seconds is not None and not 0 <= delay_seconds <= MAX_NACK_DELAY_SECONDS:
            raise ValueError(f"delay_seconds must be from 0 to {MAX_NACK_DELAY_SECONDS:g}")
        frame = nack_frame(self.delivery_id, delay_seconds)
        return await self._consumer._settle(self, "nack", frame)

    def __repr__(self) -> str:
        return (
            f"<ReceivedJob {self.channel} id={self.delivery_id} deliveries={self.deliveries}"
            f" settled={self.settled}>"
        )


@dataclass(frozen=True, slots=True)
class JobsStatistics:
    """Counts of a job consumer so far.

    ``connections`` opened; ``received`` jobs given to the reader; ``acked`` and ``nacked``
    sent; ``refused`` by the relay (:class:`Refused`); ``unsent`` acks and nacks not sent
    because the job's connection had ended; ``dropped`` jobs of an ended connection thrown
    away before the reader took them (the relay gave them back); ``buffered`` jobs and events
    waiting for the reader (at most ``buffer_jobs``).
    """

    connections: int
    received: int
    acked: int
    nacked: int
    refused: int
    unsent: int
    dropped: int
    buffered: int
    buffer_jobs: int


_Item = Entry[Delivery | JobsSubscribed | Refused, int]


class Jobs:
    """The reading end of :func:`consume_jobs`: ``async for job in jobs``.

    ``rules`` are the current connection's (its ``subscribed`` frame), None before the
    first. Several tasks may read one ``Jobs`` at once: each job goes to one of them.
    """

    def __init__(
        self,
        channel: str,
        receive: trio.MemoryReceiveChannel[_Item],
        state: JobState,
        on_event: Callable[[JobEvent], None] | None,
    ) -> None:
        self.channel = channel
        self.rules: JobsSubscribed | None = None
        self._receive = receive
        self._state = state
        self._on_event = on_event
        self._failure: Exception | None = None
        self._connector: Connector[Delivery | JobsSubscribed | Refused, int] | None = None
        self._counts = dict.fromkeys(("received", "ack", "nack", "refused", "unsent", "dropped"), 0)

    def reconnect(self) -> None:
        """Close the current connection and make a new one at once; the relay gives back
        every job the old one held (their acks are no longer sent: see
        :meth:`ReceivedJob.ack`). Does nothing while not connected."""
        if self._connector is not None:
            self._connector.reconnect()

    def __aiter__(self) -> Jobs:
        return self

    async def __anext__(self) -> ReceivedJob:
        """The next job.

        Blocks until one arrives (reconnecting meanwhile, for as long as it takes); events
        that come before it are passed to ``on_event`` first, in this task. Jobs of a
        connection that has ended by the time they would be returned are dropped (counted in
        ``statistics().dropped``): the relay gave them back. Raises what ended the consumer
        for good, again on each later call.
        """
        while True:
            if self._failure is not None:
                raise self._failure
            try:
                item, generation = await self._receive.receive()
            except trio.EndOfChannel:
                if self._failure is not None:  # another task took it: this one raises it too
                    raise self._failure from None
                raise StopAsyncIteration from None
            if isinstance(item, Failure):
                self._failure = item.error
                continue
            assert generation is not None
            if isinstance(item, Delivery):
                if self._live(generation) is None:
                    self._counts["dropped"] += 1
                    continue
                self._counts["received"] += 1
                return ReceivedJob(item, generation, self)
            if isinstance(item, JobsSubscribed):
                self.rules = item
            elif isinstance(item, Refused):
                self._counts["refused"] += 1
            if self._on_event is not None:
                self._on_event(item)

    def statistics(self) -> JobsStatistics:
        """Counts of this consumer so far."""
        channel, counts = self._receive.statistics(), self._counts
        return JobsStatistics(
            connections=self._state.generation,
            received=counts["received"],
            acked=counts["ack"],
            nacked=counts["nack"],
            refused=counts["refused"],
            unsent=counts["unsent"],
            dropped=counts["dropped"],
            buffered=channel.current_buffer_used,
            buffer_jobs=int(channel.max_buffer_size),
        )

    def _live(self, generation: int) -> WebSocketConnection | None:
        """The connection of ``generation`` if it is still open, else None."""
        connector = self._connector
        ws = None if connector is None else connector.ws
        if generation != self._state.generation or ws is None or ws.closed is not None:
            return None
        return ws

    async def _settle(self, job: ReceivedJob, kind: Settled, frame: str) -> bool:
        if job.settled is not None:
            raise RuntimeError(
                f"job {job.delivery_id} of {job.channel} was already {job.settled}ed"
            )
        job.settled = kind
        ws = self._live(job._generation)
        if ws is not None:
            assert self._connector is not None
            try:
                async with self._connector.send_lock:
                    await ws.send_message(frame)
            except ConnectionClosed:
                pass
            else:
                self._counts[kind] += 1
                return True
        self._counts["unsent"] += 1
        return False


@contextlib.asynccontextmanager
async def consume_jobs(
    url: str,
    channel: str,
    *,
    token: Token | None = None,
    on_event: Callable[[JobEvent], None] | None = None,
    buffer_jobs: int = BUFFER_JOBS,
    backoff: Backoff = Backoff(),  # noqa: B008 - frozen, shared safely
    token_refresh_seconds: float | None = None,
    ping_interval_seconds: float | None = 20.0,
    ping_timeout_seconds: float = 20.0,
    connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
    close_timeout_seconds: float = CLOSE_TIMEOUT_SECONDS,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> AsyncIterator[Jobs]:
    """Consume the jobs of ``channel`` (an acked queue) on the relay at ``url``.

    ``async with consume_jobs(url, "jobs") as jobs: async for job in jobs:`` gives each job
    handed to this consumer (:class:`ReceivedJob`); ``await job.ack()`` when it is done, or
    ``await job.nack(delay_seconds=...)`` to give it back. A background task holds the
    connection (``/ws/consumer/{channel}``, framing ``triorelay.v1``) and reconnects after a
    ``backoff`` delay whenever it ends, as :func:`~triorelay.client.subscribe` does (same
    close codes, refusals, keepalive and tokens).

    - **Connections and acks.** When a connection ends the relay gives back every job it
      held, not acked: they come again, perhaps to another consumer. So the client forgets
      them: an ack or nack of a job of an ended connection is not sent (it would name
      another job on the next connection) and returns False; the jobs of an ended
      connection still in the buffer are dropped.
    - **Backpressure.** The relay sends at most the rule's ``max_in_flight`` jobs not acked
      or nacked; the client buffers at most ``buffer_jobs`` jobs and events for the reader,
      and stops reading when they are not taken. A job waiting in the buffer is in flight:
      its ``ack_timeout_seconds`` runs.
    - **Refusals** (a late ack, after the job went to another consumer) come as
      :class:`Refused` events and count in ``statistics().refused``.
    - ``on_event(event)``: called in the reader's task with each :data:`JobEvent`
      (``JobsSubscribed``, ``Refused``, ``Reconnecting``) in stream order; must not block.

    What ends it for good, raised by the ``async for``: as for ``subscribe()``, and
    ProtocolError when the channel is not an acked queue. Leaving the block closes the
    connection with 1000: the relay gives back what was not acked.

    Raises ValueError at once for a malformed ``url`` or bound.
    """
    endpoint_url(url, "/", {})  # a bad URL fails here, not in the background
    if buffer_jobs < 1:
        raise ValueError("buffer_jobs must be at least 1")
    state = JobState(channel)
    send, receive = trio.open_memory_channel[_Item](buffer_jobs)
    jobs = Jobs(channel, receive, state, on_event)
    connector = Connector[Delivery | JobsSubscribed | Refused, int](
        url,
        state,
        send,
        token=token,
        backoff=backoff,
        token_refresh_seconds=token_refresh_seconds,
        ping_interval_seconds=ping_interval_seconds,
        ping_timeout_seconds=ping_timeout_seconds,
        connect_timeout_seconds=connect_timeout_seconds,
        close_timeout_seconds=close_timeout_seconds,
        max_frame_bytes=max_frame_bytes,
    )
    jobs._connector = connector
    async with connector.running(receive):
        yield jobs


# -- dead letters --


@dataclass(frozen=True, slots=True)
class DeliveryEnd:
    """How one delivery of a dead job ended: ``at`` (Unix time), the ``consumer`` it was
    handed to (``node:id``), and the ``outcome`` (``nacked``, ``timed out``, ``consumer
    left``, ``relay died``)."""

    at: float
    consumer: str
    outcome: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job the relay gave up on, as its dead-letter channel (``<channel>.dead`` by
    default) publishes it: the job's ``channel``, its sequence number there (``seq``), its
    ``payload`` as published, its ``deliveries``, why it died (``reason``:
    ``max_deliveries``) and each delivery's end (``history``). ``payload`` is None, and
    ``payload_bytes`` its size, for a job the letter could not hold within the relay's
    ``max_message_bytes`` (base64 and JSON's escapes make a letter larger than its job)."""

    channel: str
    seq: int
    payload: Payload | None
    deliveries: int
    reason: str
    history: tuple[DeliveryEnd, ...]
    payload_bytes: int | None = None


def read_dead_letter(message: ReceivedMessage | Payload) -> DeadLetter:
    """Read a message of a dead-letter channel (a :class:`ReceivedMessage` of
    :func:`~triorelay.client.subscribe`, or the payload a raw consumer got).

    Raises ValueError for a message that is not a dead letter.
    """
    payload = message.payload if isinstance(message, ReceivedMessage) else message
    try:
        text = payload if isinstance(payload, str) else payload.decode()
        job, fields = dead_letter_fields(text)
        history = tuple(
            DeliveryEnd(float(end["at"]), str(end["consumer"]), str(end["outcome"]))
            for end in fields["history"]
        )
        return DeadLetter(
            channel=str(fields["channel"]),
            seq=int(fields["seq"]),
            payload=job,
            deliveries=int(fields["deliveries"]),
            reason=str(fields["reason"]),
            history=history,
            payload_bytes=None if job is not None else int(fields["payload_bytes"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"not a dead letter: {error!r}") from None
