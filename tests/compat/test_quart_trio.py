"""Why the relay's WebSocket paths bypass Quart-Trio 0.12's WebSocket layer.

Each test pins one known behaviour of the pinned version; if an upgrade changes it, the test
fails and the bypass in ``triorelay.routes.websocket`` can be reconsidered.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import trio
import trio.testing
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIWebsocketConnection


def _connection() -> TrioASGIWebsocketConnection:
    scope: Any = {"type": "websocket", "path": "/", "query_string": b"", "headers": []}
    return TrioASGIWebsocketConnection(QuartTrio(__name__), scope)


async def test_quart_trio_turns_an_empty_binary_message_into_none() -> None:
    """Quart-Trio delivers b"" as None (``event.get("bytes") or event["text"]``)."""
    connection = _connection()
    events = iter(
        [
            {"type": "websocket.receive", "bytes": b"", "text": None},
            {"type": "websocket.disconnect", "code": 1000},
        ]
    )

    async def receive() -> Any:
        return next(events)

    async with trio.open_nursery() as nursery:
        await connection.handle_messages(nursery, receive)
    assert connection.receive_channel.receive_nowait() is None


async def test_quart_trio_stops_reading_after_10_unread_messages() -> None:
    """Its reader blocks on a 10-message channel, so a later disconnect is never seen."""
    connection = _connection()
    served = 0

    async def receive() -> Any:
        nonlocal served
        served += 1
        if served <= 11:
            return {"type": "websocket.receive", "bytes": None, "text": "x"}
        return {"type": "websocket.disconnect", "code": 1000}  # pragma: no cover

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.handle_messages, nursery, receive)
        await trio.testing.wait_all_tasks_blocked()
        assert served == 11, "it stopped reading: the disconnect is never received"
        nursery.cancel_scope.cancel()


async def test_hypercorn_send_after_disconnect_returns_without_a_checkpoint() -> None:
    """Hypercorn's app_send on a closed WebSocket returns at once: a send loop would spin."""
    from hypercorn.protocol.ws_stream import WSStream

    stream = object.__new__(WSStream)
    stream.closed = True
    with trio.testing.assert_no_checkpoints():
        await stream.app_send({"type": "websocket.send", "text": "x"})


async def test_relay_send_on_a_closed_socket_reports_it_and_checkpoints() -> None:
    """The relay's direct send says nothing went out, and yields, so its loops end."""
    from hypercorn.protocol.ws_stream import WSStream
    from wsproto.connection import Connection as WSConnection
    from wsproto.connection import ConnectionType

    from triorelay.compat.hypercorn import DirectWebSocket

    stream = object.__new__(WSStream)
    stream.closed = True
    stream.connection = WSConnection(ConnectionType.SERVER)
    socket = SimpleNamespace(_sock=None)
    tcp_server = SimpleNamespace(send_lock=trio.Lock(), stream=SimpleNamespace(socket=socket))
    direct = DirectWebSocket(stream, tcp_server, None)
    assert direct.send_nowait("x") is False
    with trio.testing.assert_checkpoints():
        assert await direct.send_messages(["x"]) is False
