"""InboundTap: what arrived before it first, then frames parsed in Hypercorn's reader task."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from hypercorn.protocol.events import Data
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WebsocketBuffer
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType

from triorelay.compat import hypercorn as compat
from triorelay.wire.frames import Opcode, serialize_frame


class _FakeWSStream:
    """Just what InboundTap touches before any frame arrives."""

    def __init__(self, send_channel: trio.MemorySendChannel[Any]) -> None:
        self.app_put = send_channel.send

    async def handle(self, event: Any) -> None:  # pragma: no cover - not reached here
        raise AssertionError(event)


async def test_tap_delivers_what_arrived_before_it_first() -> None:
    """Messages queued for the app before the tap are delivered first, a disconnect kept."""
    send_channel, receive_channel = trio.open_memory_channel[Any](10)
    for event in (
        {"type": "websocket.receive", "bytes": None, "text": "early"},
        {"type": "websocket.receive", "bytes": b"", "text": None},
        {"type": "websocket.disconnect", "code": 1000},
    ):
        send_channel.send_nowait(event)
    delivered: list[Any] = []
    disconnected: list[bool] = []

    async def on_messages(payloads: list[Any]) -> None:
        delivered.extend(payloads)

    tap = compat.InboundTap(
        _FakeWSStream(send_channel), receive_channel, on_messages, lambda c, r: None, 100
    )
    tap.on_disconnect = lambda: disconnected.append(True)
    await tap.start()
    assert delivered == ["early", b""]
    assert disconnected == [True]
    assert receive_channel.receive_nowait()["type"] == "websocket.disconnect"


class _ReadingWSStream(_FakeWSStream):
    """What InboundTap reads from while it parses: an open connection, wsproto idle."""

    def __init__(self, send_channel: trio.MemorySendChannel[Any]) -> None:
        super().__init__(send_channel)
        self.closed = False
        self.state = ASGIWebsocketState.CONNECTED
        self.connection = WSConnection(ConnectionType.SERVER)
        self.buffer = WebsocketBuffer(1 << 30)


@pytest.mark.timeout(10)
async def test_tap_takes_a_trickled_frame_in_linear_time() -> None:
    """A 900 KB frame arriving one byte per TCP read is one message, in about a second
    (rebuilding the held bytes on every read took over 15 s of CPU)."""
    send_channel, receive_channel = trio.open_memory_channel[Any](10)
    delivered: list[Any] = []

    async def on_messages(payloads: list[Any]) -> None:
        delivered.extend(payloads)

    ws_stream = _ReadingWSStream(send_channel)
    tap = compat.InboundTap(ws_stream, receive_channel, on_messages, lambda c, r: None, 1 << 20)
    await tap.start()
    payload = bytes(range(256)) * 3515  # 899,840 bytes
    frame = serialize_frame(Opcode.BINARY, payload, mask=b"\x0f\xf0\x55\xaa")
    for i in range(len(frame)):
        await ws_stream.handle(Data(stream_id=1, data=frame[i : i + 1]))
    assert delivered == [payload]
