"""A tiny stand-in for the relay's framed consumer endpoint, scripted by each test.

For the client's own logic (reconnection, deduplication, close codes): each connection's
handshake is recorded, then handed to the test's handler with its number (0, 1, ...).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import parse_qsl, urlsplit

import trio
import wsproto
import wsproto.events as ws_events
from trio_websocket import WebSocketConnection, WebSocketRequest, serve_websocket

from triorelay import framing
from triorelay.framing import SUBPROTOCOL, Position

Handler = Callable[[WebSocketRequest, int], Awaitable[None]]


@dataclass(frozen=True)
class Handshake:
    """What one client connection asked for."""

    path: str
    query: dict[str, str]
    authorization: str | None
    subprotocols: tuple[str, ...]


@dataclass
class FakeRelay:
    url: str
    handshakes: list[Handshake] = field(default_factory=list)
    #: Set when connection number ``n`` has ended (its handler returned).
    ended: list[trio.Event] = field(default_factory=list)


async def start_fake_relay(nursery: trio.Nursery, handler: Handler) -> FakeRelay:
    """Serve ``handler`` on a free port of 127.0.0.1 in ``nursery``."""
    fake = FakeRelay(url="")

    async def handle(request: WebSocketRequest) -> None:
        parts = urlsplit(request.path)
        headers = {name.decode().lower(): value.decode() for name, value in request.headers}
        fake.handshakes.append(
            Handshake(
                parts.path,
                dict(parse_qsl(parts.query)),
                headers.get("authorization"),
                request.proposed_subprotocols,
            )
        )
        number = len(fake.handshakes) - 1
        fake.ended.append(trio.Event())
        try:
            await handler(request, number)
        finally:
            fake.ended[number].set()

    server = await nursery.start(partial(serve_websocket, handle, "127.0.0.1", 0, None))
    fake.url = f"ws://127.0.0.1:{server.port}"
    return fake


async def accept(request: WebSocketRequest) -> WebSocketConnection:
    return await request.accept(subprotocol=SUBPROTOCOL)


async def send_subscribed(
    ws: WebSocketConnection,
    channel: str,
    epoch: str,
    offset: int,
    *,
    replayed: int = 0,
    recovering: bool = False,
    recovered: bool = False,
    reason: framing.RecoveryReason | None = None,
) -> None:
    await ws.send_message(
        framing.subscribed(
            channel,
            Position(epoch, offset),
            recovering=recovering,
            recovered=recovered,
            reason=reason,
            replayed=replayed,
        )
    )


async def send_messages(
    ws: WebSocketConnection, channel: str, offsets: range | list[int], binary: bool = False
) -> None:
    """Messages ``m<offset>`` (text, or bytes with ``binary``) at each of ``offsets``."""
    for offset in offsets:
        text = f"m{offset}"
        await ws.send_message(
            framing.encode_message(channel, offset, text.encode() if binary else text)
        )


async def start_mute_relay(nursery: trio.Nursery, *, first_frames: Sequence[str] = ()) -> str:
    """A relay that accepts the handshake (``triorelay.v1`` if offered), sends
    ``first_frames``, then never reads again: no pong, no close, TCP fills up. Its URL."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def mute(stream: trio.SocketStream) -> None:
        conn = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        request = None
        while request is None:
            conn.receive_data(await stream.receive_some(65536))
            request = next((e for e in conn.events() if isinstance(e, ws_events.Request)), None)
        offered = SUBPROTOCOL if SUBPROTOCOL in request.subprotocols else None
        data = conn.send(ws_events.AcceptConnection(subprotocol=offered))
        for frame in first_frames:
            data += conn.send(ws_events.TextMessage(data=frame))
        await stream.send_all(data)
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, mute, listeners)
    return f"ws://127.0.0.1:{port}"
