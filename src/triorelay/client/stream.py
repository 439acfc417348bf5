"""A subscription's stream, frame by frame: positions, deduplication, notices. Pure, no I/O.

:class:`StreamState` reads the frames of one subscription's successive connections (decoded
by :func:`triorelay.framing.decode`) and keeps the position to resume from. What it returns
is what the caller sees: a :class:`ReceivedMessage`, an :data:`Event`, or nothing (a
duplicate, or a frame kind this version does not know).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from triorelay.client.errors import ProtocolError
from triorelay.envelopes import Payload
from triorelay.framing import Control, Frame, Message, Position, decode


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A message of the channel, at ``position``, with its payload as it was published
    (``str`` for text, ``bytes`` for binary)."""

    channel: str
    position: Position
    payload: Payload


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A connection's first frame: the recovery result.

    ``position`` is the channel's position as the relay sent it. ``recovering``: the client
    asked to resume; ``recovered``: no message after its position is missing; otherwise
    ``reason`` (``trimmed``, ``expired``, ``epoch``, ``future``, ``too_many``, ``disabled``)
    says why, and the messages between the two positions are lost. ``replayed`` messages
    from the channel's history come next.
    """

    channel: str
    position: Position
    recovering: bool
    recovered: bool
    reason: str | None
    replayed: int


@dataclass(frozen=True, slots=True)
class Dropped:
    """The relay dropped ``count`` messages for this consumer (a ``drop_*`` slow-consumer
    policy: it read too slowly); ``total`` since it connected."""

    channel: str
    count: int
    total: int


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages may have been lost on their way to the relay (``count``: None if unknown).
    ``epoch``: the channel's new epoch when its history was lost (older positions are void)."""

    channel: str
    count: int | None
    reason: str
    epoch: str | None


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """A connection ended (``code``: its close code, None without a close frame, or when no
    WebSocket was opened; ``reason``: what happened); the next attempt, number ``attempt``
    since the last good connection, starts in ``delay_seconds``."""

    code: int | None
    reason: str
    attempt: int
    delay_seconds: float


Event = Subscribed | Dropped | Gap | Reconnecting
"""What a subscription reports besides messages, in stream order."""


class StreamState:
    """One subscription's position across its connections, and the frames it lets through.

    Call :meth:`connected` when a connection opens, then :meth:`receive` with each frame.
    ``position`` is where a new connection resumes from (None before anything was known).
    """

    def __init__(self, channel: str, since: Position | None = None) -> None:
        self.channel = channel
        self.position = since
        #: The current connection delivered its ``subscribed`` frame.
        self.subscribed = False
        #: Messages dropped as already seen (offset not past the position, same epoch).
        self.duplicates = 0
        #: Connections opened (their handshake done).
        self.connections = 0

    def connected(self) -> None:
        """A new connection opened: its first frame must be ``subscribed``."""
        self.subscribed = False
        self.connections += 1

    def receive(self, frame: Payload) -> ReceivedMessage | Event | None:
        """What ``frame`` means for the caller; None when it has nothing to show.

        Raises ProtocolError for a malformed frame, a message before ``subscribed``, or a
        ``subscribed`` without a valid position.
        """
        decoded = decode_frame(frame)
        if isinstance(decoded, Message):
            return self._message(decoded)
        if isinstance(decoded, Control):
            readers: Mapping[str, Callable[[dict[str, Any]], Event]] = {
                "subscribed": self._subscribed,
                "dropped": self._dropped,
                "gap": self._gap,
            }
            return read_control(decoded, self.channel, readers)
        return None  # a frame kind from a later version

    def _message(self, message: Message) -> ReceivedMessage | None:
        if message.channel != self.channel:
            return None  # several channels per connection are for a later version
        position = self.position
        if not self.subscribed or position is None:
            raise ProtocolError("a message came before the subscribed frame")
        if message.offset <= position.offset:
            # Already seen: a replay overlapping what an earlier connection delivered.
            self.duplicates += 1
            return None
        self.position = Position(position.epoch, message.offset)
        return ReceivedMessage(message.channel, self.position, message.payload)

    def _dropped(self, fields: dict[str, Any]) -> Dropped:
        return Dropped(self.channel, _int(fields["count"]), _int(fields["total"]))

    def _subscribed(self, fields: dict[str, Any]) -> Subscribed:
        epoch, offset, replayed = fields["epoch"], _int(fields["offset"]), _int(fields["replayed"])
        reason = fields.get("reason")
        if not isinstance(epoch, str) or not (reason is None or isinstance(reason, str)):
            raise TypeError("epoch must be a string, reason a string or null")
        position = Position.parse(f"{epoch}:{offset}")
        if not 0 <= replayed <= offset:
            raise ValueError(f"replayed {replayed} with offset {offset}")
        event = Subscribed(
            self.channel,
            position,
            recovering=bool(fields.get("recovering", False)),
            recovered=bool(fields.get("recovered", False)),
            reason=reason,
            replayed=replayed,
        )
        # The replayed messages are offsets offset-replayed+1 .. offset: stand just before
        # them, so that none of them is taken for a duplicate (with a full recovery this is
        # the position asked for; without one, the channel's position). A recovery that
        # replays from further back than asked never moves the position back: what was
        # seen stays seen. Without a recovery the relay's position wins, even a lower one
        # (``future``: this history is shorter than the position asked for).
        start = Position(epoch, offset - replayed)
        mine = self.position
        if event.recovered and mine is not None and mine.epoch == epoch:
            start = max(start, mine)
        self.position = start
        self.subscribed = True
        return event

    def _gap(self, fields: dict[str, Any]) -> Gap:
        count, epoch = fields.get("count"), fields.get("epoch")
        gap = Gap(
            self.channel,
            None if count is None else _int(count),
            str(fields.get("reason", "")),
            None if epoch is None else Position.parse(f"{epoch}:0").epoch,
        )
        if gap.epoch is not None and self.position is not None:
            # A new history: its offsets are not comparable with the old ones. Until its
            # first message, a reconnection resumes from the start of it.
            self.position = Position(gap.epoch, 0)
        return gap


def decode_frame(frame: Payload) -> Frame:
    """:func:`triorelay.framing.decode`, with a malformed frame a ProtocolError."""
    try:
        return decode(frame)
    except ValueError as error:
        raise ProtocolError(f"malformed frame from the relay: {error}") from None


T = TypeVar("T")


def read_control(
    control: Control, channel: str, readers: Mapping[str, Callable[[dict[str, Any]], T]]
) -> T | None:
    """What ``readers[control.kind]`` makes of a control message of ``channel``; None for
    another channel's or a kind with no reader (one from a later version). A reader's
    KeyError, TypeError or ValueError (a member missing or wrong) is a ProtocolError."""
    if control.fields.get("channel", channel) != channel:
        return None
    reader = readers.get(control.kind)
    if reader is None:
        return None
    try:
        return reader(control.fields)
    except (KeyError, TypeError, ValueError) as error:
        raise ProtocolError(f"malformed {control.kind} frame: {error!r}") from None


def _int(value: object) -> int:
    if type(value) is not int or value < 0:
        raise TypeError(f"expected a whole number, got {value!r}")
    return value
