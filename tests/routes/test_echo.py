"""/ws/echo sends every message back as it came."""

from __future__ import annotations

import pytest
import wsproto.events as ws

from tests.helpers import RawWebSocket, RunningRelay

pytestmark = pytest.mark.both_paths


@pytest.mark.parametrize(
    "payload", ["", b"", "héllo", b"\x00\xff" * 40_000], ids=["text", "binary", "utf8", "big"]
)
async def test_echo_returns_each_message_unchanged(
    relay: RunningRelay, payload: str | bytes
) -> None:
    """Text stays text and binary binary, empty included."""
    async with relay.websocket("/ws/echo") as client:
        await client.send_message(payload)
        got = await client.get_message()
    assert type(got) is type(payload)
    assert got == payload


async def test_echo_reassembles_fragments_and_answers_pings(relay: RunningRelay) -> None:
    """A fragmented message comes back whole; a ping between fragments gets its pong."""
    client = await RawWebSocket.connect(relay.port, "/ws/echo", 65536)
    try:
        await client.send_events(
            ws.TextMessage(data="frag", message_finished=False),
            ws.Ping(payload=b"x"),
            ws.TextMessage(data="ment", message_finished=True),
        )
        events = await client.read_events(2)
    finally:
        client.close()
    assert any(isinstance(e, ws.Pong) for e in events)
    assert [e.data for e in events if isinstance(e, ws.TextMessage)] == ["fragment"]


async def test_echo_closes_1001_on_shutdown(relay: RunningRelay) -> None:
    """Shutdown reaches echo connections too."""
    client = await RawWebSocket.connect(relay.port, "/ws/echo", 65536)
    try:
        relay.relay.shutdown.begin()
        _, code, reason = await client.read_until_closed()
    finally:
        client.close()
    assert code == 1001
    assert reason == "server shutting down"
