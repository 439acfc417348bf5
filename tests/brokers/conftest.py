"""The broker contract's fixtures: ``backend`` runs each test once per broker.

``memory`` needs nothing; ``redis`` gets a redis-server of the test's own on a free port
(:mod:`tests.redis_server`), killed when the test ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import coredis
import pytest
import trio

from tests.conftest import make_settings
from tests.redis_server import RedisServer
from triorelay.brokers import Broker, Gap, MemoryBroker, broker_factory
from triorelay.envelopes import Payload
from triorelay.hub import Hub
from triorelay.settings import Settings

#: Longest any contract test may take: a hang fails at once instead of at the global timeout.
HANG_GUARD_SECONDS = 10


class Deliveries:
    """A :data:`~triorelay.brokers.base.Deliver` callback that records what it is handed."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Payload | Gap]] = []
        #: Each item's position, as delivered: ``(offset, epoch)``.
        self.positions: list[tuple[int, str]] = []
        self._grew = trio.Event()

    async def deliver(
        self, name: str, item: Payload | Gap, offset: int, epoch: str, trace: object = None
    ) -> None:
        self.items.append((name, item))
        self.positions.append((offset, epoch))
        self._grew.set()
        self._grew = trio.Event()

    async def wait_for(self, count: int) -> list[tuple[str, Payload | Gap]]:
        """Wait until ``count`` items were delivered; return them all."""
        while len(self.items) < count:
            await self._grew.wait()
        return self.items


@dataclass(frozen=True)
class Backend:
    """One broker to run the contract on: ``kind`` and the ``broker`` setting naming it."""

    kind: Literal["memory", "redis"]
    broker_setting: str

    def settings(self, **overrides: Any) -> Settings:
        return make_settings(broker=self.broker_setting, **overrides)

    def broker(self, deliver: Deliveries, **overrides: Any) -> Broker:
        """A broker of this kind delivering to ``deliver``, not yet running."""
        return broker_factory(self.settings(**overrides))(deliver.deliver)

    async def start_broker(
        self, nursery: trio.Nursery, deliver: Deliveries, **overrides: Any
    ) -> Broker:
        """A broker running in ``nursery`` (until the test ends), started and ready."""
        broker = self.broker(deliver, **overrides)
        await nursery.start(broker.run)
        return broker

    async def age_history(self, broker: Broker, name: str, *, seconds: float) -> None:
        """Make channel ``name``'s last publish ``seconds`` older (its history may expire)."""
        if isinstance(broker, MemoryBroker):
            history = broker.histories.held(name)
            assert history is not None
            history.last_publish -= seconds
            return
        async with coredis.Redis.from_url(self.broker_setting) as client:
            await client.hincrby(f"triorelay:meta:{name}", "t", -round(seconds * 1000))

    async def lose_everything(self, nursery: trio.Nursery, broker: Broker) -> Broker:
        """Lose every channel's history: the memory broker's relay restarts (a new broker),
        Redis loses its data (as a restart without persistence). Returns the broker to use."""
        if isinstance(broker, MemoryBroker):
            return await self.start_broker(nursery, Deliveries())
        async with coredis.Redis.from_url(self.broker_setting) as client:
            await client.flushall()
        return broker

    async def start_hub(self, nursery: trio.Nursery, **overrides: Any) -> Hub:
        """A hub with a broker of this kind running in ``nursery``."""
        settings = self.settings(**overrides)
        hub = Hub(settings, broker_factory(settings))
        await nursery.start(hub.broker.run)
        return hub


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Each broker in turn; for ``redis``, a fresh redis-server for this test."""
    if request.param == "memory":
        yield Backend("memory", "memory")
        return
    server = RedisServer()
    await server.start()
    try:
        yield Backend("redis", server.url)
    finally:
        await server.kill()
