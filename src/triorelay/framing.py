"""The ``triorelay.v1`` framing: positions, message frames and control messages. Pure, no I/O.

A consumer that asks for it (``Sec-WebSocket-Protocol: triorelay.v1``) gets every message with
its channel and offset, and control messages (the recovery result, dropped and gap notices);
it may send a token refresh. The raw endpoints never see any of this: without the subprotocol
a consumer gets the published bytes, byte for byte. ``docs/reference/framing.md`` is the
wire format's reference; this module is its one implementation, used by the relay and by
:mod:`triorelay.client`.

Two kinds of frame, told apart by their first character:

- a **message**: a header line ``m <channel> <offset>\\n`` then the payload, in a text frame
  for a text message and a binary frame for a binary one (the header is ASCII either way);
  the overhead is ``4 + len(channel) + len(str(offset))`` bytes;
- a **control message**: a text frame holding a JSON object whose ``"triorelay"`` member
  names its kind (``subscribed``, ``dropped``, ``gap``; from the client, ``refresh``).

Acked queue channels (``ack = "explicit"``) send **jobs** instead of messages: a header line
``j <channel> <delivery id> <deliveries>\n`` then the payload; the client answers each with an
``ack`` (done) or a ``nack`` (give it back, after ``delay_seconds`` if it says) control
message, and is told ``refused`` for an ack the relay cannot take (the job timed out and went
to another consumer, or the id is unknown). A job that used up its deliveries is published on
the dead-letter channel as a :func:`dead_letter` JSON message.

Room to grow without a version break: a client ignores a frame kind it does not know (the
first header token), a control kind it does not know, and members it does not know. Several
channels per connection would add client control kinds (``subscribe``, ``unsubscribe``):
every frame already names its channel.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from triorelay.envelopes import Payload, size_of

SUBPROTOCOL = "triorelay.v1"
"""The ``Sec-WebSocket-Protocol`` value that asks for this framing."""

_EPOCH = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_OFFSET = 2**63 - 1

RecoveryReason = Literal["trimmed", "expired", "epoch", "future", "too_many", "disabled"]
"""Why a resume could not be done (``docs/topics/delivery.md`` says what each means):

``trimmed``   the position is older than the oldest message the channel's history keeps;
``expired``   the channel's history expired (no publish for its ``history_ttl_seconds``);
``epoch``     the position is from another epoch: the history it belonged to was lost (the
              relay restarted with the memory broker, Redis lost the channel);
``future``    the position's offset is past the channel's last message;
``too_many``  more messages were missed than ``recovery_max_messages``;
``disabled``  the channel keeps no history (``history_messages = 0``).
"""

REASONS: tuple[RecoveryReason, ...] = (
    "trimmed",
    "expired",
    "epoch",
    "future",
    "too_many",
    "disabled",
)


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a message sits in its channel: ``epoch:offset``.

    Offsets count a channel's messages from 1, without holes; offset 0 is before the first.
    The epoch names one unbroken history of the channel: it changes whenever that history was
    lost, so that a position from before is recognised as stale, never misread.
    """

    epoch: str
    offset: int

    @classmethod
    def parse(cls, text: str) -> Position:
        """``"epoch:offset"`` → Position; ValueError (saying what is wrong) otherwise."""
        epoch, colon, offset = text.rpartition(":")
        if not colon or not _EPOCH.fullmatch(epoch):
            raise ValueError("a position is epoch:offset, the epoch 1-32 of A-Z a-z 0-9 _ -")
        if not offset.isascii() or not offset.isdigit() or int(offset) > MAX_OFFSET:
            raise ValueError("a position's offset is a whole number from 0 to 2**63-1")
        return cls(epoch, int(offset))

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"


# -- relay to client --


def message_header(channel: str, offset: int) -> str:
    """The header line of a message frame."""
    return f"m {channel} {offset}\n"


def encode_message(channel: str, offset: int, payload: Payload) -> Payload:
    """A message frame: the header line, then the payload; text stays text, binary binary."""
    if isinstance(payload, str):
        return f"m {channel} {offset}\n{payload}"
    return b"m %s %d\n%s" % (channel.encode(), offset, payload)


def subscribed(
    channel: str,
    position: Position,
    *,
    recovering: bool,
    recovered: bool,
    reason: RecoveryReason | None,
    replayed: int,
) -> str:
    """The first frame of a subscription: the channel's position the stream goes on from.

    ``recovering``: the client asked to resume; ``recovered``: every message after its
    position follows (``replayed`` of them before the live ones), else ``reason`` says why not.
    """
    return json.dumps(
        {
            "triorelay": "subscribed",
            "channel": channel,
            "epoch": position.epoch,
            "offset": position.offset,
            "recovering": recovering,
            "recovered": recovered,
            "reason": reason,
            "replayed": replayed,
        },
        separators=(",", ":"),
    )


