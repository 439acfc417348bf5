"""Batched writes and queued reads on one Hypercorn 0.18.0 WebSocket, beside its ASGI callables.

Hypercorn turns each ASGI ``websocket.send`` into one wsproto frame, one lock, one shielded scope
and one socket write (``hypercorn/protocol/ws_stream.py: WSStream.app_send``,
``hypercorn/trio/tcp_server.py: TCPServer.protocol_send``). :class:`DirectWebSocket` writes the
relay's frames (:mod:`triorelay.wire`) itself, under the same ``TCPServer.send_lock``, so they
never interleave with Hypercorn's own (pongs, close). Upstream: sends are shielded and cannot be
cancelled, https://github.com/pgjones/hypercorn/issues; the structure is checked by
``tests/compat/hypercorn/test_structure.py``.

The lock itself is replaced, on each connection the relay writes to directly, by a
:class:`SendLock` that any task may release: a fan-out writes a message to a consumer's socket
from the publishing task (:meth:`DirectWebSocket.send_nowait`), and when the socket takes only
part of the frame, the lock stays taken until the consumer's own writer has written the rest.
Hypercorn only ever takes it with ``async with self.send_lock`` (checked by the same test).
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
from triorelay.compat.hypercorn.app_queue import AppQueue
from triorelay.wire.frames import LastFrame, Payload, serialize_message, serialize_ping

#: Read per message written (``ConnectionState.OPEN`` itself is an enum member read, 0.17 µs
#: on CPython 3.11; a module constant is a tenth of that).
_OPEN = ConnectionState.OPEN

_frames = LastFrame()
"""Encodes each message once however many consumers it is written to: a fan-out writes one
message to every consumer in a row (one per process: trio runs one task at a time)."""


class SendLock:
    """``TCPServer.send_lock`` for a connection the relay writes to directly: a lock that the
    task which took it may leave to another task to release.

    Like :class:`trio.Lock` for everything Hypercorn does with it (``async with``: FIFO, handed
    to the next waiter on release; acquiring is cancellable, releasing never waits), but without
    an owner: :meth:`DirectWebSocket.send_nowait` may take it in the publishing task, write part
    of a frame, and leave the lock taken for the consumer's writer, which writes the rest and
    releases it (:meth:`DirectWebSocket.finish_messages`). No frame ever interleaves with
    another, as with Hypercorn's own lock.
    """

    __slots__ = ("_held", "_lot")

    def __init__(self) -> None:
        self._held = False
        self._lot = trio.lowlevel.ParkingLot()

    def locked(self) -> bool:
        return self._held

    def acquire_nowait(self) -> None:
        """Take the lock, or raise :class:`trio.WouldBlock`."""
        if self._held:
            raise trio.WouldBlock
        self._held = True

    async def acquire(self) -> None:
        """Take the lock, waiting (cancellably) for it if it is taken."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._held:
            await self._lot.park()  # release() hands the lock over: it stays taken, for us
        else:
            self._held = True
            await trio.lowlevel.cancel_shielded_checkpoint()

    def release(self) -> None:
        """Release the lock, or hand it to the task that has waited longest."""
        if not self._held:
            raise RuntimeError("the send lock is not taken")
        if self._lot:
            self._lot.unpark()
        else:
            self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class _NeverFree(SendLock):
    """Where :class:`DirectWebSocket` may not write from another task: a lock that is always
    taken, and that nothing may release."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__()
        self._held = True

    def release(self) -> None:
        raise RuntimeError("this lock is never released")


_NEVER_FREE = _NeverFree()


class DirectWebSocket:
    """Batch access to one accepted Hypercorn WebSocket, beside its ASGI callables.

    Hypercorn turns each ASGI ``websocket.send`` into one wsproto frame, one lock, one shielded
    scope and one socket write, and hands each inbound message over a memory channel with a
    checkpoint. Under load a relay has several messages ready at once; this writes them as one
    socket write (:meth:`send_messages`) and reads what is already queued without a task switch
    (:meth:`receive_nowait`). It uses ``WSStream.connection`` (wsproto, for its state and when
    compression is on), ``TCPServer.send_lock`` and ``TCPServer.stream`` as
    ``TCPServer.protocol_send`` does: every write that may wait holds the lock from its first
    byte to its last (a non-blocking one, :meth:`send_nowait`, takes it only for a rest the
    socket did not take: it does not yield, so no other writer runs meanwhile), and a write
    that has started finishes shielded, so frames never interleave with Hypercorn's own
    (pongs, close) and a cancellation never leaves half a frame on the wire.

    :func:`open_direct` returns None when the structure is not the expected one; callers then
    use the ASGI callables. Made once the connection is accepted (the extensions are settled);
    it replaces the connection's send lock with a :class:`SendLock` if that lock is free then,
    and :meth:`send_nowait` writes only with one.
    """

    def __init__(self, ws_stream: Any, tcp_server: Any, receive_channel: Any) -> None:
        self._ws_stream = ws_stream
        self._tcp_server = tcp_server
        self._receive_channel = receive_channel
        self._sock = tcp_server.stream.socket._sock
        lock = tcp_server.send_lock
        if isinstance(lock, trio.Lock) and not lock.locked():
            # Nobody holds it or waits for it (waiters exist only while it is held), and
            # nothing checkpoints between this look and the swap.
            lock = tcp_server.send_lock = SendLock()
        #: Set once, at the handshake (``WSStream._accept``), for the connection's life.
        self._connection = connection = ws_stream.connection
        #: No extension is on (compression): the relay's own frames go as they are.
        self._plain = not any(extension.enabled() for extension in connection._proto.extensions)
        #: What :meth:`send_nowait` and :meth:`send_many_nowait` look at first: the send lock,
        #: or, where nothing may be written from another task (Hypercorn kept its own lock,
        #: or compression is on), a lock that is never free. One check instead of three.
        self._direct_lock = lock if isinstance(lock, SendLock) and self._plain else _NEVER_FREE

    @property
    def writes_directly(self) -> bool:
        """Whether :meth:`send_nowait` can ever write (plain frames, the relay's send lock):
        where not, a writer need not offer it to the hub."""
        return self._direct_lock is not _NEVER_FREE

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
        return await self._write(self._encode(payloads))

    async def finish_messages(self, rest: bytes, payloads: list[Payload]) -> bool:
        """Write ``rest``, what the socket did not take of a frame :meth:`send_nowait` began
        (the send lock is still taken for it), then ``payloads``, in one write; release the
        lock. Returns False once the socket fails.

        The rest goes out whatever the connection's state (a close frame Hypercorn has queued
        waits for the lock, behind it); ``payloads`` only while the connection is open. It
        never waits for the lock, and once any byte is out the rest follows shielded, so a
        cancellation cannot cut the frame.
        """
        data = rest + self._encode(payloads) if payloads and self._is_open() else rest
        return await self._write(data, held=True)

    def _encode(self, payloads: list[Payload]) -> bytes:
        if self._plain:
            return b"".join([serialize_message(p) for p in payloads])
        connection = self._ws_stream.connection
        return b"".join([connection.send(_as_event(p)) for p in payloads])

    def send_nowait(self, payload: Payload) -> bool | bytes:
        """Write one message now if that needs no waiting; any task may call it.

        Returns True once the socket took the whole frame; False, having written nothing, when
        the connection is closed or closing, compression is on, another write holds the send
        lock (or the connection kept Hypercorn's own lock), the socket is full, or it failed
        (the next :meth:`send_messages` says so); or, when the socket took only part of the
        frame, the rest of it, as bytes. The send lock then stays taken for that rest, and
        the caller must see that :meth:`finish_messages` writes it before anything else is
        written on this connection (nothing else can: every other writer waits for the lock).
        Each message is encoded once however many connections it is written to.
        """
        # Per delivery of a fan-out, so in one frame: the checks, the encoding, the write.
        lock = self._direct_lock
        if (
            lock._held
            or self._ws_stream.closed
            # ``Connection.state`` returns ``_state``: read directly, a property call less
            # per delivery (pinned wsproto 1.3.2; tests/compat/hypercorn/test_structure.py).
            or self._connection._state is not _OPEN
        ):
            return False
        last = _frames.last
        frame = last[1] if last[0] is payload else _frames(payload)
        # _write_nowait, inlined (a call less per delivery).
        try:
            sent: int = self._sock.send(frame)
        except OSError:  # BlockingIOError (full), or failed: the writer's own write will tell
            return False
        if sent == len(frame):
            return True
        if not sent:
            return False
        lock._held = True  # for the rest, which the consumer's writer writes and releases
        return frame[sent:]

    def send_many_nowait(self, payloads: list[Payload]) -> bool | bytes:
        """:meth:`send_nowait` for several messages, in one socket write (acks).

        Not with compression on either: encoding advances the compressor, so a batch encoded
        and then not written could not be encoded again for :meth:`send_messages`."""
        lock = self._direct_lock
        if lock._held or not self._is_open():
            return False
        return self._write_nowait(lock, b"".join([serialize_message(p) for p in payloads]))

    def _write_nowait(self, lock: SendLock, data: bytes) -> bool | bytes:
        """One non-blocking write of ``data``, the send ``lock`` free (see :meth:`send_nowait`
        for what it returns; a rest leaves the lock taken).

        The lock is not taken for the write itself: the write does not yield, so no other
        writer can run until it returns; only a rest takes it, for the writer that writes it.
        """
        try:
            sent: int = self._sock.send(data)
        except OSError:  # BlockingIOError (full), or failed: the writer's own write will tell
            return False
        if sent == len(data):
            return True
        if not sent:
            return False
        lock._held = True
        return data[sent:]

    async def _write(self, data: bytes, *, skip_if_busy: bool = False, held: bool = False) -> bool:
        """Write ``data`` whole under ``TCPServer.send_lock``, as ``protocol_send`` does.

        With ``skip_if_busy``, write nothing (and return False) when the lock is taken or the
        socket is full; with ``held``, the lock is already taken for this write (the rest of a
        frame :meth:`send_nowait` began).
        """
        tcp_server = self._tcp_server
        lock: trio.Lock | SendLock = tcp_server.send_lock
        if held:
            pass
        elif not lock.locked():
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
        except (
            OSError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            # Hypercorn's TCPServer._close is in the stream's send_eof (which it calls
            # without the send lock): the connection is closing, as for a broken socket.
            trio.BusyResourceError,
        ):
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
            sent: int = self._sock.send(data)
        except BlockingIOError:
            return 0
        return sent

    def _is_open(self) -> bool:
        ws_stream = self._ws_stream
        return not ws_stream.closed and ws_stream.connection.state is _OPEN

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
        or not isinstance(getattr(tcp_server, "send_lock", None), trio.Lock | SendLock)
        # Plain TCP only: the direct write goes to the socket (TLS keeps Hypercorn's sends).
        or not isinstance(getattr(tcp_server, "stream", None), trio.SocketStream)
        or not isinstance(receive_channel, trio.MemoryReceiveChannel | AppQueue)
    ):
        return None
    return DirectWebSocket(ws_stream, tcp_server, receive_channel)
