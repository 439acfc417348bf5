"""What the relay says to clients besides their messages: acks and notices. Pure, no I/O.

Messages themselves are opaque (:data:`Payload`): text relays as text, binary as binary, byte
for byte. The few things the relay adds to a stream are built here, and only here, so that
their wire format is written down once (README "Endpoints" documents each):

- a producer's ``?ack=id`` answer, :func:`id_ack`: ``{"id": N}``;
- a consumer's ``dropped`` notice (``?notices=true``, policies ``drop_*``), :func:`dropped_notice`;
- a consumer's ``gap`` notice (the broker may have lost messages), :func:`gap_notice`.
"""

from __future__ import annotations

import json

Payload = bytes | str
"""A message, relayed as it came: ``str`` for a text frame, ``bytes`` for a binary one."""


def size_of(payload: Payload) -> int:
    """The size a message counts for in the relay's buffers and limits: its bytes on the wire.

    Text counts its UTF-8 bytes (a 4-byte character counts 4), so every byte bound holds for
    any text; ASCII text, the common case, is measured without encoding it.
    """
    if type(payload) is str and not payload.isascii():
        return len(payload.encode("utf-8", "surrogatepass"))
    return len(payload)


def id_ack(seq: int) -> str:
    """The ack of ``?ack=id``: the message's channel sequence number."""
    return f'{{"id": {seq}}}'


def dropped_notice(count: int, total: int) -> str:
    """``count`` messages were dropped for this consumer since the last notice, ``total`` in all."""
    return f'{{"triorelay": "dropped", "count": {count}, "total": {total}}}'


def gap_notice(count: int | None, reason: str) -> str:
    """The broker may have lost messages on their way here: ``count`` (None: unknown) and why."""
    return json.dumps({"triorelay": "gap", "count": count, "reason": reason})