def encode_job(channel: str, delivery_id: int, deliveries: int, payload: Payload) -> Payload:
    """A job frame: ``j <channel> <delivery id> <deliveries>\n`` then the payload.

    ``deliveries`` counts this one: 1 the first time, more when the job may have been seen
    (and perhaps done) by a consumer before."""
    if isinstance(payload, str):
        return f"j {channel} {delivery_id} {deliveries}\n{payload}"
    return b"j %s %d %d\n%s" % (channel.encode(), delivery_id, deliveries, payload)


def subscribed_jobs(
    channel: str, *, max_in_flight: int, ack_timeout_seconds: float, max_deliveries: int
) -> str:
    """The first frame to a consumer of an acked queue: the rules its acks live by."""
    return json.dumps(
        {
            "triorelay": "subscribed",
            "channel": channel,
            "ack": "explicit",
            "max_in_flight": max_in_flight,
            "ack_timeout_seconds": ack_timeout_seconds,
            "max_deliveries": max_deliveries,
        },
        separators=(",", ":"),
    )


RefusedReason = Literal["not_in_flight", "malformed"]
"""Why an ack or nack was refused: ``not_in_flight`` (timed out and given to another
consumer, already settled, or never given), ``malformed`` (not a valid ack)."""


def refused(channel: str, kind: str, delivery_id: int | None, reason: RefusedReason) -> str:
    """The relay could not take the client's ``ack`` or ``nack`` of ``delivery_id``."""
    return json.dumps(
        {
            "triorelay": "refused",
            "channel": channel,
            "kind": kind,
            "id": delivery_id,
            "reason": reason,
        },
        separators=(",", ":"),
    )


def dead_letter(
    channel: str,
    payload: Payload,
    *,
    seq: int,
    deliveries: int,
    reason: str,
    history: list[dict[str, Any]],
    max_bytes: int | None = None,
) -> str:
    """What the dead-letter channel gets for a job that used up its deliveries: a JSON
    object with the job (``payload``, text as is, binary in base64 with ``"binary": true``),
    where it came from, why it died, and each delivery's end (``at`` Unix time, ``consumer``,
    ``outcome``).

    A letter longer than ``max_bytes`` (base64 and JSON's escapes make it larger than the
    job) goes without the job: ``"payload": null`` and ``"payload_bytes"`` its size, so that
    a consumer bounded by the relay's own message limit can still read it; and, if that is
    not enough (a history of many deliveries), with its latest deliveries only, and
    ``"history_omitted"`` the number left out.
    """
    binary = not isinstance(payload, str)
    body = base64.b64encode(payload).decode() if isinstance(payload, bytes) else payload
    fields: dict[str, Any] = {
        "channel": channel,
        "seq": seq,
        "payload": body,
        "binary": binary,
        "deliveries": deliveries,
        "reason": reason,
        "history": history,
    }
    letter = json.dumps(fields, separators=(",", ":"))
    if max_bytes is not None and len(letter) > max_bytes:  # ASCII: one byte a character
        fields.update(payload=None, payload_bytes=size_of(payload))
        letter = json.dumps(fields, separators=(",", ":"))
        kept = len(history)
        while len(letter) > max_bytes and kept:
            kept //= 2
            fields.update(
                history=history[len(history) - kept :], history_omitted=len(history) - kept
            )
            letter = json.dumps(fields, separators=(",", ":"))
    return letter


def read_dead_letter(message: str) -> tuple[Payload | None, dict[str, Any]]:
    """A dead-letter message → the job's payload (None if it was left out) and the object's
    other members."""
    fields = json.loads(message)
    body = fields.pop("payload")
    if body is None:  # left out: the letter would have been over the message limit
        return None, fields
    payload: Payload = base64.b64decode(body) if fields.get("binary") else body
    return payload, fields


def dropped(channel: str, count: int, total: int) -> str:
    """``count`` messages were dropped for this consumer since the last notice (slow)."""
    return (
        f'{{"triorelay":"dropped","channel":{json.dumps(channel)},"count":{count},"total":{total}}}'
    )


def gap(channel: str, count: int | None, reason: str, epoch: str | None = None) -> str:
    """Messages may have been lost on their way to this relay (``count``: None if unknown);
    ``epoch``: the channel's new epoch, when its history was lost."""
    return json.dumps(
        {"triorelay": "gap", "channel": channel, "count": count, "reason": reason, "epoch": epoch},
        separators=(",", ":"),
    )


