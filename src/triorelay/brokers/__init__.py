"""How published messages travel from producers to the hubs that have consumers.

:class:`~triorelay.brokers.base.Broker` is the interface; :class:`MemoryBroker` (one process)
is the embedded default. A Redis broker will implement the same interface.
"""

from triorelay.brokers.base import Broker
from triorelay.brokers.memory import MemoryBroker

__all__ = ["Broker", "MemoryBroker", "open_broker"]


def open_broker(url: str) -> Broker:
    """The broker for the ``broker`` setting (validated by the settings)."""
    if url == "memory":
        return MemoryBroker()
    raise ValueError(f"unknown broker {url!r}")  # pragma: no cover - settings reject it first
