"""What triorelay needs to know or control of one Hypercorn 0.18.0 WebSocket's socket.

- Socket sends are shielded from cancellation (``hypercorn/trio/tcp_server.py:
  TCPServer.protocol_send``), so a send to a peer that stopped reading cannot be timed out and
  can block shutdown forever. :func:`abort_transport` closes the connection's socket from
  outside, which wakes the shielded send with ``ClosedResourceError`` (Hypercorn handles that as
  a closed connection); :func:`set_user_timeout` lets the kernel fail such a send.
  Upstream: https://github.com/pgjones/hypercorn/issues (shielded sends).
- Hypercorn negotiates permessage-deflate whenever the client offers it and inflates before
  checking sizes (https://github.com/pgjones/hypercorn/issues/307): :func:`refuse_compression`.
- Hypercorn answers the peer's close frame itself and tells the app only 1006:
  :func:`watch_peer_close` keeps the peer's code and reason.

Each helper returns ``None`` / ``False`` when the structure is not the expected one.
"""

from __future__ import annotations

import socket as socket_module
from collections.abc import Callable
from typing import Any

import trio
from wsproto.connection import Connection as WSConnection
from wsproto.events import CloseConnection

from triorelay.compat.hypercorn._chain import bound_self as _bound_self
from triorelay.compat.hypercorn._chain import tcp_server_of
from triorelay.compat.overrides import weak_original


def transport_of(send: Callable[..., Any]) -> trio.abc.Stream | None:
    """The trio stream under a Hypercorn WebSocket ``send`` callable, or None if not found."""
    stream = getattr(tcp_server_of(send), "stream", None)
    return stream if isinstance(stream, trio.abc.Stream) else None


def abort_transport(send: Callable[..., Any]) -> bool:
    """Close the socket under ``send`` at once, waking any send blocked on it.

    Returns False when the transport could not be found (the app runs under another server).
    """
    stream = transport_of(send)
    socket = getattr(stream, "socket", None)
    if socket is None:
        # TLS: the socket is one level down.
        socket = getattr(getattr(stream, "transport_stream", None), "socket", None)
    if socket is None:
        return False
    socket.close()
    return True


def set_user_timeout(send: Callable[..., Any], seconds: float) -> bool:
    """Set ``TCP_USER_TIMEOUT`` on the socket under ``send`` (Linux).

    Hypercorn's socket sends cannot be cancelled; with this, the kernel fails a send whose data
    stays unacknowledged for ``seconds`` (a vanished peer, a peer that stopped reading), which
    frees the connection. Returns False where the socket or the option is not available.
    """
    stream = transport_of(send)
    sock = getattr(stream, "socket", None)
    option = getattr(socket_module, "TCP_USER_TIMEOUT", None)
    if sock is None or option is None:
        return False
    sock.setsockopt(socket_module.IPPROTO_TCP, option, int(seconds * 1000))
    return True


def is_closed(send: Callable[..., Any]) -> bool:
    """True once Hypercorn considers the WebSocket under ``send`` closed.

    After that Hypercorn's ``app_send`` silently discards what the app sends (and returns
    without a checkpoint).
    """
    return bool(getattr(_bound_self(send), "closed", False))


def refuse_compression(send: Callable[..., Any]) -> bool:
    """Make Hypercorn accept the WebSocket behind ``send`` without permessage-deflate.

    Hypercorn 0.18 negotiates permessage-deflate whenever the client offers it, and inflates a
    message before checking its size (https://github.com/pgjones/hypercorn/issues/307): a
    small compressed frame can take hundreds of MiB. Call before sending ``websocket.accept``.
    Returns False when the handshake could not be found.
    """
    handshake = getattr(_bound_self(send), "handshake", None)
    if handshake is None or not hasattr(handshake, "extensions"):
        return False
    handshake.extensions = None
    return True


class PeerClose:
    """The code and reason of the close frame a WebSocket's peer sent (``code`` None until then).

    Hypercorn 0.18 answers the peer's close frame itself and tells the app only
    ``websocket.disconnect`` with 1006 (``WSStream.handle(StreamClosed)``: the app had not
    closed), so the peer's own code and reason are lost; a proxy needs them to pass them on.
    """

    __slots__ = ("code", "reason")

    def __init__(self) -> None:
        self.code: int | None = None
        self.reason = ""


def watch_peer_close(send: Callable[..., Any]) -> PeerClose | None:
    """Record the peer's close frame on the WebSocket behind ``send``, or return None.

    Wraps ``events()`` of the connection's wsproto object, through which Hypercorn takes every
    close frame (the inbound tap leaves control frames to wsproto).
    """
    connection = getattr(_bound_self(send), "connection", None)
    if not isinstance(connection, WSConnection):
        return None
    watch = PeerClose()
    # Kept on the connection it reads, the override holds it weakly: no reference cycle.
    events = weak_original(connection, "events")

    def watched_events() -> Any:
        for event in events():
            if isinstance(event, CloseConnection):
                watch.code, watch.reason = event.code, event.reason or ""
            yield event

    setattr(connection, "events", watched_events)  # noqa: B010 - shadows the method
    return watch
