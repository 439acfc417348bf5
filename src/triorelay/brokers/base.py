"""The broker interface the hub reaches messages through."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio

if TYPE_CHECKING:
    from triorelay.hub import Channel, Payload


class Broker(Protocol):
    """Carries each published message to every hub with consumers on its channel.

    Contract: :meth:`publish` returns once the message is accepted (its sequence number is
    final): delivered into the local channel for the memory broker, acknowledged by the server
    for a networked one. It may block for backpressure and raises on failure, so a producer's
    ack never covers a lost message. :meth:`run` owns any background work (listeners,
    reconnection) for the app's lifetime and signals readiness with ``task_status.started()``.
    """

    async def publish(self, channel: Channel, payload: Payload, size: int) -> int:
        """Publish one message on ``channel``; return its sequence number."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled."""
        ...

    @property
    def ready(self) -> bool:
        """False while the broker cannot accept messages (for ``/healthz``)."""
        ...
