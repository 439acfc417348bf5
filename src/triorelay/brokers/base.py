"""The broker interface, in primitive terms: channel names, modes and payloads.

A broker carries what producers publish to every relay that has consumers on the channel.
It knows nothing of the hub, its channels or its connections: it is built with a
:data:`Deliver` callback and hands everything it brings to this relay back through it.
Data moves one way: a producer's route → :meth:`Hub.publish <triorelay.hub.Hub.publish>` →
:meth:`Broker.publish` → (the broker's transport) → ``deliver`` → the hub's channel → each
consumer's buffer → the consumer's route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import trio

from triorelay.envelopes import Payload
from triorelay.framing import Position, RecoveryReason
from triorelay.settings import Mode
from triorelay.tracing import Trace


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages of a channel may have been lost on their way to this relay.

    ``count`` is how many when the broker knows (a jump in offsets), ``None`` when it cannot
    (Redis restarted and lost what it held). ``epoch``: the channel's new epoch when its
    history was lost (positions from before it are void), else ``None``.
    """

    count: int | None
    reason: str
    epoch: str | None = None


Deliver = Callable[[str, "Payload | Gap", int, str, "Trace | None"], Awaitable[None]]
"""``await deliver(channel_name, payload_or_gap, offset, epoch, trace)``: hand a message (or a
gap) to this relay's consumers of the channel, with the message's position (a gap's offset is
0; queue messages have their sequence number as the offset and the epoch ``""``) and, for a
traced message, its stage times so far (:mod:`triorelay.tracing`). It may wait (a ``block``
policy, a full local queue): that is backpressure on whatever feeds it."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a resuming consumer gets (:meth:`Broker.recover`).

    ``position`` is the channel's position now (its epoch and last offset): the live stream
    goes on after it. ``recovered``: ``entries`` are every message after the consumer's
    position up to ``position``, as ``(offset, payload)`` in order; otherwise ``entries`` is
    empty and ``reason`` says why.
    """

    position: Position
    recovered: bool
    reason: RecoveryReason | None = None
    entries: tuple[tuple[int, Payload], ...] = ()


BrokerFactory = Callable[[Deliver], "Broker"]
"""Makes a broker that delivers through the given callback (the hub passes its own)."""


class QueueSource(Protocol):
    """Where a queue channel's consumers take messages when the broker holds the queue (Redis).

    Each message goes to exactly one consumer; it stays the broker's until acknowledged, so a
    consumer that leaves, or a relay that dies, before its client has the message gives it
    back for another consumer.
    """

    async def take(self, consumer_id: int) -> tuple[Payload, object]:
        """Wait for the next message; return it with the receipt that acknowledges it."""
        ...

    async def acknowledge(self, receipt: object) -> None:
        """The message is handed to the consumer's socket: it is delivered."""
        ...

    def release(self, consumer_id: int) -> None:
        """The consumer left: give back what it took and did not acknowledge (in the background)."""
        ...


Outcome = Literal["timed out", "nacked", "consumer left", "relay died"]
"""Why a job came back without an ack (its history says, for the dead-letter channel)."""


@dataclass(slots=True)
class Job:
    """A message of an acked queue channel (``ack = "explicit"``), with what happened to it.

    ``deliveries`` counts the times it was handed out (the one in flight included);
    ``history`` each time it came back, as ``(Unix time, consumer, outcome)``; ``receipt``
    is the broker's handle on it (Redis: the stream entry), ``None`` for the memory queue.
    """

    payload: Payload
    size: int
    #: The channel's sequence number, given when it was published.
    seq: int
    deliveries: int = 0
    history: list[tuple[float, str, Outcome]] = field(default_factory=list)
    receipt: object = None


class JobSource(Protocol):
    """Where an acked queue channel's consumers take jobs, and settle them.

    A job taken is the consumer's until it is settled (acked) or given back (nacked, timed
    out, its consumer left); a relay that dies holding jobs has them given back by another
    relay after ``redis_claim_idle_seconds`` (Redis: their leases are no longer renewed),
    counted as a delivery and with ``relay died`` in their history. The memory broker's
    source is the hub's :class:`~triorelay.hub.jobs.JobQueue`; the Redis broker's keeps the
    jobs in the channel's stream (``brokers/redis/jobs.py``).

    The deadlines, ``max_in_flight`` and the dead-letter decision are the consumer's
    (:class:`~triorelay.hub.acks.InFlight`): a source only stores.
    """

    async def take(self, consumer_id: int) -> Job:
        """Wait for the next job ready to be handed out (new, or come back with its delay
        over): it is then this consumer's. Raises :class:`trio.EndOfChannel` once the source
        is closed (shutdown), :class:`~triorelay.errors.BrokerUnavailable` never: it waits
        for the broker to come back."""
        ...

    async def settle(self, jobs: list[Job]) -> None:
        """The consumer acked ``jobs``: they are done and forgotten (one round trip). Raises
        :class:`~triorelay.errors.BrokerUnavailable` if that cannot be done: the jobs then
        come back after the claim time (delivered at least once)."""
        ...

    def give_back(self, job: Job, delay_seconds: float) -> None:
        """``job`` came back (its ``deliveries`` and ``history`` as they are now): hand it out
        again once ``delay_seconds`` have passed. Returns at once; a broker-held source
        writes it in the background (retried while the broker is down)."""
        ...

    def release(self, consumer_id: int) -> None:
        """The consumer left: anything it took and neither settled nor gave back returns
        (in the background)."""
        ...


