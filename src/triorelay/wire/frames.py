"""RFC 6455 frames: the relay's own (server) frames out, its clients' (masked) frames in. No I/O.

Serializing: :func:`serialize_message`, :func:`serialize_ping`, :func:`serialize_pong` and
:func:`serialize_close` return one unfragmented frame, unmasked as a server sends it
(:func:`serialize_frame` takes a mask, for tests that play the client).

Parsing: a :class:`FrameParser` is fed what a client sent, a TCP read at a time, and returns the
events those bytes complete, in order:

- a whole message, as its payload: ``str`` from text, ``bytes`` from binary (:data:`Payload`);
- :class:`Ping`, :class:`Pong`, :class:`Close`: control frames (``frames="all"`` only);
- :class:`HandOff` (``frames="simple"`` only): the bytes from the first frame that is not a
  *simple frame* (a complete, unfragmented, masked text or binary frame), for another parser
  (wsproto) to take from there; the parser then holds nothing and may be fed again later;
- :class:`Fail`: the client broke RFC 6455 or the size limit; close with ``code``. The parser
  then ignores everything it is fed.

``frames="simple"`` is what the relay's inbound tap uses: wsproto keeps control frames (it
answers pings and the close handshake) and fragments. ``frames="all"`` parses control frames and
reassembles fragments too, frame by frame; the tests hold it to wsproto as an oracle.

The rules (RFC 6455 section 5.2 unless named), each checked on a frame's header, before its
payload is buffered: reserved bits set (no extension is known here: with permessage-deflate on,
give every byte to wsproto), a reserved opcode, a fragmented control frame or one over 125
bytes (5.5), a 16-bit or 64-bit length that a shorter encoding could hold, a 64-bit length with
its top bit set, and an unmasked frame (5.1) all fail with 1002; a message declaring more than
``max_message_bytes`` (fragments counted together) fails with 1009. Then, on the payload: text
that is not UTF-8 fails with 1007 (5.6; fragments are checked as they arrive); with
``frames="all"``, a continuation without a message in progress or a new message inside one is
1002, and a close frame with a 1-byte payload or a code a peer may not send (7.4) is 1002, with
a reason that is not UTF-8 1007. A close frame without a code reads as 1005.

Buffering is linear in what arrives. A read that comes while nothing is held is parsed in place,
and only an incomplete frame at its end is copied into the parser's ``bytearray``; a read that
comes while something is held is appended to it, frames are parsed from an offset, and the parsed
prefix is deleted once per feed. The parser knows how many bytes its next step needs (a header,
or a header and its payload), so a feed that does not reach that returns at once without looking
at the bytes again: a client trickling a 1 MiB frame a byte at a time costs a constant amount per
byte, not a re-parse of everything held. What is held is bounded: one incomplete frame (at most
14 header bytes and ``max_message_bytes``), and with ``frames="all"`` the fragments of one
message (``max_message_bytes`` together).
"""

from __future__ import annotations

import struct
from codecs import IncrementalDecoder, getincrementaldecoder
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Literal

from triorelay.errors import CloseCode


class Opcode(IntEnum):
    """Frame opcodes (RFC 6455 section 5.2); 0x3-0x7 and 0xB-0xF are reserved."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


# The opcodes the parser tests per frame, as plain ints: reading an IntEnum member
# (``Opcode.TEXT``) costs about 0.17 µs on CPython 3.11, a module constant a tenth of that.
_CONTINUATION: Final = int(Opcode.CONTINUATION)
_TEXT: Final = int(Opcode.TEXT)
_BINARY: Final = int(Opcode.BINARY)
_CLOSE: Final = int(Opcode.CLOSE)
_PING: Final = int(Opcode.PING)
_PONG: Final = int(Opcode.PONG)


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping frame and its payload (``frames="all"``)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong frame and its payload (``frames="all"``)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The client's close frame (``frames="all"``): 1005 when it carried no code."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class HandOff:
    """``frames="simple"``: ``data`` starts with a frame this parser leaves to wsproto."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Fail:
    """The client broke the protocol: close the connection with ``code`` and ``reason``."""

    code: CloseCode
    reason: str


