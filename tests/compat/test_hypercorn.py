"""The Hypercorn 0.18.0 internals triorelay relies on (src/triorelay/compat/hypercorn.py).

If an upgrade changes them, these fail first, naming the assumption that broke.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.protocol.events import Data
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WebsocketBuffer
from hypercorn.trio import serve
from trio_websocket import open_websocket_url
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType

from triorelay.compat import hypercorn as compat
from triorelay.wire.frames import Opcode, serialize_frame


async def _probe(found: dict[str, Any], scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that accepts, inspects its callables, then batch-sends and echoes."""
    assert scope["type"] == "websocket"
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    direct = compat.open_direct(receive, send)
    found["direct"] = direct
    found["transport"] = compat.transport_of(send)
    found["closed_before"] = compat.is_closed(send)
    assert direct is not None
    await direct.send_messages(["one", b"two", "", "é" * 200, b"x" * 70_000])
    event = await receive()
    await direct.send_messages([event["text"]])
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def test_hypercorn_structure_is_what_compat_expects(nursery: trio.Nursery) -> None:
    """open_direct, transport_of and is_closed find Hypercorn's internals, and batches arrive."""
    found: dict[str, Any] = {}
    config = Config()
    config.bind = ["127.0.0.1:0"]
    stop = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await _probe(found, scope, receive, send)

    binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
    url = "ws" + binds[0].removeprefix("http")
    async with open_websocket_url(url + "/") as ws:
        got = [await ws.get_message() for _ in range(5)]
        assert got == ["one", b"two", "", "é" * 200, b"x" * 70_000]
        await ws.send_message("back")
        assert await ws.get_message() == "back"
    stop.set()
    assert isinstance(found["direct"], compat.DirectWebSocket)
    assert isinstance(found["transport"], trio.SocketStream)
    assert found["closed_before"] is False


def test_outside_hypercorn_compat_finds_nothing() -> None:
    """Plain callables: every helper declines instead of guessing."""

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: dict[str, Any]) -> None:
        return None

    assert compat.open_direct(receive, send) is None
    assert compat.transport_of(send) is None
    assert compat.abort_transport(send) is False
    assert compat.is_closed(send) is False
    assert compat.cli_shutdown_event() is None
    assert compat.cli_worker_count() == 0


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
