"""Fixtures: settings, and a real Hypercorn server on port 0 in the test's trio run."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import RunningRelay
from tests.redis_server import RedisServer
from triorelay.app import create_app, relay_of
from triorelay.server import serve
from triorelay.settings import Settings, load_settings

StartRelay = Callable[..., Awaitable[RunningRelay]]


def make_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "ping_interval_seconds": None}
    base.update(overrides)
    return load_settings(**base)


async def start_server(nursery: trio.Nursery, **overrides: Any) -> RunningRelay:
    """Serve a relay on a free port in ``nursery`` until its ``stop`` event is set."""
    settings = make_settings(**overrides)
    app = create_app(settings, handle_signals=False)
    stop = trio.Event()
    binds = await nursery.start(partial(serve, settings, shutdown_trigger=stop, app=app))
    return RunningRelay(relay=relay_of(app), http_url=binds[0], stop=stop)


@pytest.fixture
async def start_relay(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[StartRelay]:
    """``await start_relay(**settings)``: serve a relay on a free port until the test ends.

    Uploads go to ``tmp_path / "uploads"`` unless ``upload_dir`` is given.
    """
    running: list[RunningRelay] = []

    async def start(**overrides: Any) -> RunningRelay:
        overrides.setdefault("upload_dir", tmp_path / "uploads")
        server = await start_server(nursery, **overrides)
        running.append(server)
        return server

    yield start
    for server in running:
        if server._http is not None:
            await server._http.aclose()
        server.stop.set()


@pytest.fixture
async def relay(start_relay: StartRelay) -> RunningRelay:
    """A relay with the default settings."""
    return await start_relay()


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The ``broker`` setting of a test that runs on both: memory, then a redis-server of
    its own (acked queues: the route's tests and the job client's)."""
    if request.param == "memory":
        yield "memory"
        return
    server = RedisServer()
    await server.start()
    try:
        yield server.url
    finally:
        await server.kill()


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    """A fresh redis-server of the test's own on a free port, killed when the test ends."""
    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


@pytest.fixture
def collector_off() -> Iterator[None]:
    """No cyclic collection but the test's own, for its whole run."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