Payload = bytes | str
"""A whole data message: ``str`` from a text message, ``bytes`` from a binary one."""
Event = Payload | Ping | Pong | Close | HandOff | Fail
"""What :meth:`FrameParser.feed` returns: a message is its payload (the relay's hot path
makes no object per message); a :class:`HandOff` or :class:`Fail` only ever comes last."""

_CONTROL_MAX_BYTES: Final = 125
_RESERVED_BITS: Final = "reserved bits set without a negotiated extension"
_KNOWN_OPCODES: Final = frozenset(int(opcode) for opcode in Opcode)
# Close codes a peer may send (RFC 6455 section 7.4.1, and the IANA registry up to 1014);
# 3000-4999 are for libraries and applications. wsproto 1.3.2 does not know 1014 yet.
_PEER_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")
_CLOSE_CODE = struct.Struct("!H")


def serialize_frame(
    opcode: Opcode, payload: bytes, *, fin: bool = True, mask: bytes | None = None
) -> bytes:
    """One frame with the shortest length encoding; masked with ``mask`` (4 bytes) if given."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    masked = 0x80 if mask is not None else 0
    if length < 126:
        header = _SHORT.pack(first, masked | length)
    elif length < 65536:
        header = _MEDIUM.pack(first, masked | 126, length)
    else:
        header = _LONG.pack(first, masked | 127, length)
    if mask is None:
        return header + payload
    return header + mask + _unmask(payload, mask)  # masking and unmasking are one XOR


def serialize_message(payload: bytes | str) -> bytes:
    """One unfragmented, unmasked server frame: text for ``str``, binary for ``bytes``.

    :func:`serialize_frame` for the relay's hot path, written out (it runs per message).
    """
    data: bytes
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


class LastFrame:
    """:func:`serialize_message` with a memory of one message: called with the payload it was
    last called with (the same object), it returns the same frame without encoding it again.

    A fan-out writes one message to each of its consumers in a row: this encodes it once. It
    holds the last payload and frame until the next call (one message, within
    ``max_message_bytes``); a caller on a hot path may read :attr:`last` itself and call only
    when its payload is not the one there.
    """

    __slots__ = ("last",)

    def __init__(self) -> None:
        #: ``(payload, frame)`` of the last call, replaced as one tuple (read it once).
        self.last: tuple[bytes | str, bytes] = ("", serialize_message(""))

    def __call__(self, payload: bytes | str) -> bytes:
        last = self.last  # one read: the pair stays whole whoever else calls
        if last[0] is payload:
            return last[1]
        frame = serialize_message(payload)
        self.last = (payload, frame)
        return frame


def serialize_ping(payload: bytes = b"") -> bytes:
    """An unmasked ping frame (``payload`` at most 125 bytes)."""
    return serialize_frame(Opcode.PING, payload)


def serialize_pong(payload: bytes = b"") -> bytes:
    """An unmasked pong frame (``payload`` at most 125 bytes)."""
    return serialize_frame(Opcode.PONG, payload)


def serialize_close(code: int | None = None, reason: str = "") -> bytes:
    """An unmasked close frame; without ``code``, an empty one (the peer reads 1005)."""
    if code is None:
        return serialize_frame(Opcode.CLOSE, b"")
    return serialize_frame(Opcode.CLOSE, _CLOSE_CODE.pack(code) + reason.encode())


def _unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    length = len(payload)
    if not length:
        return b""
    # One big-integer XOR: far faster in CPython than a loop over the bytes.
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")


_Header = tuple[bool, int, int, int]
"""A parsed header: FIN, opcode, header bytes (mask included), payload bytes."""


class FrameParser:
    """An incremental parser of the frames one client sends (see the module docstring).

    ``max_message_bytes`` bounds each message, fragments together; no more than one frame and
    one message in progress is ever held (``buffered_bytes``).
    """

    def __init__(
        self, max_message_bytes: int, *, frames: Literal["simple", "all"] = "simple"
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self._simple = frames == "simple"
        self._buffer = bytearray()
        self._need = 2  # how many bytes of _buffer the next step needs
        self._header: _Header | None = None  # the frame at the start of _buffer, once known
        self._done = False  # after Fail or Close
        # frames="all": the fragmented message in progress.
        self._opcode: int | None = None
        self._text: list[str] = []
        self._binary: list[bytes] = []
        self._fragment_bytes = 0
        self._decoder: IncrementalDecoder = getincrementaldecoder("utf-8")()

    @property
    def buffered_bytes(self) -> int:
        """Bytes held: the frame in progress, and the fragments of the message in progress."""
        return len(self._buffer) + self._fragment_bytes

    @property
    def finished(self) -> bool:
        """True after a :class:`Fail` or a :class:`Close`: what is fed next is ignored."""
        return self._done

    def take_buffered(self) -> bytes:
        """Return the bytes of the frame in progress and forget them (to give them to wsproto)."""
        data = bytes(self._buffer)
        self._reset()
        return data

    def feed(self, data: bytes) -> list[Event]:
        """Take ``data``, the next bytes from the client; return the events they complete."""
        if self._done:
            return []
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._need:
                return []  # the common case of a trickle: nothing to look at yet
            source: bytes | bytearray = buffer
        else:
            source = data  # nothing held: parse the read itself, copy only what is left
        events: list[Event] = []
        simple, limit = self._simple, self.max_message_bytes
        pos, end = 0, len(source)
        header, self._header = self._header, None  # a local in the loop: it runs per frame
        while True:
            if header is None:
                if end - pos < 2:
                    self._need = 2
                    break
                first, second = source[pos], source[pos + 1]
                if simple and (first == 0x81 or first == 0x82) and 0x80 <= second < 0xFE:
                    # The hot path: a FIN text or binary frame, masked, 7-bit length.
                    fin, opcode, size, length = True, first & 0x0F, 6, second & 0x7F
                    if length > limit:
                        return self._fail(events, self._too_big())
                elif (
                    simple
                    and (first == 0x81 or first == 0x82)
                    and second == 0xFE
                    and end - pos >= 4
                    and (source[pos + 2] << 8 | source[pos + 3]) >= 126
                ):
                    # The other hot path: the same with a (minimal) 16-bit length.
                    fin, opcode, size = True, first & 0x0F, 8
                    length = source[pos + 2] << 8 | source[pos + 3]
                    if length > limit:
                        return self._fail(events, self._too_big())
                else:
                    outcome = self._parse_header(source, pos, end)
                    if isinstance(outcome, int):
                        self._need = outcome
                        break
                    if isinstance(outcome, Fail):
                        return self._fail(events, outcome)
                    if outcome is None:  # frames="simple", and a frame that is not simple
                        events.append(HandOff(bytes(source[pos:])))
                        self._reset()
                        return events
                    fin, opcode, size, length = outcome
            else:
                fin, opcode, size, length = header
                header = None
            if end - pos < size + length:
                self._header, self._need = (fin, opcode, size, length), size + length
                break
            start = pos + size
            payload = _unmask(source[start : start + length], source[start - 4 : start])
            pos = start + length
            if simple:
                if opcode == _BINARY:
                    events.append(payload)
                    continue
                try:
                    events.append(payload.decode("utf-8"))
                except UnicodeDecodeError:
                    failure = Fail(CloseCode.INVALID_PAYLOAD, "invalid UTF-8 in a text message")
                    return self._fail(events, failure)
                continue
            event = self._frame(fin, opcode, payload)
            if event is None:
                continue
            if isinstance(event, Fail):
                return self._fail(events, event)
            events.append(event)
            if isinstance(event, Close):
                self._done = True
                self._reset()
                return events
        # Keep the incomplete frame at pos, if any, at the start of the buffer; _need and
        # _header already count from there.
        if source is buffer:
            if pos:
                del buffer[:pos]
        elif pos < end:
            buffer += memoryview(data)[pos:]
        return events

    def _parse_header(
        self, buffer: bytes | bytearray, pos: int, end: int
    ) -> _Header | Fail | int | None:
        """The header at ``pos``; or how many bytes from ``pos`` it needs; or None: hand off."""
        available = end - pos
        if available < 2:
            return 2
        first, second = buffer[pos], buffer[pos + 1]
        fin, opcode, length = bool(first & 0x80), first & 0x0F, second & 0x7F
        if first & 0x70:
            return Fail(
                CloseCode.PROTOCOL_ERROR, "reserved bits set without a negotiated extension"
            )
        if opcode not in _KNOWN_OPCODES:
            return Fail(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        control = bool(opcode & 0x08)
        if control and not fin:
            return Fail(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
        if control and length > _CONTROL_MAX_BYTES:
            return Fail(CloseCode.PROTOCOL_ERROR, "control frame over 125 bytes")
        size = 6
        if length == 126:
            size = 8
            if available < 4:
                return size
            length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
            if length < 126:
                return Fail(CloseCode.PROTOCOL_ERROR, "16-bit length for a 7-bit payload")
        elif length == 127:
            size = 14
            if available < 10:
                return size
            length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
            if length >> 63:
                return Fail(CloseCode.PROTOCOL_ERROR, "64-bit length with its top bit set")
            if length < 65536:
                return Fail(CloseCode.PROTOCOL_ERROR, "64-bit length for a 16-bit payload")
        if not second & 0x80:
            return Fail(CloseCode.PROTOCOL_ERROR, "unmasked client frame")
        if self._simple:
            if control or not fin or opcode == _CONTINUATION:
                return None
            if length > self.max_message_bytes:
                return self._too_big()
        elif not control:
            if (opcode == _CONTINUATION) != (self._opcode is not None):
                if opcode == _CONTINUATION:
                    return Fail(CloseCode.PROTOCOL_ERROR, "continuation without a message")
                return Fail(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
            if self._fragment_bytes + length > self.max_message_bytes:
                return self._too_big()
        return (fin, opcode, size, length)

    def _too_big(self) -> Fail:
        # Refused on its header: the payload is never buffered.
        return Fail(
            CloseCode.MESSAGE_TOO_BIG, f"message over the limit of {self.max_message_bytes} bytes"
        )

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> Event | None:
        """frames="all": the event a complete frame makes (a fragment makes none until the last)."""
        if opcode == _PING:
            return Ping(payload)
        if opcode == _PONG:
            return Pong(payload)
        if opcode == _CLOSE:
            return _close(payload)
        return self._fragment(opcode, fin, payload)

    def _fragment(self, opcode: int, fin: bool, payload: bytes) -> Event | None:
        if opcode != _CONTINUATION:
            self._opcode = opcode
        text = self._opcode == _TEXT
        if text:
            try:
                # Incremental, like wsproto: a bad sequence fails at the fragment holding it.
                self._text.append(self._decoder.decode(payload, fin))
            except UnicodeDecodeError:
                return Fail(CloseCode.INVALID_PAYLOAD, "invalid UTF-8 in a text message")
        else:
            self._binary.append(payload)
        self._fragment_bytes += len(payload)
        if not fin:
            return None
        message = "".join(self._text) if text else b"".join(self._binary)
        self._forget_message()
        return message

    def _forget_message(self) -> None:
        self._opcode = None
        self._text, self._binary, self._fragment_bytes = [], [], 0
        self._decoder.reset()

    def _fail(self, events: list[Event], failure: Fail) -> list[Event]:
        events.append(failure)
        self._done = True
        self._reset()
        self._forget_message()
        return events

    def _reset(self) -> None:
        self._buffer = bytearray()
        self._need = 2
        self._header = None


def _close(payload: bytes) -> Close | Fail:
    if not payload:
        return Close(CloseCode.NO_STATUS_RECEIVED, "")
    if len(payload) == 1:
        return Fail(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = _CLOSE_CODE.unpack_from(payload)[0]
    if code not in _PEER_CLOSE_CODES and not 3000 <= code <= 4999:
        return Fail(CloseCode.PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        return Close(code, payload[2:].decode("utf-8"))
    except UnicodeDecodeError:
        return Fail(CloseCode.INVALID_PAYLOAD, "invalid UTF-8 in a close reason")
