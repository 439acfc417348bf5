"""How published messages travel from producers to the hubs that have consumers.

:class:`~triorelay.brokers.base.Broker` is the interface; :class:`MemoryBroker` (one process)
is the embedded default; :class:`~triorelay.brokers.redis.RedisBroker` shares channels between
relay processes through Redis Streams.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from triorelay.brokers.base import Broker, BrokerFactory, Deliver, Gap, QueueSource, Recovery
from triorelay.brokers.memory import MemoryBroker

if TYPE_CHECKING:
    from triorelay.settings import Settings

__all__ = [
    "Broker",
    "BrokerFactory",
    "Deliver",
    "Gap",
    "MemoryBroker",
    "QueueSource",
    "Recovery",
    "broker_factory",
]


def broker_factory(settings: Settings) -> BrokerFactory:
    """What makes the broker the ``broker`` setting names (validated by the settings)."""
    if settings.broker == "memory":
        return partial(MemoryBroker, settings=settings)
    from triorelay.brokers.redis import RedisBroker  # coredis is only loaded when used

    def open_redis(deliver: Deliver) -> Broker:
        return RedisBroker(settings, deliver)

    return open_redis
