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
import socket as socket_module
from collections.abc import Awaitable, Callable
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import trio
from hypercorn.events import Closed
from hypercorn.protocol.events import Data
from hypercorn.protocol.ws_stream import ASGIWebsocketState
from hypercorn.trio import run as run_module
from hypercorn.trio.tcp_server import TCPServer
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from triorelay.compat.message_limits import LimitedBuffer
from triorelay.wire.frames import Fail, FrameParser, HandOff, serialize_message, serialize_ping

log = logging.getLogger(__name__)

_CONNECTED = ASGIWebsocketState.CONNECTED


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
    events = connection.events

    def watched_events() -> Any:
        for event in events():
            if isinstance(event, CloseConnection):
                watch.code, watch.reason = event.code, event.reason or ""
            yield event

    setattr(connection, "events", watched_events)  # noqa: B010 - shadows the method
    return watch


def cli_shutdown_event() -> ProcessEvent | None:
    """The event the ``hypercorn`` CLI sets to stop this worker process, if we are one."""
    kwargs = getattr(multiprocessing.current_process(), "_kwargs", None) or {}
    event = kwargs.get("shutdown_event")
    return event if isinstance(event, ProcessEvent) else None


def cli_worker_count() -> int:
    """How many worker processes the ``hypercorn`` CLI runs, if this is one of them; else 0.

    Reads the ``config`` Hypercorn passes to each worker (``hypercorn/run.py``, ``_populate``).
    """
    kwargs = getattr(multiprocessing.current_process(), "_kwargs", None) or {}
    workers = getattr(kwargs.get("config"), "workers", 0)
    return workers if isinstance(workers, int) else 0


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
        skipped (nothing written) when another write holds the lock or the socket is full."""
        await self._write(data, skip_if_busy=True)


def _as_event(payload: bytes | str) -> TextMessage | BytesMessage:
    if isinstance(payload, str):
        return TextMessage(data=payload)
    return BytesMessage(data=payload)


def open_direct(receive: Callable[..., Any], send: Callable[..., Any]) -> DirectWebSocket | None:
    """Batch access to the accepted WebSocket behind ``receive``/``send``, or None."""
    ws_stream = _bound_self(send)
    protocol = _bound_self(getattr(ws_stream, "send", None))
    tcp_server = _bound_self(getattr(protocol, "send", None))
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


OnMessages = Callable[[list[bytes | str]], Awaitable[None]]
OnInvalid = Callable[[int, str], None]
"""Called with a close code and reason when the peer sent something the relay refuses."""


class InboundTap:
    """Hands a WebSocket's inbound messages to the relay from Hypercorn's own reader task.

    Hypercorn parses each frame with wsproto, copies each message through a ``StringIO`` and
    hands it to the app task over a memory channel, with a task switch per message. The tap
    replaces both steps for the common case:

    - ``WSStream.handle`` is wrapped: complete, unfragmented, masked text/binary frames without
      RSV bits are parsed here, a whole TCP read at a time. Anything else (control frames,
      fragments, compression, invalid UTF-8, a frame over the size limit) goes to wsproto
      exactly as before, from that frame on, until wsproto is idle again.
    - ``WSStream.app_put`` is wrapped: messages wsproto produced go to the same callback instead
      of the app's channel, so every message arrives in order, on one task.

    ``on_messages`` runs in Hypercorn's reader task: it must not raise (except Cancelled), and
    whatever it waits for is backpressure on that connection's socket. :meth:`remove` restores
    Hypercorn's behaviour.
    """

    def __init__(
        self,
        ws_stream: Any,
        receive_channel: trio.MemoryReceiveChannel[Any],
        on_messages: OnMessages,
        on_invalid: OnInvalid,
        max_message_bytes: int,
    ) -> None:
        self._ws_stream = ws_stream
        self._on_messages = on_messages
        self._on_invalid = on_invalid
        #: trio.current_time() of the last bytes received from the peer (for dead-peer checks).
        self.last_received = trio.current_time()
        #: Called instead of queueing ``websocket.disconnect`` for the app, when set.
        self.on_disconnect: Callable[[], None] | None = None
        self._failed = False
        self._max_message_bytes = max_message_bytes
        # Set by compat.message_limits.limit_inbound: what goes to wsproto is bounded there.
        buffer = getattr(ws_stream, "buffer", None)
        self._limit = buffer if isinstance(buffer, LimitedBuffer) else None
        # Simple frames only: control frames and fragments stay with wsproto, which answers
        # pings and the close handshake for Hypercorn.
        self._parser = FrameParser(max_message_bytes, frames="simple")
        self._handle = ws_stream.handle
        self._app_put = ws_stream.app_put
        ws_stream.handle = self._tapped_handle
        ws_stream.app_put = self._tapped_app_put
        # Messages that reached the app's channel before the tap (during the accept) are
        # delivered first, by start(); until then the reader waits, so the order holds.
        self._started = trio.Event()
        self._backlog: list[bytes | str] = []
        channel = _bound_self(self._app_put)
        held: list[dict[str, Any]] = []
        while True:
            try:
                event = receive_channel.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if event["type"] == "websocket.receive" and not held:
                payload = event.get("bytes")
                self._backlog.append(payload if payload is not None else event["text"])
            else:
                held.append(event)
        for event in held:  # a disconnect (and anything after it) goes back for the app
            channel.send_nowait(event)
        self._disconnected_early = any(e["type"] == "websocket.disconnect" for e in held)

    async def start(self) -> None:
        """Deliver what arrived before the tap, then let the reader deliver directly."""
        try:
            if self._backlog:
                backlog, self._backlog = self._backlog, []
                await self._on_messages(backlog)
        finally:
            self._started.set()
        if self._disconnected_early and self.on_disconnect is not None:
            self.on_disconnect()

    async def _deliver(self, messages: list[bytes | str]) -> None:
        if not self._started.is_set():
            await self._started.wait()
        await self._on_messages(messages)

    def remove(self) -> None:
        """Give the connection back to Hypercorn's own reading.

        Called when the relay's handler ends, so the connection is closing: a partial frame
        still held back is dropped with it.
        """
        ws_stream = self._ws_stream
        if ws_stream.handle == self._tapped_handle:
            ws_stream.handle = self._handle
            ws_stream.app_put = self._app_put

    async def _tapped_app_put(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.receive":
            payload = message.get("bytes")
            await self._deliver([payload if payload is not None else message["text"]])
        elif message["type"] == "websocket.disconnect" and self.on_disconnect is not None:
            self.on_disconnect()
        else:
            await self._app_put(message)

    def _wsproto_idle(self) -> bool:
        ws_stream = self._ws_stream
        proto = ws_stream.connection._proto
        decoder = proto._frame_decoder
        return (
            ws_stream.buffer.value is None
            and decoder.header is None
            and len(decoder.buffer.buffer) == decoder.buffer.bytes_used
            and proto._message_decoder.opcode is None
            and not any(extension.enabled() for extension in proto.extensions)
        )

    def _fail(self, code: int, reason: str) -> None:
        self._failed = True
        self._parser.take_buffered()
        self._on_invalid(code, reason)

    async def _tapped_handle(self, event: Any) -> None:
        ws_stream = self._ws_stream
        if isinstance(event, Data):
            self.last_received = trio.current_time()
        if self._failed and isinstance(event, Data):
            return  # the connection is being closed for invalid data: read no further
        if (
            not isinstance(event, Data)
            or ws_stream.closed
            or ws_stream.state is not _CONNECTED
            or not self._wsproto_idle()
        ):
            if self._parser.buffered_bytes and isinstance(event, Data):
                # A partial simple frame was held back: wsproto gets it whole.
                held = self._parser.take_buffered()
                event = Data(stream_id=event.stream_id, data=held + event.data)
            await self._to_wsproto(event)
            return
        events = self._parser.feed(event.data)
        if not events:
            return
        last = events[-1]
        if isinstance(last, HandOff | Fail):
            events.pop()  # the parser stops there: everything before it is a message
        if events:
            await self._deliver([e for e in events if isinstance(e, (bytes, str))])
        if isinstance(last, Fail):
            # wsproto would fail the connection without a close frame (1002, 1007) or buffer
            # the frame whole before checking its size (1009,
            # https://github.com/pgjones/hypercorn/issues/307): close with the parser's code.
            self._fail(last.code, last.reason)
        elif isinstance(last, HandOff):
            await self._to_wsproto(Data(stream_id=event.stream_id, data=last.data))

    async def _to_wsproto(self, event: Any) -> None:
        await self._handle(event)
        if self._limit is not None and self._limit.exceeded and not self._failed:
            # A fragmented or compressed message passed the limit: Hypercorn has closed with
            # 1009 (compat.message_limits). Read no further, and end the relay's handler.
            self._fail(1009, f"message over the limit of {self._max_message_bytes} bytes")


def tap_inbound(
    receive: Callable[..., Any],
    send: Callable[..., Any],
    on_messages: OnMessages,
    on_invalid: OnInvalid,
    max_message_bytes: int,
) -> InboundTap | None:
    """Install an :class:`InboundTap` on the accepted WebSocket behind ``send``, or None."""
    ws_stream = _bound_self(send)
    connection = getattr(ws_stream, "connection", None)
    receive_channel = _bound_self(receive)
    if (
        not isinstance(connection, WSConnection)
        or not isinstance(receive_channel, trio.MemoryReceiveChannel)
        or not isinstance(_bound_self(getattr(ws_stream, "app_put", None)), trio.MemorySendChannel)
        or not hasattr(ws_stream, "app_put")
        or getattr(ws_stream, "state", None) is not _CONNECTED
        or not hasattr(getattr(connection, "_proto", None), "_frame_decoder")
    ):
        return None
    return InboundTap(ws_stream, receive_channel, on_messages, on_invalid, max_message_bytes)


def isolate_connection_errors() -> None:
    """Keep one connection's failure from taking the whole server down. Idempotent.

    Hypercorn 0.18's trio worker runs every connection in one handler nursery, and lets an
    exception from a connection escape into it: an upgrade request followed by more bytes in
    the same write makes h11 fail inside the app's ``accept`` and again in Hypercorn's own
    cleanup, which ends the server (https://github.com/pgjones/hypercorn/issues/225).
    ``worker_serve`` looks ``TCPServer`` up in ``hypercorn.trio.run`` when it serves, so
    replacing it there before serving (what ``create_app`` does) covers both
    ``hypercorn -k trio`` and ``triorelay serve``.
    """
    if getattr(run_module, "TCPServer", None) is not _IsolatedTCPServer:
        setattr(run_module, "TCPServer", _IsolatedTCPServer)  # noqa: B010 - not re-exported


class _IsolatedTCPServer(TCPServer):
    """Hypercorn's TCPServer, whose failures end only their own connection."""

    async def run(self) -> None:
        try:
            await super().run()
        except* Exception as failure:
            log.warning(
                "dropped a connection after an error in the server: %s",
                "; ".join(repr(error) for error in failure.exceptions),
            )
            await trio.aclose_forcefully(self.stream)
