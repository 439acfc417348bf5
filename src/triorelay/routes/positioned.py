"""Consumers that are told positions: a resume, the seam, and the writer every such transport
shares (the ``triorelay.v1`` framing over WebSocket, Server-Sent Events).

The seam, without a gap or a duplicate: the consumer is attached (live messages start
buffering, each an :class:`~triorelay.hub.Entry` with its position) and the broker delivers
here (``wait_watching``) *before* :func:`subscribe` reads the channel's position and history;
the history covers every message up to that position, the buffer every message after a point
at or before it, and the writer skips buffered messages up to it (:class:`Cursor`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from triorelay import framing
from triorelay.brokers.base import Recovery
from triorelay.envelopes import Payload
from triorelay.errors import InvalidQuery, RecoveryFailed
from triorelay.framing import Position
from triorelay.hub import Consumer, Entry, Hub
from triorelay.routes import traces
from triorelay.routes.asgi import Query
from triorelay.tracing import now_ns

MAX_BATCH = 64
"""Most messages written in one go."""

NEW_EPOCH_REASON = "the channel's history was lost: a new epoch began"


@dataclass(frozen=True, slots=True)
class Resume:
    """What a positioned consumer asked for: a position to resume from, and whether the
    resume is required (``recover=required``: refuse or close if it cannot be done)."""

    since: Position | None
    required: bool


def resume_query(query: Query, since_header: str | None = None) -> Resume:
    """``?since=epoch:offset`` (or ``since_header``, which wins: an event stream's
    ``Last-Event-ID``) and ``?recover=best_effort|required``; 400 if malformed."""
    values = query.get("since", [])
    if len(values) > 1:
        raise InvalidQuery("since must be given once")
    text = since_header or (values[0] if values else None)
    since = None
    if text:
        try:
            since = Position.parse(text)
        except ValueError as error:
            raise InvalidQuery(f"since: {error}") from None
    recover = query.get("recover", ["best_effort"])
    if len(recover) != 1 or recover[0] not in ("best_effort", "required"):
        raise InvalidQuery("recover must be one of best_effort, required")
    return Resume(since, recover[0] == "required")


def asks_to_resume(query: Query) -> bool:
    """Whether the query has resume parameters (which only positioned consumers may use)."""
    return "since" in query or "recover" in query


class Cursor:
    """Where a positioned consumer's stream is: the epoch and offset of the last message
    sent. :meth:`admit` decides, for each buffered message, whether it goes out."""

    __slots__ = ("epoch", "left", "offset")

    #: Epochs left behind that are remembered (a history is lost rarely: a few suffice).
    MAX_LEFT = 8

    def __init__(self, position: Position) -> None:
        self.epoch = position.epoch
        self.offset = position.offset
        #: Epochs the stream moved on from: a message still buffered from one of them (read
        #: before the history was lost) is stale, not a new epoch.
        self.left: list[str] = []

    def admit(self, entry: Entry) -> bool | None:
        """True: send it; False: already covered (the seam, a duplicate, an epoch left
        behind); None: send it, but it starts a new epoch the client has not been told of
        (send a gap first)."""
        if entry.epoch == self.epoch:
            if entry.offset <= self.offset:
                return False
            self.offset = entry.offset
            return True
        if entry.epoch in self.left:
            return False
        self._move_to(entry.epoch)
        self.offset = entry.offset
        return None

    def told(self, control: str) -> None:
        """A control message went out: a gap naming a new epoch moves the cursor to it."""
        if control.startswith('{"triorelay":"gap"'):
            epoch = json.loads(control).get("epoch")
            if epoch and epoch != self.epoch and epoch not in self.left:
                self._move_to(epoch)
                self.offset = 0

    def _move_to(self, epoch: str) -> None:
        self.left.append(self.epoch)
        del self.left[: -self.MAX_LEFT]
        self.epoch = epoch


class Encoding(Protocol):
    """How a transport writes positioned consumers' frames."""

    def message(self, channel: str, entry: Entry) -> Payload:
        """A message, with its position."""
        ...

    def control(self, control: str) -> Payload:
        """A control message (the framing's JSON: ``subscribed``, ``dropped``, ``gap``)."""
        ...


