"""What the ``resume`` scenario reads and checks: the ``triorelay.v1`` frames, a replay, and
the timings (I/O-free).

The generator imports nothing of ``triorelay`` (only :mod:`loadtest.compare.relay` does), so
this is the small part of ``docs/reference/framing.md`` a resuming consumer needs, checked
against the relay's own codec (``triorelay.framing``) by a test:

- the first frame is a text frame holding the ``subscribed`` control message, a JSON object
  (``{"triorelay":"subscribed","channel":...,"epoch":...,"offset":...,"replayed":N,...}``);
- a message is ``m <channel> <offset>\\n<payload>``, in a text frame for a text message.

:class:`ReplayCheck` takes the frames of one resume in order and raises :class:`ResumeError`
unless they are exactly the missed messages: the ``subscribed`` frame saying every one of them
follows, then each at the next offset with the payload the generator published there.
:func:`timing_summary` gives the percentiles of a few timed resumes from the samples
themselves (nearest rank: with tens of repeats an HDR histogram would add nothing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from loadtest.codec import CodecError, decode

#: The ``Sec-WebSocket-Protocol`` that asks the relay for positions (``triorelay.framing``'s).
SUBPROTOCOL: Final = "triorelay.v1"
#: The relay settings behind each reason a resume is not done, for the error message.
SETTINGS_OF_REASON: Final = {
    "trimmed": "history_messages, history_bytes, history_max_bytes",
    "expired": "history_ttl_seconds",
    "too_many": "recovery_max_messages",
    "disabled": "history_messages is 0",
    # A channel without history forgets its epoch once its last consumer leaves.
    "epoch": "restarted, or history_messages 0",
}


class ResumeError(Exception):
    """A resume did not give exactly the missed messages in order, or could not be timed:
    the message says what came instead. The ``resume`` run fails with it."""


@dataclass(frozen=True)
class Subscribed:
    """The ``subscribed`` control message: the channel's position, and what a resume got."""

    channel: str
    epoch: str
    offset: int
    recovering: bool
    recovered: bool
    reason: str | None
    replayed: int

    @property
    def position(self) -> str:
        """``epoch:offset``, as ``?since=`` takes it."""
        return f"{self.epoch}:{self.offset}"


