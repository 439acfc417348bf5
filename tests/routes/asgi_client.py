"""An in-process WebSocket client of the relay's ASGI app: no sockets, any clock, any peer.

For what a real socket cannot show: a client address that is not loopback, and timers under
trio's autojump clock. The relay runs on plain ASGI here (the compat helpers find no Hypercorn
behind ``send``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from triorelay.app import create_app, relay_of
from triorelay.relay import Relay
from triorelay.settings import Settings


@dataclass
class ASGIWebSocket:
    """One in-process connection: what the test sends, and what the app answers."""

    to_app: trio.MemorySendChannel[dict[str, Any]]
    from_app: trio.MemoryReceiveChannel[dict[str, Any]]

    async def answer(self) -> dict[str, Any]:
        """The app's next ASGI event (accept, send, close, or an HTTP refusal)."""
        return await self.from_app.receive()

    async def send_text(self, text: str) -> None:
        await self.to_app.send({"type": "websocket.receive", "text": text})


@asynccontextmanager
async def asgi_relay(settings: Settings) -> AsyncIterator[tuple[Any, Relay]]:
    """The relay's ASGI app and its relay, with the relay's background tasks running."""
    app = create_app(settings, handle_signals=False)
    relay = relay_of(app)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        yield app.asgi_app, relay
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def asgi_websocket(
    asgi_app: Any,
    path: str,
    *,
    query: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    client: tuple[str, int] = ("127.0.0.1", 50000),
    host: bytes = b"127.0.0.1:8000",
) -> AsyncIterator[ASGIWebSocket]:
    """Open ``path`` on ``asgi_app`` from ``client``; the connection is dropped after the block."""
    to_app, app_receive = trio.open_memory_channel[dict[str, Any]](16)
    app_send, from_app = trio.open_memory_channel[dict[str, Any]](16)
    scope = {
        "type": "websocket",
        "path": path,
        "query_string": query,
        "headers": [(b"host", host), *headers],
        "client": client,
        "scheme": "ws",
        "subprotocols": [],
    }

    async def send(message: Any) -> None:
        await app_send.send(dict(message))

    async def serve() -> None:
        async with app_send:  # the app's answers end when it returns
            await asgi_app(scope, app_receive.receive, send)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await to_app.send({"type": "websocket.connect"})
        yield ASGIWebSocket(to_app, from_app)
        await to_app.send({"type": "websocket.disconnect", "code": 1000})
        with trio.fail_after(10):
            async for _ in from_app:
                pass
