"""The broker interface the hub reaches messages through."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import trio

if TYPE_CHECKING:
    from triorelay.connections import Payload
    from triorelay.hub import Channel, Hub


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


class Broker(Protocol):
    """Carries each published message to every hub with consumers on its channel.

    Contract:

    - :meth:`publish` returns once the message is accepted (its sequence number is final):
      delivered into the local channel for the memory broker, stored by Redis for the Redis
      broker. It may block for backpressure and raises on failure
      (:class:`~triorelay.errors.BrokerUnavailable`), so a producer's ack never covers a lost
      message.
    - The hub calls :meth:`watch` when a channel gets its first local consumer and
      :meth:`unwatch` when it loses its last one; the route awaits :meth:`wait_watching`
      before accepting a consumer, so every message published after that reaches it.
    - :meth:`run` owns any background work (listeners, reconnection) for the app's lifetime and
      signals readiness with ``task_status.started()``.
    """

    async def publish(self, channel: Channel, payload: Payload, size: int) -> int:
        """Publish one message on ``channel``; return its sequence number."""
        ...

    async def publish_many(
        self, channel: Channel, payloads: list[Payload], published: list[int]
    ) -> None:
        """Publish ``payloads`` in order, appending each one's sequence number to
        ``published`` as it is accepted: if this raises, ``published`` holds the accepted
        ones (the first ``len(published)`` payloads). A networked broker takes them in one
        round trip where it can."""
        ...

    def queue(self, name: str) -> QueueSource | None:
        """The broker-held queue of queue channel ``name``; ``None``: the hub queues locally."""
        ...

    def watch(self, name: str) -> None:
        """Channel ``name`` has local consumers: deliver its messages to this hub."""
        ...

    def unwatch(self, name: str) -> None:
        """Channel ``name`` has no local consumers any more."""
        ...

    async def wait_watching(self, name: str) -> None:
        """Return once messages published on ``name`` from now on reach this hub.

        Raises :class:`~triorelay.errors.BrokerUnavailable` if that cannot happen in time.
        """
        ...

    async def run(
        self, hub: Hub, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver other relays' messages to ``hub`` (:meth:`Hub.deliver`) until cancelled."""
        ...

    @property
    def ready(self) -> bool:
        """False while the broker cannot accept messages (for ``/healthz``)."""
        ...

    def statistics(self) -> dict[str, Any]:
        """The broker's counters, for ``/healthz``."""
        ...