def parse_subscribed(frame: str | bytes) -> Subscribed:
    """Read the first frame of a framed consumer; :class:`ResumeError` if it is not a
    ``subscribed`` control message."""
    if not isinstance(frame, str) or not frame.startswith("{"):
        raise ResumeError(f"the first frame is not a control message: {_show(frame)}")
    try:
        fields = json.loads(frame)
        if fields.get("triorelay") != "subscribed":
            raise ResumeError(f"the first frame is not 'subscribed': {_show(frame)}")
        return Subscribed(
            channel=str(fields["channel"]),
            epoch=str(fields["epoch"]),
            offset=int(fields["offset"]),
            recovering=bool(fields["recovering"]),
            recovered=bool(fields["recovered"]),
            reason=None if fields["reason"] is None else str(fields["reason"]),
            replayed=int(fields["replayed"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ResumeError(f"malformed 'subscribed' frame {_show(frame)}: {error!r}") from None


def parse_message(frame: str | bytes) -> tuple[str, int, str | bytes]:
    """Read a message frame: ``(channel, offset, payload)``; :class:`ResumeError` for any
    other frame (a control message, a frame of another kind, a malformed header)."""
    if isinstance(frame, str) and frame.startswith("{"):
        raise ResumeError(f"a control message instead of a replayed one: {_show(frame)}")
    header, newline, body = split_header(frame)
    kind, _, rest = header.partition(" ")
    channel, _, offset = rest.partition(" ")
    if not newline or kind != "m" or not channel or not offset.isdigit():
        raise ResumeError(f"not a message frame: {_show(frame)}")
    return channel, int(offset), body


def split_header(frame: str | bytes) -> tuple[str, str, str | bytes]:
    """A message or job frame's header line (ASCII, decoded either way), the line feed
    after it (empty if there is none) and the payload, text or binary as the frame."""
    if isinstance(frame, str):
        return frame.partition("\n")
    raw_header, raw_newline, body = frame.partition(b"\n")
    return raw_header.decode("ascii", "replace"), raw_newline.decode(), body


class ReplayCheck:
    """Checks one resume: after ``since`` on ``channel``, exactly ``missed`` messages, each at
    the next offset, the ``n``-th being message ``n`` of producer 0 of run ``run``.

    Feed every frame the resuming consumer receives to :meth:`feed`, in order: it returns True
    once the last missed message arrived (:attr:`done`). Anything else raises
    :class:`ResumeError` at the first frame that differs: a resume that was not done (its
    ``reason``), another count or position, a control message, a frame after the last one.
    """

    def __init__(self, channel: str, since: Subscribed, missed: int, run: str) -> None:
        self.channel = channel
        self.since = since
        self.missed = missed
        self.run = run
        #: Replayed messages checked so far.
        self.received = 0
        self.subscribed: Subscribed | None = None

    @property
    def done(self) -> bool:
        """Whether the ``subscribed`` frame and every missed message have arrived."""
        return self.subscribed is not None and self.received == self.missed

    def feed(self, frame: str | bytes) -> bool:
        """Check the next frame; return :attr:`done`."""
        if self.subscribed is None:
            self._check_subscribed(parse_subscribed(frame))
            return self.done
        if self.done:
            raise ResumeError(f"a frame after the last replayed message: {_show(frame)}")
        channel, offset, payload = parse_message(frame)
        expected = self.since.offset + self.received + 1
        if channel != self.channel or offset != expected:
            raise ResumeError(
                f"replayed message {self.received + 1} of {self.missed} is at {channel} "
                f"{offset}, expected {self.channel} {expected}"
            )
        try:
            header = decode(payload if isinstance(payload, str) else payload.decode())
        except (CodecError, UnicodeDecodeError):
            raise ResumeError(f"offset {offset} holds another payload: {_show(payload)}") from None
        if (header.run, header.producer, header.seq) != (self.run, 0, self.received):
            raise ResumeError(
                f"offset {offset} holds message {header.seq} of run {header.run}, expected "
                f"{self.received} of run {self.run}"
            )
        self.received += 1
        return self.done

    def _check_subscribed(self, got: Subscribed) -> None:
        if not got.recovered:
            settings = SETTINGS_OF_REASON.get(got.reason or "")
            raise ResumeError(
                f"the resume from {self.since.position} was not done: reason {got.reason!r}"
                + (f" (relay: {settings})" if settings else "")
            )
        wanted = (self.channel, self.since.epoch, self.since.offset + self.missed, self.missed)
        if (got.channel, got.epoch, got.offset, got.replayed) != wanted:
            raise ResumeError(
                f"'subscribed' says {got.replayed} replayed up to {got.position} on "
                f"{got.channel}, expected {self.missed} up to {self.since.epoch}:"
                f"{self.since.offset + self.missed} on {self.channel}"
            )
        self.subscribed = got


def nearest_rank(ordered: Sequence[float], percentile: float) -> float:
    """The ``percentile`` (0-100) of ``ordered`` (sorted, not empty) by nearest rank: the
    smallest sample with at least that share of the samples at or below it."""
    rank = max(1, math.ceil(percentile / 100 * len(ordered)))
    return ordered[rank - 1]


def timing_summary(samples_ms: Sequence[float]) -> dict[str, float | int | None]:
    """``{"count", "p50", "p99", "max"}`` of ``samples_ms`` in ms (``None`` without samples)."""
    ordered = sorted(samples_ms)
    if not ordered:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    return {
        "count": len(ordered),
        "p50": round(nearest_rank(ordered, 50), 3),
        "p99": round(nearest_rank(ordered, 99), 3),
        "max": round(ordered[-1], 3),
    }


def _show(frame: str | bytes) -> str:
    """The start of ``frame``, for an error message."""
    return repr(frame[:80])
