"""In-process tests of the relay's background helpers (no server)."""

from __future__ import annotations

from typing import Any, cast

import trio

from triorelay.errors import CloseCode
from triorelay.hub import Hub
from triorelay.lifecycle import Liveness
from triorelay.settings import load_settings


class FakeTap:
    def __init__(self) -> None:
        self.last_received = 0.0


class FakeDirect:
    def __init__(self) -> None:
        self.pings = 0

    def ping_nowait(self) -> bytes:
        self.pings += 1
        return b""


async def test_liveness_pings_after_interval_and_closes_after_timeout() -> None:
    """Ping once silent for the interval; close 1011 only a full timeout after that ping."""
    hub = Hub(load_settings())
    liveness = Liveness(interval_seconds=10, timeout_seconds=5)
    tap, direct = FakeTap(), FakeDirect()
    with hub.attach_consumer("peer") as consumer:
        liveness.track(consumer, cast(Any, tap), cast(Any, direct))
        async with trio.open_nursery() as nursery:
            liveness._check(nursery, 10, now=9.9)
            assert direct.pings == 0
            liveness._check(nursery, 10, now=10.0)
            assert direct.pings == 1
            liveness._check(nursery, 10, now=14.9)
            assert consumer.close_code is None, "not before the timeout has run since the ping"
            tap.last_received = 12.0  # the pong
            liveness._check(nursery, 10, now=15.0)
            assert consumer.close_code is None
            liveness._check(nursery, 10, now=22.0)
            assert direct.pings == 2
            liveness._check(nursery, 10, now=27.0)
        assert consumer.close_code is CloseCode.INTERNAL_ERROR
        assert consumer.close_reason == "keepalive ping timeout"
