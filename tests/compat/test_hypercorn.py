"""The Hypercorn 0.18.0 internals triorelay relies on (src/triorelay/compat/hypercorn.py).

If an upgrade changes them, these fail first, naming the assumption that broke.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from trio_websocket import open_websocket_url

from triorelay.compat import hypercorn as compat


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


def test_frames_follow_rfc6455_lengths() -> None:
    """Server frames: FIN + opcode, then 7-bit, 16-bit or 64-bit lengths, no mask."""
    assert compat._frame("hi") == b"\x81\x02hi"
    assert compat._frame(b"\x00") == b"\x82\x01\x00"
    assert compat._frame(b"a" * 126)[:4] == b"\x82\x7e\x00\x7e"
    assert compat._frame(b"a" * 65536)[:10] == b"\x82\x7f" + (65536).to_bytes(8, "big")


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
