"""The memory broker's own behaviour, beyond the contract of ``test_contract.py``."""

from __future__ import annotations

from tests.brokers.conftest import Deliveries
from triorelay.brokers import MemoryBroker


async def test_every_publish_is_delivered_at_once_watched_or_not() -> None:
    """Publishing is delivering: before ``publish`` returns, ``deliver`` has the message,
    whether or not anyone watches the channel (the hub ignores channels it does not hold)."""
    deliveries = Deliveries()
    broker = MemoryBroker(deliveries.deliver)
    published: list[int] = []
    await broker.publish("unwatched", "broadcast", ["a", b"b"], published)
    assert deliveries.items == [("unwatched", "a"), ("unwatched", b"b")]
    assert published == [1, 2]


async def test_a_forgotten_channel_numbers_from_1_again() -> None:
    """The hub dropped the channel: a channel of the same name made later starts over."""
    broker = MemoryBroker(Deliveries().deliver)
    published: list[int] = []
    await broker.publish("c", "broadcast", ["a", "b"], published)
    broker.forget("c")
    await broker.publish("c", "broadcast", ["c"], published)
    assert published == [1, 2, 1]
