"""What the acked consumer of ``queue --ack explicit`` reads and writes: the ``triorelay.v1``
frames of an acked queue channel (I/O-free).

The generator imports nothing of ``triorelay`` (only :mod:`loadtest.compare.relay` does), so
this is the small part of the framing a consumer of an acked queue needs, checked against the
relay's own codec (``triorelay.framing``) by a test:

- the first frame is a text frame holding the ``subscribed`` control message of an acked
  queue: ``{"triorelay":"subscribed","channel":...,"ack":"explicit","max_in_flight":N,...}``;
- a job is ``j <channel> <delivery id> <deliveries>\\n<payload>`` (text or binary, as the
  payload was published);
- the consumer answers each with ``{"triorelay":"ack","id":N}``; the relay may answer an ack
  it cannot take with ``{"triorelay":"refused",...}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final, Literal

from loadtest.replay import split_header


class JobFrameError(Exception):
    """The channel is not an acked queue, or the relay sent a frame an acked queue's consumer
    does not expect: the message says what came."""


@dataclass(frozen=True)
class AckRules:
    """The ``subscribed`` frame of an acked queue: the bounds its consumers live by."""

    channel: str
    max_in_flight: int
    ack_timeout_seconds: float
    max_deliveries: int


@dataclass(frozen=True)
class JobFrame:
    """One job: its delivery id (to ack), its delivery count (1 the first time), its payload."""

    delivery_id: int
    deliveries: int
    payload: str | bytes


Refused = Literal["refused"]
#: What :func:`read_frame` returns for the relay's refusal of an ack.
REFUSED: Final[Refused] = "refused"


def read_subscribed(frame: str | bytes) -> AckRules:
    """Read the first frame of an acked queue's consumer; :class:`JobFrameError` if it is not
    an acked queue's ``subscribed`` (a plain channel's has a position and no ``ack``)."""
    try:
        fields = json.loads(frame) if isinstance(frame, str) else None
        if not isinstance(fields, dict) or fields.get("triorelay") != "subscribed":
            raise JobFrameError(f"the first frame is not 'subscribed': {_show(frame)}")
        if fields.get("ack") != "explicit":
            raise JobFrameError(
                f"channel {fields.get('channel')!r} is not an acked queue (the relay needs a "
                'channel rule {"mode": "queue", "ack": "explicit"} for it)'
            )
        return AckRules(
            channel=str(fields["channel"]),
            max_in_flight=int(fields["max_in_flight"]),
            ack_timeout_seconds=float(fields["ack_timeout_seconds"]),
            max_deliveries=int(fields["max_deliveries"]),
        )
    except (ValueError, TypeError, KeyError) as error:
        raise JobFrameError(f"malformed 'subscribed' frame {_show(frame)}: {error!r}") from None


def read_frame(frame: str | bytes) -> JobFrame | Refused | None:
    """Read a frame after ``subscribed``: a job, :data:`REFUSED` for a refusal, None for a
    control message of another kind (room to grow); :class:`JobFrameError` for a frame that
    is neither a job nor a control message."""
    if isinstance(frame, str) and frame.startswith("{"):
        return REFUSED if frame.startswith('{"triorelay":"refused"') else None
    header, newline, body = split_header(frame)
    kind, _, rest = header.partition(" ")
    _channel, _, numbers = rest.partition(" ")
    delivery_id, _, deliveries = numbers.partition(" ")
    if not newline or kind != "j" or not delivery_id.isdigit() or not deliveries.isdigit():
        raise JobFrameError(f"not a job frame: {_show(frame)}")
    return JobFrame(int(delivery_id), int(deliveries), body)


def ack(delivery_id: int) -> str:
    """The ack of the job of ``delivery_id`` (the job is done)."""
    return f'{{"triorelay":"ack","id":{delivery_id}}}'


def _show(frame: str | bytes) -> str:
    """The start of ``frame``, for an error message."""
    return repr(frame[:80])