async def subscribe(hub: Hub, consumer: Consumer, resume: Resume) -> tuple[Recovery, Cursor]:
    """Read the channel's position and what the consumer missed (see the module's seam).

    Raises :class:`~triorelay.errors.RecoveryFailed` for a required resume that cannot be
    done, :class:`~triorelay.errors.BrokerUnavailable` if the broker cannot say.
    """
    recovery = await hub.recover(consumer.channel_name, resume.since)
    if resume.required and resume.since is not None and not recovery.recovered:
        raise RecoveryFailed(f"recovery failed: {recovery.reason}")
    return recovery, Cursor(recovery.position)


def opening_frames(
    channel: str, recovery: Recovery, resume: Resume, encoding: Encoding
) -> list[Payload]:
    """The ``subscribed`` control message, then the replayed messages."""
    frames = [
        encoding.control(
            framing.subscribed(
                channel,
                recovery.position,
                recovering=resume.since is not None,
                recovered=recovery.recovered,
                reason=recovery.reason,
                replayed=len(recovery.entries),
            )
        )
    ]
    epoch = recovery.position.epoch
    for offset, payload in recovery.entries:
        frames.append(encoding.message(channel, Entry(payload, 0, offset, epoch)))
    return frames


SendMany = Callable[[list[Payload]], Awaitable[bool]]


async def write_positioned(
    consumer: Consumer,
    send_many: SendMany,
    cursor: Cursor,
    encoding: Encoding,
    *,
    idle_seconds: float | None = None,
    on_idle: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """A positioned consumer's writer: send its messages (and notices) until its stream ends,
    or ``send_many`` (or ``on_idle``) returns False: the client is gone.

    Messages up to the cursor are skipped (the seam); a message from a new epoch is preceded
    by a ``gap`` naming it, unless the broker's gap notice already did. ``on_idle`` is
    awaited after ``idle_seconds`` without a message (an event stream's keepalive).
    """
    channel = consumer.channel_name
    while True:
        try:
            if on_idle is None or idle_seconds is None:
                items = [await consumer.receive()]
            else:
                with trio.move_on_after(idle_seconds) as idle:
                    items = [await consumer.receive()]
                if idle.cancelled_caught:
                    if not await on_idle():
                        return
                    continue
        except trio.EndOfChannel:
            return
        consumer.take_buffered(items, MAX_BATCH)
        traced = traces.take_traced(consumer, items)
        taken_ns = now_ns() if traced else 0
        frames: list[Payload] = []
        if consumer.pending_dropped:
            count = consumer.take_dropped_notice()
            frames.append(encoding.control(framing.dropped(channel, count, consumer.dropped)))
        for item in items:
            if isinstance(item, Entry):  # Traced ones too
                admitted = cursor.admit(item)
                if admitted is False:
                    continue
                if admitted is None:
                    notice = framing.gap(channel, None, NEW_EPOCH_REASON, item.epoch)
                    frames.append(encoding.control(notice))
                frames.append(encoding.message(channel, item))
            elif isinstance(item, str):  # a notice, as the framing's control message
                cursor.told(item)
                frames.append(encoding.control(item))
        if frames and not await send_many(frames):
            return  # the client is gone; its disconnect ends the session
        if traced:
            told = [
                encoding.control(notice) for notice in traces.written(consumer, traced, taken_ns)
            ]
            if told and not await send_many(told):
                return


class FramingEncoding:
    """``triorelay.v1`` over WebSocket: message frames, control messages as they are."""

    def message(self, channel: str, entry: Entry) -> Payload:
        return entry.frame(channel)

    def control(self, control: str) -> Payload:
        return control


FRAMING = FramingEncoding()
