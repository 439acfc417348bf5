"""A WebSocket's inbound messages, read from Hypercorn 0.18.0's own reader task.

Hypercorn parses each frame with wsproto, copies each message through a ``StringIO`` and hands it
to the app task over a memory channel, with a task switch per message
(``hypercorn/protocol/ws_stream.py: WSStream.handle``, ``WSStream.app_put``).
:class:`InboundTap` parses simple frames itself with :class:`triorelay.wire.FrameParser`, and
refuses an oversized frame on its header, where Hypercorn would buffer it whole before checking
(https://github.com/pgjones/hypercorn/issues/307). The structure it wraps is checked by
``tests/compat/hypercorn/test_structure.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.protocol.events import Data
from hypercorn.protocol.h11 import STREAM_ID as _STREAM_ID
from hypercorn.protocol.h11 import H11WSConnection
from wsproto.connection import Connection as WSConnection

from triorelay.compat.hypercorn._chain import CONNECTED as _CONNECTED
from triorelay.compat.hypercorn._chain import bound_self as _bound_self
from triorelay.compat.hypercorn.app_queue import AppQueue
from triorelay.compat.hypercorn.reads import ReadLoop
from triorelay.compat.message_limits import LimitedBuffer
from triorelay.compat.overrides import put_back
from triorelay.wire.frames import Fail, FrameParser, HandOff

OnMessages = Callable[[list[bytes | str]], Awaitable[None]]
OnInvalid = Callable[[int, str], None]
"""Called with a close code and reason when the peer sent something the relay refuses."""


class InboundTap:
    """Hands a WebSocket's inbound messages to the relay from Hypercorn's own reader task.

    Hypercorn parses each frame with wsproto, copies each message through a ``StringIO`` and
    hands it to the app task over a memory channel, with a task switch per message. The tap
    replaces both steps for the common case:

    - ``WSStream.handle`` is wrapped: while wsproto is idle and no extension is on, a
      :class:`~triorelay.wire.FrameParser` (``frames="simple"``) takes each TCP read and parses
      complete, unfragmented, masked text/binary frames. Control frames and fragments go to
      wsproto, from that frame on, until wsproto is idle again (so it answers pings and the
      close handshake); so does everything while compression is on. A frame the parser refuses
      (RFC 6455 violations 1002, invalid UTF-8 1007, a declared length over the limit 1009)
      calls ``on_invalid`` and nothing more is read: wsproto would fail the connection without
      a close frame, or buffer the frame whole before checking its size.
    - ``WSStream.app_put`` is wrapped: messages wsproto produced go to the same callback instead
      of the app's channel, so every message arrives in order, on one task.

    ``on_messages`` runs in Hypercorn's reader task: it must not raise (except Cancelled), and
    whatever it waits for is backpressure on that connection's socket. :meth:`remove` restores
    Hypercorn's behaviour. Where the connection reads with
    :class:`~triorelay.compat.hypercorn.reads.ReadLoop` (the relay's own worker class), each
    read comes here straight from the loop (``ReadLoop.on_data``), past the HTTP/1.1 layer
    that would only pass it on.
    """

    def __init__(
        self,
        ws_stream: Any,
        receive_channel: trio.MemoryReceiveChannel[Any] | AppQueue,
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
        self._reader = _read_loop_of(ws_stream)
        if self._reader is not None:
            self._reader.on_data = self._on_data
            self._reader.websocket = ws_stream.connection
        # Messages that reached the app's channel before the tap (during the accept) are
        # delivered first, by start(); until then the reader waits, so the order holds. The
        # event it waits on is made only if it has to (a read before start(), which is rare):
        # one held for the connection's life would be 0.6 KB per idle connection.
        self._started = False
        self._start_wanted: trio.Event | None = None
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
            self._started = True
            if self._start_wanted is not None:
                self._start_wanted.set()
                self._start_wanted = None
        if self._disconnected_early and self.on_disconnect is not None:
            self.on_disconnect()

    async def _deliver(self, messages: list[bytes | str]) -> None:
        if not self._started:
            if self._start_wanted is None:
                self._start_wanted = trio.Event()
            await self._start_wanted.wait()
        await self._on_messages(messages)

    def remove(self) -> None:
        """Give the connection back to Hypercorn's own reading.

        Called when the relay's handler ends, so the connection is closing: a partial frame
        still held back is dropped with it, and so are messages read and not delivered yet.
        A read waiting for :meth:`start` (the handler ended before it started the tap: a
        resume refused, the broker gone) goes on without delivering: Hypercorn's reader task
        waited there for good, the connection's objects with it.
        """
        ws_stream = self._ws_stream
        if self._reader is not None:
            self._reader.on_data = None
        if ws_stream.handle == self._tapped_handle:
            put_back(ws_stream, "handle", self._handle)
            put_back(ws_stream, "app_put", self._app_put)
        self._on_messages = _discard
        self.on_disconnect = None  # the relay's handler, and what it holds, can go
        self._backlog = []
        self._started = True
        if self._start_wanted is not None:
            self._start_wanted.set()
            self._start_wanted = None

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
            and not (proto.extensions and any(e.enabled() for e in proto.extensions))
        )

    def _fail(self, code: int, reason: str) -> None:
        self._failed = True
        self._parser.take_buffered()
        self._on_invalid(code, reason)

    async def _on_data(self, data: bytes) -> None:
        """One read, from the read loop: what ``H11Protocol`` would hand on as ``Data``."""
        await self._data(data, _STREAM_ID)

    async def _tapped_handle(self, event: Any) -> None:
        if type(event) is Data:
            await self._data(event.data, event.stream_id)
        else:
            await self._to_wsproto(event)

    async def _data(self, data: bytes, stream_id: int) -> None:
        """What the peer sent, a TCP read at a time: simple frames parsed here, the rest to
        wsproto."""
        self.last_received = trio.current_time()
        if self._failed:
            return  # the connection is being closed for invalid data: read no further
        ws_stream = self._ws_stream
        if ws_stream.closed or ws_stream.state is not _CONNECTED or not self._wsproto_idle():
            if self._parser.buffered_bytes:
                # A partial simple frame was held back: wsproto gets it whole.
                data = self._parser.take_buffered() + data
            await self._to_wsproto(Data(stream_id=stream_id, data=data))
            return
        events = self._parser.feed(data)
        if not events:
            return
        last = events[-1]
        if isinstance(last, HandOff | Fail):
            events.pop()  # the parser stops there: everything before it is a message
        if events:
            # Only messages are left (simple frames: no control frame events).
            await self._deliver(events)  # type: ignore[arg-type]
        if isinstance(last, Fail):
            # wsproto would fail the connection without a close frame (1002, 1007) or buffer
            # the frame whole before checking its size (1009,
            # https://github.com/pgjones/hypercorn/issues/307): close with the parser's code.
            self._fail(last.code, last.reason)
        elif isinstance(last, HandOff):
            await self._to_wsproto(Data(stream_id=stream_id, data=last.data))

    async def _to_wsproto(self, event: Any) -> None:
        await self._handle(event)
        if self._limit is not None and self._limit.exceeded and not self._failed:
            # A fragmented or compressed message passed the limit: Hypercorn has closed with
            # 1009 (compat.message_limits). Read no further, and end the relay's handler.
            self._fail(1009, f"message over the limit of {self._max_message_bytes} bytes")


async def _discard(messages: list[bytes | str]) -> None:
    """What a removed tap does with messages its reader still held: nothing."""


def _read_loop_of(ws_stream: Any) -> ReadLoop | None:
    """The connection's ReadLoop, when its reads reach ``ws_stream`` only through an
    upgraded HTTP/1.1 protocol (which then passes each read on as it is), else None."""
    protocol = _bound_self(getattr(ws_stream, "send", None))
    tcp_server = _bound_self(getattr(protocol, "send", None))
    if (
        not isinstance(tcp_server, ReadLoop)
        or getattr(getattr(tcp_server, "protocol", None), "protocol", None) is not protocol
        or not isinstance(getattr(protocol, "connection", None), H11WSConnection)
        or getattr(protocol, "stream", None) is not ws_stream
    ):
        return None
    return tcp_server


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
        or not isinstance(receive_channel, trio.MemoryReceiveChannel | AppQueue)
        or not isinstance(
            _bound_self(getattr(ws_stream, "app_put", None)), trio.MemorySendChannel | AppQueue
        )
        or not hasattr(ws_stream, "app_put")
        or getattr(ws_stream, "state", None) is not _CONNECTED
        or not hasattr(getattr(connection, "_proto", None), "_frame_decoder")
    ):
        return None
    return InboundTap(ws_stream, receive_channel, on_messages, on_invalid, max_message_bytes)
