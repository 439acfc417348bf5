"""The relay's own WebSocket wire format: RFC 6455 frames, parsed and serialized without I/O.

:mod:`triorelay.wire.frames` serializes the relay's (unmasked, server) frames and parses its
clients' (masked) frames incrementally, strictly, with linear buffering. The Hypercorn fast path
(:mod:`triorelay.compat.hypercorn`) uses it on both directions of a connection.
"""

from triorelay.wire.frames import (
    Close,
    Event,
    Fail,
    FrameParser,
    HandOff,
    LastFrame,
    Opcode,
    Payload,
    Ping,
    Pong,
    serialize_close,
    serialize_frame,
    serialize_message,
    serialize_ping,
    serialize_pong,
)

__all__ = [
    "Close",
    "Event",
    "Fail",
    "FrameParser",
    "HandOff",
    "LastFrame",
    "Opcode",
    "Payload",
    "Ping",
    "Pong",
    "serialize_close",
    "serialize_frame",
    "serialize_message",
    "serialize_ping",
    "serialize_pong",
]
