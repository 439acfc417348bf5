"""The message size limit inside Hypercorn 0.18.0's and wsproto 1.3.2's inbound path.

The relay's :class:`~triorelay.compat.hypercorn.InboundTap` refuses a simple frame on its header.
Every other frame goes through wsproto and Hypercorn, which hold a message in two places before
the relay sees it, each unbounded for a hostile client:

1. **Fragments.** Hypercorn gathers a message's frames in ``WSStream.buffer`` (a
   ``WebsocketBuffer``) up to ``websocket_max_message_size``, 16 MiB under the bare
   ``hypercorn`` CLI whatever the relay's limit. It writes each piece before checking, and
   once it has closed with 1009 it keeps gathering what the peer still sends (the buffer is
   never cleared): a peer that ignores the close grows it without bound.
   :class:`LimitedBuffer` checks the relay's ``max_message_bytes`` before writing, empties
   itself when the limit is passed, and refuses every piece after that.
2. **Inflation.** wsproto's ``PerMessageDeflate.frame_inbound_payload_data`` inflates each
   chunk in one ``decompressobj.decompress(data)`` call, with no bound, and Hypercorn only
   checks sizes afterwards (https://github.com/pgjones/hypercorn/issues/307): a 200 KB frame
   of compressed zeros becomes 200 MiB in one call. :class:`BoundedDeflate` inflates at most
   the rest of the limit plus one byte per call (``decompress(data, max_length)``), so a
   message is known to be too big before more than the limit exists in memory.

Either way the result is Hypercorn's own handling of an oversized message: its
``FrameTooLargeError`` path sends a 1009 close frame. :func:`limit_inbound` installs both on
one connection before the accept, so nothing arrives before the bounds are in place.
``tests/compat/test_message_limits.py`` pins the upstream behaviour worked around here.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from hypercorn.protocol.ws_stream import (
    ASGIWebsocketState,
    FrameTooLargeError,
    Handshake,
    WebsocketBuffer,
)
from wsproto.connection import Connection, ConnectionType
from wsproto.events import Message
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from triorelay.compat.overrides import weak_original

_EXTENSIONS_HEADER = b"sec-websocket-extensions"


class LimitedBuffer(WebsocketBuffer):
    """Hypercorn's message buffer, checked before each write; refuses everything once passed.

    It counts bytes, text as UTF-8, like the relay's check of a frame header (Hypercorn's own
    buffer counts characters). ``exceeded`` tells the connection's other parts (the inflater,
    the relay's tap) that the limit was passed: the connection is being closed with 1009.
    """

    def __init__(self, max_bytes: int, on_exceeded: Callable[[], None] | None = None) -> None:
        super().__init__(max_bytes)
        self.exceeded = False
        self.size = 0  # bytes of the message so far
        #: Called once when Hypercorn is made to close with 1009, so that the relay ends the
        #: connection too (a peer that ignores the close would otherwise be kept open).
        self.on_exceeded = on_exceeded

    def extend(self, event: Message[Any]) -> None:
        data = event.data
        size = len(data.encode()) if isinstance(data, str) else len(data)
        if not self.exceeded and self.size + size <= self.max_length:
            self.size += size
            super().extend(event)
            return
        self.exceeded = True
        self.clear()
        if self.on_exceeded is not None:
            on_exceeded, self.on_exceeded = self.on_exceeded, None
            on_exceeded()
        raise FrameTooLargeError  # Hypercorn closes with 1009

    def clear(self) -> None:
        super().clear()
        self.size = 0


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate that stops inflating a message once it passes ``buffer``'s limit.

    Past the limit it returns nothing more (the chunk is dropped, not inflated) and marks
    ``buffer`` exceeded, whose next write makes Hypercorn close with 1009. (One exception: if
    that was the last chunk of a text message whose earlier chunks ended inside a UTF-8
    sequence, wsproto fails the message as invalid UTF-8 first and Hypercorn drops the
    connection without a close frame. Memory stays bounded either way.)
    """

    def __init__(self, buffer: LimitedBuffer) -> None:
        super().__init__()
        self._buffer = buffer
        self._inflated = 0  # bytes of the current message so far

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if self._inbound_compressed is None:  # the first frame of a message
            self._inflated = 0
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        if self._buffer.exceeded:
            return b""
        assert self._decompressor is not None
        room = self._buffer.max_length - self._inflated
        try:
            # max_length > 0 always (0 would mean no bound): room >= 0 until exceeded.
            inflated = self._decompressor.decompress(data, room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        return self._count(inflated)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if self._buffer.exceeded:
            if fin:
                self._inbound_compressed = None
            return None
        # Every chunk was inflated whole (a shorter output than max_length means no input
        # is left over), so the end-of-message marker inflates to a few bytes at most.
        result = super().frame_inbound_complete(proto, fin)
        return self._count(result) if isinstance(result, bytes) else result

    def _count(self, inflated: bytes) -> bytes:
        self._inflated += len(inflated)
        if self._inflated > self._buffer.max_length:
            self._buffer.exceeded = True
            return b""  # the buffer refuses the next piece: Hypercorn closes with 1009
        return inflated


def limit_inbound(
    send: Callable[..., Any], max_bytes: int, on_exceeded: Callable[[], None] | None = None
) -> LimitedBuffer | None:
    """Bound the WebSocket behind ``send`` to ``max_bytes`` per message. Call before accepting.

    Installs a :class:`LimitedBuffer`, and makes the accept use :class:`BoundedDeflate` if it
    negotiates permessage-deflate (or, should that fail, accept without compression). Returns
    the buffer, or None when ``send`` is not a Hypercorn WebSocket still in its handshake.
    """
    ws_stream: Any = getattr(send, "__self__", None)
    handshake = getattr(ws_stream, "handshake", None)
    if (
        not isinstance(handshake, Handshake)
        or not isinstance(getattr(ws_stream, "buffer", None), WebsocketBuffer)
        or getattr(ws_stream, "state", None) is not ASGIWebsocketState.HANDSHAKE
    ):
        return None
    buffer = LimitedBuffer(max_bytes, on_exceeded)
    ws_stream.buffer = buffer
    # Kept on the handshake, the override holds it weakly and deletes itself once called: no
    # reference cycle, accepted or not (an override another layer installed first is called
    # as it is, and kept: a cycle if it refers to the handshake; no such layer exists).
    accept = weak_original(handshake, "accept", once=True)

    def accept_bounded(*args: Any, **kwargs: Any) -> tuple[int, list[Any], Connection]:
        status, headers, connection = accept(*args, **kwargs)
        offered = [value for name, value in headers if name == _EXTENSIONS_HEADER]
        if offered and not _bound_inflation(connection, offered[0], buffer):
            # Never compression without the bound: accept without it instead.
            headers = [(name, value) for name, value in headers if name != _EXTENSIONS_HEADER]
            connection = Connection(ConnectionType.SERVER)
        return status, headers, connection

    handshake.accept = accept_bounded  # type: ignore[method-assign]  # this one connection's
    return buffer


def _bound_inflation(connection: Connection, accepted: bytes, buffer: LimitedBuffer) -> bool:
    """Replace the negotiated permessage-deflate of ``connection`` with a bounded one.

    The replacement is configured from ``accepted``, the extension header the client gets,
    exactly as a client configures its own (``finalize``).
    """
    proto = getattr(connection, "_proto", None)
    lists: list[list[Any]] = []
    for owner in (proto, getattr(proto, "_frame_decoder", None)):
        extensions = getattr(owner, "extensions", None)
        if not isinstance(extensions, list):
            return False
        lists.append(extensions)
    header = accepted.decode("latin-1")
    if "," in header or not header.startswith(PerMessageDeflate.name):
        return False  # only permessage-deflate is ever offered by Hypercorn
    bounded = BoundedDeflate(buffer)
    bounded.finalize(header)
    replaced = False
    for extensions in lists:
        for index, extension in enumerate(extensions):
            if type(extension) is PerMessageDeflate:
                extensions[index] = bounded
                replaced = True
    return replaced
