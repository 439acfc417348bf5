"""What triorelay needs from Hypercorn 0.18.0's trio worker that its public API does not give.

1. Shutdown is invisible to WebSocket apps. On SIGINT/SIGTERM Hypercorn stops accepting and then
   waits ``graceful_timeout`` for connections to end by themselves; a WebSocket app is never told,
   so every client ends up with 1006 when the deadline cancels it (Hypercorn's own lifespan
   shutdown only starts after that). Under the ``hypercorn`` CLI the worker is a child process
   told to stop through a ``multiprocessing.Event`` that Hypercorn polls
   (``hypercorn/trio/run.py: trio_worker``, ``hypercorn/run.py``):
   :func:`cli_shutdown_event` finds that event so the relay can watch it too.
2. Socket sends are shielded from cancellation (``hypercorn/trio/tcp_server.py:
   TCPServer.protocol_send``), so a send to a peer that stopped reading cannot be timed out and
   can block shutdown forever. :func:`abort_transport` closes the connection's socket from
   outside, which wakes the shielded send with ``ClosedResourceError`` (Hypercorn handles that
   as a closed connection).

The ASGI ``send`` callable that Hypercorn hands the app is the bound method
``WSStream.app_send``; from it we walk ``WSStream.send`` (``H11Protocol.stream_send``) and
``H11Protocol.send`` (``TCPServer.protocol_send``) to the ``TCPServer`` and its stream.
Upstream: https://github.com/pgjones/hypercorn/issues (graceful WebSocket shutdown, shielded
sends); these helpers return ``None`` / do nothing when the structure is not what they expect,
and ``tests/compat/test_hypercorn.py`` checks the structure against the pinned version.
"""

from __future__ import annotations

import logging
import multiprocessing
import struct
from collections.abc import Callable
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import trio
from hypercorn.events import Closed
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, TextMessage

log = logging.getLogger(__name__)


def _bound_self(method: object) -> Any:
    return getattr(method, "__self__", None)


def transport_of(send: Callable[..., Any]) -> trio.abc.Stream | None:
    """The trio stream under a Hypercorn WebSocket ``send`` callable, or None if not found."""
    ws_stream = _bound_self(send)
    protocol = _bound_self(getattr(ws_stream, "send", None))
    tcp_server = _bound_self(getattr(protocol, "send", None))
    stream = getattr(tcp_server, "stream", None)
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


def is_closed(send: Callable[..., Any]) -> bool:
    """True once Hypercorn considers the WebSocket under ``send`` closed.

    After that Hypercorn's ``app_send`` silently discards what the app sends (and returns
    without a checkpoint).
    """
    return bool(getattr(_bound_self(send), "closed", False))


def cli_shutdown_event() -> ProcessEvent | None:
    """The event the ``hypercorn`` CLI sets to stop this worker process, if we are one."""
    kwargs = getattr(multiprocessing.current_process(), "_kwargs", None) or {}
    event = kwargs.get("shutdown_event")
    return event if isinstance(event, ProcessEvent) else None


async def wait_for_cli_shutdown(event: ProcessEvent, poll_seconds: float = 0.05) -> None:
    """Return once the Hypercorn CLI asks this worker to stop (polled, as Hypercorn does)."""
    while not event.is_set():  # noqa: ASYNC110 - a multiprocessing event cannot be awaited
        await trio.sleep(poll_seconds)
    log.info("the hypercorn supervisor asked this worker to stop")


class DirectWebSocket:
    """Batch access to one accepted Hypercorn WebSocket, beside its ASGI callables.

    Hypercorn turns each ASGI ``websocket.send`` into one wsproto frame, one lock, one shielded
    scope and one socket write, and hands each inbound message over a memory channel with a
    checkpoint. Under load a relay has several messages ready at once; this writes them as one
    socket write (:meth:`send_messages`) and reads what is already queued without a task switch
    (:meth:`receive_nowait`). It uses ``WSStream.connection`` (wsproto), ``TCPServer.send_lock``
    and ``TCPServer.stream`` exactly as ``TCPServer.protocol_send`` does, shield included, so
    frames never interleave with Hypercorn's own (pings, close).

    :func:`open_direct` returns None when the structure is not the expected one; callers then
    use the ASGI callables.
    """

    def __init__(self, ws_stream: Any, tcp_server: Any, receive_channel: Any) -> None:
        self._ws_stream = ws_stream
        self._tcp_server = tcp_server
        self._receive_channel = receive_channel

    def receive_nowait(self) -> dict[str, Any]:
        """The next queued ASGI event, or raise :class:`trio.WouldBlock`."""
        event: dict[str, Any] = self._receive_channel.receive_nowait()
        return event

    async def send_messages(self, payloads: list[bytes | str]) -> None:
        """Send ``payloads`` as WebSocket messages in one socket write.

        Does nothing once the connection is closed, like Hypercorn's ``app_send``. When the
        socket takes the whole write at once (the common case), this does not yield; otherwise
        the rest goes out shielded under the send lock, as Hypercorn sends.
        """
        ws_stream = self._ws_stream
        connection = ws_stream.connection
        if ws_stream.closed or connection.state is not ConnectionState.OPEN:
            await trio.lowlevel.checkpoint()
            return
        if any(extension.enabled() for extension in connection._proto.extensions):
            data = b"".join([connection.send(_as_event(p)) for p in payloads])
        else:
            data = b"".join([_frame(p) for p in payloads])
        tcp_server = self._tcp_server
        lock: trio.Lock = tcp_server.send_lock
        if not lock.locked():
            # Nobody else is writing, and we do not yield before writing: try the socket now.
            try:
                sent = tcp_server.stream.socket._sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                await tcp_server.protocol.handle(Closed())
                return
            if sent == len(data):
                return
            data = data[sent:]
        async with lock:
            try:
                with trio.CancelScope(shield=True):
                    await tcp_server.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await tcp_server.protocol.handle(Closed())


def _as_event(payload: bytes | str) -> TextMessage | BytesMessage:
    if isinstance(payload, str):
        return TextMessage(data=payload)
    return BytesMessage(data=payload)


_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def _frame(payload: bytes | str) -> bytes:
    """One unfragmented, unmasked server frame (RFC 6455 section 5.2) holding ``payload``."""
    if isinstance(payload, str):
        first, data = 0x81, payload.encode()
    else:
        first, data = 0x82, payload
    length = len(data)
    if length < 126:
        return _SHORT.pack(first, length) + data
    if length < 65536:
        return _MEDIUM.pack(first, 126, length) + data
    return _LONG.pack(first, 127, length) + data


def open_direct(receive: Callable[..., Any], send: Callable[..., Any]) -> DirectWebSocket | None:
    """Batch access to the accepted WebSocket behind ``receive``/``send``, or None."""
    ws_stream = _bound_self(send)
    protocol = _bound_self(getattr(ws_stream, "send", None))
    tcp_server = _bound_self(getattr(protocol, "send", None))
    receive_channel = _bound_self(receive)
    if (
        not isinstance(getattr(ws_stream, "connection", None), WSConnection)
        or not isinstance(getattr(tcp_server, "send_lock", None), trio.Lock)
        or not isinstance(getattr(tcp_server, "stream", None), trio.abc.Stream)
        or not isinstance(receive_channel, trio.MemoryReceiveChannel)
    ):
        return None
    return DirectWebSocket(ws_stream, tcp_server, receive_channel)