# -- client to relay --


def refresh(token: str) -> str:
    """A token refresh (the connection's new token, for the same subject)."""
    return json.dumps({"triorelay": "refresh", "token": token}, separators=(",", ":"))


def ack(delivery_id: int) -> str:
    """The job of ``delivery_id`` is done: the relay forgets it."""
    return f'{{"triorelay":"ack","id":{delivery_id}}}'


def nack(delivery_id: int, delay_seconds: float | None = None) -> str:
    """Give the job of ``delivery_id`` back, to be handed out again after ``delay_seconds``
    (default: the channel's redelivery backoff; 0: at once)."""
    if delay_seconds is None:
        return f'{{"triorelay":"nack","id":{delivery_id}}}'
    return json.dumps(
        {"triorelay": "nack", "id": delivery_id, "delay_seconds": delay_seconds},
        separators=(",", ":"),
    )


@dataclass(frozen=True, slots=True)
class Settle:
    """A client's ``ack`` or ``nack`` (read by the relay)."""

    kind: Literal["ack", "nack"]
    delivery_id: int
    delay_seconds: float | None = None


MAX_NACK_DELAY_SECONDS = 24 * 3600.0
"""The longest delay a nack may ask for."""


def read_settle(frame: str) -> Settle | None:
    """A client's text frame → its :class:`Settle`, None if it is no ack or nack;
    ValueError (saying what is wrong) for a malformed one."""
    if not frame.lstrip().startswith("{"):
        return None
    try:
        fields = json.loads(frame)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python goes
        raise ValueError("a control message is a JSON object") from None
    kind = fields.get("triorelay") if isinstance(fields, dict) else None
    if kind not in ("ack", "nack"):
        return None
    delivery_id = fields.get("id")
    if type(delivery_id) is not int or not 0 < delivery_id <= MAX_OFFSET:
        raise ValueError(f"{kind}: id must be a positive whole number")
    delay = fields.get("delay_seconds") if kind == "nack" else None
    if delay is not None and (
        type(delay) not in (int, float) or not 0 <= delay <= MAX_NACK_DELAY_SECONDS
    ):
        raise ValueError(f"nack: delay_seconds must be from 0 to {MAX_NACK_DELAY_SECONDS:g}")
    return Settle(kind, delivery_id, None if delay is None else float(delay))


# -- reading frames (clients) --


@dataclass(frozen=True, slots=True)
class Message:
    """A message frame: the message's channel, offset and payload."""

    channel: str
    offset: int
    payload: Payload


@dataclass(frozen=True, slots=True)
class Job:
    """A job frame: its channel, delivery id, deliveries so far (this one included), payload."""

    channel: str
    delivery_id: int
    deliveries: int
    payload: Payload


@dataclass(frozen=True, slots=True)
class Control:
    """A control message: its kind (``subscribed``, ``dropped``, ``gap``...) and members."""

    kind: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Unknown:
    """A frame of a kind this version does not know: to be ignored."""

    frame: Payload


Frame = Message | Job | Control | Unknown


def decode(frame: Payload) -> Frame:
    """Read one frame the relay sent. Raises ValueError for a malformed one."""
    payload: Payload
    if isinstance(frame, str):
        if frame.startswith("{"):
            return _control(frame)
        header, newline, payload = frame.partition("\n")
    else:
        raw_header, raw_newline, payload = frame.partition(b"\n")
        header, newline = raw_header.decode("ascii", "replace"), raw_newline.decode()
    if not newline:
        raise ValueError("a message frame has a header line")
    kind, _, rest = header.partition(" ")
    if kind == "j":
        return _job(header, rest, payload)
    if kind != "m":
        return Unknown(frame)
    channel, _, offset = rest.partition(" ")
    if not channel or not offset.isdigit():
        raise ValueError(f"malformed message header {header!r}")
    return Message(channel, int(offset), payload)


def _job(header: str, rest: str, payload: Payload) -> Job:
    channel, _, numbers = rest.partition(" ")
    delivery_id, _, deliveries = numbers.partition(" ")
    if not channel or not delivery_id.isdigit() or not deliveries.isdigit():
        raise ValueError(f"malformed job header {header!r}")
    return Job(channel, int(delivery_id), int(deliveries), payload)


def _control(frame: str) -> Control:
    try:
        fields = json.loads(frame)
    except (ValueError, RecursionError):
        raise ValueError("a control message is a JSON object") from None
    if not isinstance(fields, dict) or not isinstance(fields.get("triorelay"), str):
        raise ValueError('a control message is a JSON object with a "triorelay" kind')
    return Control(fields["triorelay"], fields)
