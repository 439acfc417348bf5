"""How published messages travel from producers to the hubs that have consumers.

:class:`~triorelay.brokers.base.Broker` is the interface; :class:`MemoryBroker` (one process)
is the embedded default; :class:`~triorelay.brokers.redis.RedisBroker` shares channels between
relay processes through Redis Streams.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from triorelay.brokers.base import Broker, QueueSource
from triorelay.brokers.memory import MemoryBroker

if TYPE_CHECKING:
    from triorelay.settings import Settings

__all__ = ["Broker", "MemoryBroker", "QueueSource", "open_broker"]


def open_broker(settings: Settings) -> Broker:
    """The broker the ``broker`` setting names (validated by the settings)."""
    if settings.broker == "memory":
        return MemoryBroker()
    from triorelay.brokers.redis import RedisBroker  # coredis is only loaded when used

    return RedisBroker(settings)