class Broker(Protocol):
    """Carries each published message to every relay with consumers on its channel.

    Contract:

    - :meth:`publish` returns once the messages are accepted (their sequence numbers are
      final): handed to ``deliver`` for the memory broker, stored by Redis for the Redis
      broker. It may block for backpressure and raises on failure
      (:class:`~triorelay.errors.BrokerUnavailable`), so a producer's ack never covers a lost
      message.
    - Sequence numbers (a broadcast message's *offset*) are per channel, from 1,
      contiguous, in the order messages are accepted; a publish of several payloads appends
      them in order. With the channel's epoch they are the message's position; a lost history
      (its state dropped, Redis lost its keys) starts a new epoch, and offsets from 1 again.
    - A broadcast channel keeps its last messages within its history bounds
      (``history_*``), and :meth:`recover` reads them for a consumer resuming from a position
      (``docs/topics/delivery.md``).
    - Watching is what promises delivery: the hub calls :meth:`watch` when a broadcast
      channel gets its first local consumer and :meth:`unwatch` when it loses its last one;
      the route awaits :meth:`wait_watching` before accepting a consumer, and from then on
      every message published on the channel reaches ``deliver``, in order, under the
      channel's name, text as ``str`` and binary as ``bytes``. A channel that is not watched
      is promised nothing: the Redis broker does not read it, the memory broker delivers
      every publish anyway (publishing is delivering), and the hub ignores deliveries for
      channels it does not hold.
    - Queue channels the broker holds itself (:meth:`queue` returns a source) are taken
      from it, each message by exactly one consumer, not delivered; when :meth:`queue`
      returns ``None`` queue messages are delivered and the hub queues them.
    - :meth:`run` owns any background work (listeners, reconnection) for the app's lifetime,
      signals readiness with ``task_status.started()`` (:attr:`ready` is then true if the
      backend is reachable) and ends when cancelled.
    - :meth:`statistics` is a JSON object with at least ``kind`` and ``ready``.

    ``tests/brokers/test_contract.py`` runs these cases on every broker.
    """

    async def publish(
        self,
        name: str,
        mode: Mode,
        payloads: list[Payload],
        published: list[int],
        traces: dict[int, Trace] | None = None,
    ) -> None:
        """Publish ``payloads`` on channel ``name`` in order, appending each one's sequence
        number to ``published`` as it is accepted: if this raises, ``published`` holds the
        accepted ones (the first ``len(published)`` payloads). A networked broker takes them
        in one round trip where it can. ``traces``: the traced payloads' (by index) stage
        times, stamped with their acceptance and carried to ``deliver`` (broadcast only)."""
        ...

    async def recover(self, name: str, since: Position | None) -> Recovery:
        """The channel's position now and, for ``since``, the messages after it (or why not).

        Called once the consumer is attached and :meth:`wait_watching` returned, so that
        the live stream covers everything after the returned position (the route skips live
        messages up to it: no gap and no duplicate at the seam). Raises
        :class:`~triorelay.errors.BrokerUnavailable` if the history cannot be read.
        """
        ...

    def queue(self, name: str) -> QueueSource | None:
        """The broker-held queue of queue channel ``name``; ``None``: the hub queues locally."""
        ...

    def jobs(self, name: str) -> JobSource | None:
        """The broker-held jobs of acked queue channel ``name``; ``None``: the hub's own."""
        ...

    def watch(self, name: str) -> None:
        """Channel ``name`` has local consumers: deliver its messages to this relay."""
        ...

    def unwatch(self, name: str) -> None:
        """Channel ``name`` has no local consumers any more."""
        ...

    async def wait_watching(self, name: str) -> None:
        """Return once messages published on ``name`` from now on reach this relay.

        Raises :class:`~triorelay.errors.BrokerUnavailable` if that cannot happen in time.
        """
        ...

    def forget(self, name: str) -> None:
        """The hub dropped channel ``name`` (nobody attached, nothing buffered): let go of any
        state the broker keeps for it in this process."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Do the broker's background work (deliver other relays' messages) until cancelled."""
        ...

    #: True when :meth:`publish` delivers to this relay's channel before it returns (memory),
    #: so a local channel's room decides whether a publish waits.
    delivers_locally: bool

    #: This relay's name in the broker: Redis consumer names and job histories
    #: (``<node>:<connection id>``) use it.
    node: str

    @property
    def ready(self) -> bool:
        """False while the broker cannot accept messages (for ``/healthz``)."""
        ...

    def want_ready(self) -> None:
        """A client was refused because the broker is not ready: reconnect without waiting
        out a backoff (so the next client is not refused for long after it is back)."""
        ...

    def statistics(self) -> dict[str, Any]:
        """The broker's counters, for ``/healthz``."""
        ...
