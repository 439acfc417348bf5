"""From the ASGI callables Hypercorn 0.18.0 hands a WebSocket app to the objects behind them.

The ``send`` callable is the bound method ``WSStream.app_send``; from it we walk ``WSStream.send``
(``H11Protocol.stream_send``) and ``H11Protocol.send`` (``TCPServer.protocol_send``) to the
``TCPServer`` and its stream. ``receive`` is the bound ``receive`` of the app's
``trio.MemoryReceiveChannel`` (of its :class:`~.app_queue.AppQueue` under the relay). Each step
gives None when the structure is not the expected one (another server, another Hypercorn),
and ``tests/compat/hypercorn/test_structure.py`` checks it against the pinned version.
"""

from __future__ import annotations

from typing import Any

from hypercorn.protocol.ws_stream import ASGIWebsocketState

CONNECTED = ASGIWebsocketState.CONNECTED
"""``WSStream.state`` once the app has accepted and before any close."""


def bound_self(method: object) -> Any:
    """The object a bound method belongs to, or None."""
    return getattr(method, "__self__", None)


def tcp_server_of(send: object) -> Any:
    """The ``TCPServer`` behind a WebSocket ``send`` callable, or None."""
    protocol = bound_self(getattr(bound_self(send), "send", None))
    return bound_self(getattr(protocol, "send", None))
