"""What an accepted WebSocket keeps and does not need (Hypercorn 0.18.0, wsproto 1.3.2).

``hypercorn/protocol/h11.py: H11Protocol._create_stream`` wraps the connection's
``h11.Connection`` in an ``H11WSConnection`` on an upgrade request and keeps it for the
connection's life, to send the handshake's answer: the 101, or a refusal with its body. Once the
app has accepted, only WebSocket data goes out (``Data``, passed through as it is) and nothing is
ever sent through h11 again (``WSStream.app_send`` refuses an HTTP response once connected), so
its state machine, header list and buffers (0.75-1.1 KB per connection) are kept for nothing.
:func:`release_handshake` lets them go.

It also swaps the queue of events wsproto's ``Connection`` keeps (``wsproto/connection.py``:
``self._events = deque()``) for a list: an empty ``deque`` allocates a block of 64 slots, 0.76 KB
per connection, for a queue that is empty but for the abnormal close (1006) it may hold when
the peer goes (wsproto only appends to it, pops from its left and tests it for emptiness). The
structure both rely on is checked by ``tests/compat/hypercorn/test_upgrade.py``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import h11
from hypercorn.protocol.h11 import H11WSConnection
from wsproto.connection import Connection as WSConnection

from triorelay.compat.hypercorn._chain import CONNECTED, bound_self


class _Released:
    """Stands in for the h11 connection once the WebSocket is accepted: sending through it
    would be a bug in Hypercorn's use of it, and fails as h11 fails a send out of turn."""

    __slots__ = ()

    def send(self, event: Any) -> bytes:
        raise h11.LocalProtocolError(
            f"cannot send {type(event).__name__}: the connection is a WebSocket now"
        )


_RELEASED = _Released()


class EventQueue(list[Any]):
    """wsproto's event queue as a list: what it does with its ``deque`` (``append``,
    ``popleft``, truth), for the one event it may ever hold at a time."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def release_handshake(send: object) -> bool:
    """Drop the h11 state kept behind the accepted WebSocket behind ``send``, and make its
    wsproto event queue a list.

    Returns False (and does nothing) unless ``send`` is Hypercorn's, over HTTP/1.1, accepted.
    """
    ws_stream = bound_self(send)
    if getattr(ws_stream, "state", None) is not CONNECTED:
        return False
    protocol = bound_self(getattr(ws_stream, "send", None))
    connection = getattr(protocol, "connection", None)
    if (
        not isinstance(connection, H11WSConnection)
        or getattr(protocol, "stream", None) is not ws_stream
    ):
        return False
    connection.h11_connection = _RELEASED  # type: ignore[assignment]
    websocket = getattr(ws_stream, "connection", None)
    if isinstance(websocket, WSConnection) and type(websocket._events) is deque:
        websocket._events = EventQueue(websocket._events)  # type: ignore[assignment]
    return True
