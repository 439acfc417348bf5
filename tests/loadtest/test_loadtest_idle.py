"""``python -m loadtest idle``: idle consumers, one per channel, held on a real relay."""

from __future__ import annotations

import trio

from loadtest.idle import hold_idle_channels
from tests.conftest import StartRelay


async def test_idle_consumers_are_all_connected_before_it_starts_each_on_its_channel(
    start_relay: StartRelay,
) -> None:
    """``started()`` comes once every consumer is connected: the relay then has one channel
    with one consumer per idle consumer."""
    relay = await start_relay()
    with trio.CancelScope() as holding:
        async with trio.open_nursery() as inner:
            await inner.start(hold_idle_channels, relay.ws_url, 25)
            channels = {name: await relay.channel(name) for name in ("idle.0", "idle.24")}
            holding.cancel()
    assert all(channel["consumers"] == 1 for channel in channels.values())
