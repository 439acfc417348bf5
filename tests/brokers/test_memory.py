"""The memory broker's own behaviour, beyond the contract of ``test_contract.py``."""

from __future__ import annotations

from tests.brokers.conftest import Deliveries
from tests.conftest import make_settings
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


async def test_a_forgotten_channel_with_history_keeps_its_position() -> None:
    """The hub dropped the channel (nobody attached): its history, and so its offsets, live
    on for consumers that come back."""
    deliveries = Deliveries()
    broker = MemoryBroker(deliveries.deliver, make_settings())
    published: list[int] = []
    await broker.publish("c", "broadcast", ["a", "b"], published)
    broker.forget("c")
    await broker.publish("c", "broadcast", ["c"], published)
    assert published == [1, 2, 3]
    assert len({epoch for _, epoch in deliveries.positions}) == 1


async def test_a_forgotten_channel_without_history_starts_a_new_epoch() -> None:
    """Without history nothing can be resumed: a forgotten channel numbers from 1 again, in
    a new epoch (so a position from before is never misread)."""
    deliveries = Deliveries()
    broker = MemoryBroker(deliveries.deliver, make_settings(history_messages=0))
    published: list[int] = []
    await broker.publish("c", "broadcast", ["a", "b"], published)
    broker.forget("c")
    await broker.publish("c", "broadcast", ["c"], published)
    assert published == [1, 2, 1]
    first, _, again = deliveries.positions
    assert first[1] != again[1]


async def test_queue_channels_number_from_1_again_once_forgotten() -> None:
    """Queue messages have no position: a forgotten queue channel starts over."""
    broker = MemoryBroker(Deliveries().deliver, make_settings())
    published: list[int] = []
    await broker.publish("q", "queue", ["a", "b"], published)
    broker.forget("q")
    await broker.publish("q", "queue", ["c"], published)
    assert published == [1, 2, 1]
