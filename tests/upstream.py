"""A real upstream WebSocket server for the proxy tests: trio-websocket on port 0."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

Behaviour = Callable[[WebSocketConnection], Awaitable[None]]


@dataclass
class Upstream:
    """A running upstream: its URL, and how each of its connections ended (seen from it)."""

    port: int
    _closes: trio.MemoryReceiveChannel[CloseReason | None] = field(repr=False)
    connections: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/upstream"

    async def next_close(self) -> CloseReason | None:
        """How the next connection to end was closed (code and reason received from the relay)."""
        with trio.fail_after(10):
            return await self._closes.receive()


async def start_upstream(nursery: trio.Nursery, behaviour: Behaviour) -> Upstream:
    """Serve ``behaviour`` on every accepted connection until the test's nursery ends."""
    send_close, receive_close = trio.open_memory_channel[CloseReason | None](16)
    upstream = Upstream(port=0, _closes=receive_close)

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        upstream.connections += 1
        try:
            await behaviour(ws)
            # Whatever the behaviour left open stays open until the relay closes it.
            while True:
                await ws.get_message()
        except ConnectionClosed:
            pass
        await send_close.send(ws.closed)

    server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, None))
    upstream.port = server.port
    return upstream


async def echo(ws: WebSocketConnection) -> None:
    """Send every message back as it came."""
    while True:
        await ws.send_message(await ws.get_message())


async def reply_prefixed(ws: WebSocketConnection) -> None:
    """Answer every text message with ``upstream got <text>`` (binary: the bytes, prefixed)."""
    while True:
        message = await ws.get_message()
        if isinstance(message, str):
            await ws.send_message(f"upstream got {message}")
        else:
            await ws.send_message(b"upstream got " + message)


def close_after_first(code: int, reason: str) -> Behaviour:
    """Read one message, then close with ``code`` and ``reason``."""

    async def behaviour(ws: WebSocketConnection) -> None:
        await ws.get_message()
        await ws.aclose(code, reason)

    return behaviour
