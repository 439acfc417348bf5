"""Two hangs of trio-websocket's client context manager (0.12.2, pinned in ``pyproject.toml``).

``trio_websocket.open_websocket_url`` runs the connection's reader task in a nursery of its
own, and its exit waits for that task, which in two cases never ends:

- **A peer that accepts TCP and never answers the handshake.** ``connect_timeout`` raises
  ``ConnectionTimeout`` only once the reader task ends, and the reader waits for the peer: the
  connection attempt hangs for good (a load balancer whose backend is gone does exactly this).
- **A close whose close frame cannot be sent** (the peer reset the connection, or the send was
  cut). ``WebSocketConnection._aclose`` then skips closing its message queue's receive side (its
  own ``TODO`` there asks whether it should be closed earlier), so a reader task that is
  handing over a message nobody reads any more (the queue is full: the body stopped reading to
  close) waits for good. The same symptom as
  https://github.com/python-trio/trio-websocket/issues/74, fixed there for a close that goes
  through.

:func:`open_websocket_url` here takes the arguments this project uses and steps around both:
a deadline of its own around the connection attempt, lifted once connected, and the unread
messages discarded (as trio-websocket's ``aclose`` does on the path that works) before the
close starts.
``tests/compat/test_trio_websocket.py`` fails if trio-websocket's behaviour changes.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio_websocket
from trio_websocket import ConnectionTimeout, WebSocketConnection


@asynccontextmanager
async def open_websocket_url(
    url: str,
    *,
    subprotocols: list[str] | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    message_queue_size: int = trio_websocket._impl.MESSAGE_QUEUE_SIZE,
    max_message_size: int = trio_websocket._impl.MAX_MESSAGE_SIZE,
    connect_timeout: float,
    disconnect_timeout: float,
) -> AsyncIterator[WebSocketConnection]:
    """``trio_websocket.open_websocket_url``: a client connection to ``url``; raises
    ``ConnectionTimeout`` once ``connect_timeout`` passed without a handshake, whatever the peer
    does, and discards the messages not read when the body ends, before closing."""
    with trio.CancelScope(deadline=trio.current_time() + connect_timeout) as connecting:
        async with trio_websocket.open_websocket_url(
            url,
            subprotocols=subprotocols,
            extra_headers=extra_headers,
            message_queue_size=message_queue_size,
            max_message_size=max_message_size,
            connect_timeout=connect_timeout,
            disconnect_timeout=disconnect_timeout,
        ) as ws:
            connecting.deadline = math.inf
            if connecting.cancel_called:  # the deadline passed as the handshake ended
                raise ConnectionTimeout
            try:
                yield ws
            finally:
                discard_unread(ws)
    if connecting.cancelled_caught:
        raise ConnectionTimeout


def discard_unread(ws: WebSocketConnection) -> None:
    """Close ``ws``'s message queue for reading: its reader task, if it is handing a message
    over, drops it and goes on reading the socket (so it sees the close, or the reset), and
    ``get_message`` raises ``ConnectionClosed`` from now on."""
    ws._recv_channel.close()
