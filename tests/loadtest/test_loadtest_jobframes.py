"""The frames the acked consumer of ``queue --ack explicit`` reads and writes, against the
relay's own codec (``triorelay.framing``): the generator keeps a copy of its own."""

from __future__ import annotations

import pytest

from loadtest.jobframes import (
    REFUSED,
    AckRules,
    JobFrame,
    JobFrameError,
    ack,
    read_frame,
    read_subscribed,
)
from triorelay import framing
from triorelay.framing import Position


def test_an_acked_queues_subscribed_frame_gives_its_rules() -> None:
    """The relay's first frame to a consumer of an acked queue is read back as its rules."""
    frame = framing.subscribed_jobs(
        "loadtest.acked", max_in_flight=16, ack_timeout_seconds=30.0, max_deliveries=5
    )
    assert read_subscribed(frame) == AckRules("loadtest.acked", 16, 30.0, 5)


def test_a_plain_channel_is_not_an_acked_queue() -> None:
    """A plain channel's subscribed frame (a position, no ack) says which rule is missing."""
    frame = framing.subscribed(
        "loadtest.acked",
        Position("E", 0),
        recovering=False,
        recovered=False,
        reason=None,
        replayed=0,
    )
    with pytest.raises(JobFrameError, match='"ack": "explicit"'):
        read_subscribed(frame)


@pytest.mark.parametrize("payload", ["text", b"\x00binary\n"])
def test_job_frames_are_read_as_the_relay_writes_them(payload: str | bytes) -> None:
    """Delivery id, deliveries and the payload as published, text or binary."""
    frame = framing.encode_job("loadtest.acked", 41, 2, payload)
    assert read_frame(frame) == JobFrame(41, 2, payload)


def test_refusals_and_other_controls() -> None:
    """A refusal is told apart; another control kind is skipped; a message frame is an
    error (an acked queue sends none)."""
    assert read_frame(framing.refused("c", "ack", 3, "not_in_flight")) == REFUSED
    assert read_frame('{"triorelay":"later"}') is None
    with pytest.raises(JobFrameError, match="not a job frame"):
        read_frame(framing.encode_message("c", 1, "x"))


def test_the_ack_is_the_relays() -> None:
    """The relay reads the generator's ack as the ack of that delivery id."""
    assert framing.read_settle(ack(41)) == framing.Settle("ack", 41)
