"""Two hangs and a slow failure of trio-websocket's client (0.12.2, pinned in ``pyproject.toml``).

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

And a connection the peer resets or closes **during the handshake** (a relay going down
with connections in its accept queue, a balancer cutting them) is noticed only at
``connect_timeout`` (10 s by the client's default): the reader task sees the end and
stops (``WebSocketConnection._abort_web_socket``), but it sets only the event a close waits
for, not the one ``connect_websocket`` waits on for the handshake.

:func:`open_websocket_url` here takes the arguments this project uses and steps around all
three: a deadline of its own around the connection attempt, lifted once connected; the
unread messages discarded (as trio-websocket's ``aclose`` does on the path that works)
before the close starts; and, importing this module, ``_abort_web_socket`` of a client
connection also ends the wait for its handshake, which this function then raises as
``HandshakeError`` (or ``ConnectionRejected``, for a refusal whose body was cut short). That
is the only change to trio-websocket itself, for every client in the process: code that
calls trio-websocket directly gets, instead of waiting out its timeout, a connection already
closed (1006).
``tests/compat/test_trio_websocket.py`` fails if trio-websocket's behaviour changes.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio_websocket
from trio_websocket import (
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
)
from wsproto.connection import ConnectionState


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
            state = ws._wsproto.state
            if state is ConnectionState.REJECTING:  # refused, the body cut short
                raise ConnectionRejected(ws._reject_status, ws._reject_headers, ws._reject_body)
            if state is ConnectionState.CONNECTING:  # ended before its 101
                raise HandshakeError("the connection ended during the WebSocket handshake")
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


_abort_web_socket = WebSocketConnection._abort_web_socket


async def _abort_ending_the_handshake(self: WebSocketConnection) -> None:
    """``WebSocketConnection._abort_web_socket`` (the reader task saw the socket end), and,
    on a client connection, the end of ``connect_websocket``'s wait for the handshake."""
    await _abort_web_socket(self)
    if self.is_client:
        self._open_handshake.set()


WebSocketConnection._abort_web_socket = _abort_ending_the_handshake  # type: ignore[method-assign]
