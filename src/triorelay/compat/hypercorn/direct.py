"""Batched writes and queued reads on one Hypercorn 0.18.0 WebSocket, beside its ASGI callables.

Hypercorn turns each ASGI ``websocket.send`` into one wsproto frame, one lock, one shielded scope
and one socket write (``hypercorn/protocol/ws_stream.py: WSStream.app_send``,
``hypercorn/trio/tcp_server.py: TCPServer.protocol_send``). :class:`DirectWebSocket` writes the
relay's frames (:mod:`triorelay.wire`) itself, under the same ``TCPServer.send_lock``, so they
never interleave with Hypercorn's own (pongs, close). Upstream: sends are shielded and cannot be
cancelled, https://github.com/pgjones/hypercorn/issues; the structure is checked by
``tests/compat/hypercorn/test_structure.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from hypercorn.events import Closed
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, TextMessage

from triorelay.compat.hypercorn._chain import bound_self as _bound_self
from triorelay.compat.hypercorn._chain import tcp_server_of
from triorelay.wire.frames import serialize_message, serialize_ping


class DirectWebSocket:
    """Batch access to one accepted Hypercorn WebSocket, beside its ASGI callables.

    Hypercorn turns each ASGI ``websocket.send`` into one wsproto frame, one lock, one shielded
    scope and one socket write, and hands each inbound message over a memory channel with a
    checkpoint. Under load a relay has several messages ready at once; this writes them as one
    socket write (:meth:`send_messages`) and reads what is already queued without a task switch
    (:meth:`receive_nowait`). It uses ``WSStream.connection`` (wsproto, for its state and when
    compression is on), ``TCPServer.send_lock`` and ``TCPServer.stream`` as
    ``TCPServer.protocol_send`` does: every write holds the lock from its first byte to its
    last, and a write that has started finishes shielded, so frames never interleave with
    Hypercorn's own (pongs, close) and a cancellation never leaves half a frame on the wire.

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

    async def send_messages(self, payloads: list[bytes | str]) -> bool:
        """Send ``payloads`` as WebSocket messages in one socket write.

        Returns False, having sent nothing, once the connection is closed or closing (where
        Hypercorn's ``app_send`` silently drops messages), or when the socket fails. When the
        send lock is free and the socket takes the whole write at once (the common case), this
        does not yield. Cancelled while waiting for the lock, it has written nothing; once any
        byte is written, the rest follows, shielded, before the lock is released, so a frame is
        never cut by a cancellation or by another writer's frame.
        """
        if not self._is_open():
            await trio.lowlevel.checkpoint()
            return False
        connection = self._ws_stream.connection
        if any(extension.enabled() for extension in connection._proto.extensions):
            data = b"".join([connection.send(_as_event(p)) for p in payloads])
        else:
            data = b"".join([serialize_message(p) for p in payloads])
        return await self._write(data)

    async def _write(self, data: bytes, *, skip_if_busy: bool = False) -> bool:
        """Write ``data`` whole under ``TCPServer.send_lock``, as ``protocol_send`` does.

        With ``skip_if_busy``, write nothing (and return False) when the lock is taken or the
        socket is full.
        """
        tcp_server = self._tcp_server
        lock: trio.Lock = tcp_server.send_lock
        if not lock.locked():
            # No checkpoint from here to the send: neither a cancellation nor another writer
            # can come between taking the lock and the first byte.
            lock.acquire_nowait()
        elif skip_if_busy:
            return False
        else:
            await lock.acquire()  # cancellable: nothing is written yet
        try:
            sent = self._send_now(data)
            if sent < len(data):
                if not sent and skip_if_busy:
                    return False
                # Part of a frame may be out: the rest must follow before anything else,
                # whatever is cancelled meanwhile (Hypercorn shields its sends the same way).
                with trio.CancelScope(shield=True):
                    await tcp_server.stream.send_all(data[sent:])
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            failed = True
        else:
            failed = False
        finally:
            lock.release()
        if failed:
            await tcp_server.protocol.handle(Closed())
            return False
        return True

    def _send_now(self, data: bytes) -> int:
        """Write what the socket takes at once; 0 when it is full. Other errors propagate."""
        try:
            sent: int = self._tcp_server.stream.socket._sock.send(data)
        except BlockingIOError:
            return 0
        return sent

    def _is_open(self) -> bool:
        ws_stream = self._ws_stream
        return not ws_stream.closed and ws_stream.connection.state is ConnectionState.OPEN

    def ping_nowait(self) -> bytes | None:
        """A ping frame to write with :meth:`finish_write`, or None when no ping can go now.

        None when the connection is closed or another write is in progress (skipped this time).
        The frame is not written here: a partial write must finish under the send lock, which
        only the task that writes can hold, so the caller hands the frame to a task.
        """
        if not self._is_open() or self._tcp_server.send_lock.locked():
            return None
        return serialize_ping()

    async def finish_write(self, data: bytes) -> None:
        """Write the ping frame from :meth:`ping_nowait` like any other frame, except that it is
        skipped (nothing written) when another write holds the lock, the socket is full, or the
        connection closed meanwhile (no ping after a close frame)."""
        if self._is_open():
            await self._write(data, skip_if_busy=True)


def _as_event(payload: bytes | str) -> TextMessage | BytesMessage:
    if isinstance(payload, str):
        return TextMessage(data=payload)
    return BytesMessage(data=payload)


def open_direct(receive: Callable[..., Any], send: Callable[..., Any]) -> DirectWebSocket | None:
    """Batch access to the accepted WebSocket behind ``receive``/``send``, or None."""
    ws_stream = _bound_self(send)
    tcp_server = tcp_server_of(send)
    receive_channel = _bound_self(receive)
    if (
        not isinstance(getattr(ws_stream, "connection", None), WSConnection)
        or not isinstance(getattr(tcp_server, "send_lock", None), trio.Lock)
        # Plain TCP only: the direct write goes to the socket (TLS keeps Hypercorn's sends).
        or not isinstance(getattr(tcp_server, "stream", None), trio.SocketStream)
        or not isinstance(receive_channel, trio.MemoryReceiveChannel)
    ):
        return None
    return DirectWebSocket(ws_stream, tcp_server, receive_channel)
