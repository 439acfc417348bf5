"""A job consumer's frames, read without I/O (JobState), and dead letters (read_dead_letter).

The end-to-end behaviour against the real relay is in ``test_jobs.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from triorelay import framing
from triorelay.client import (
    DeadLetter,
    DeliveryEnd,
    JobsSubscribed,
    ProtocolError,
    ReceivedMessage,
    Refused,
    read_dead_letter,
)
from triorelay.client.jobs import Delivery, JobState
from triorelay.framing import Position

RULES = framing.subscribed_jobs("jobs", max_in_flight=4, ack_timeout_seconds=2.5, max_deliveries=3)


def connected_state(now: float = 100.0) -> JobState:
    state = JobState("jobs", clock=lambda: now)
    state.connected()
    return state


def test_subscribed_states_the_rules_and_each_job_its_deadline() -> None:
    """The first frame gives the rules; a job comes with its id, deliveries, payload and the
    time its ack is due (read time + ack_timeout_seconds)."""
    state = connected_state(now=100.0)
    assert state.receive(RULES) == JobsSubscribed("jobs", 4, 2.5, 3)
    assert state.subscribed
    delivery = state.receive(framing.encode_job("jobs", 7, 2, b"\x00\n"))
    assert delivery == Delivery(framing.Job("jobs", 7, 2, b"\x00\n"), 102.5)


def test_each_connection_has_a_number_of_its_own() -> None:
    """``generation`` (the stamp of what a connection delivers) goes up with each
    connection, and a new connection waits for its own subscribed frame."""
    state = connected_state()
    state.receive(RULES)
    assert state.stamp() == 1
    state.connected()
    assert (state.stamp(), state.subscribed, state.rules) == (2, False, None)
    with pytest.raises(ProtocolError, match="before the subscribed"):
        state.receive(framing.encode_job("jobs", 1, 1, "x"))


def test_a_channel_that_is_not_an_acked_queue_is_a_protocol_error() -> None:
    """A plain channel's subscribed frame (a position, no ``ack``) ends the consumer."""
    state = connected_state()
    plain = framing.subscribed(
        "jobs", Position("E", 0), recovering=False, recovered=False, reason=None, replayed=0
    )
    with pytest.raises(ProtocolError, match="not an acked queue"):
        state.receive(plain)


def test_refusals_are_reported() -> None:
    """A ``refused`` control becomes a Refused event, with or without an id."""
    state = connected_state()
    state.receive(RULES)
    late = framing.refused("jobs", "ack", 3, "not_in_flight")
    assert state.receive(late) == Refused("jobs", "ack", 3, "not_in_flight")
    bad = framing.refused("jobs", "unknown", None, "malformed")
    assert state.receive(bad) == Refused("jobs", "unknown", None, "malformed")


@pytest.mark.parametrize(
    "frame",
    [
        '{"triorelay":"subscribed","channel":"jobs","ack":"explicit"}',
        '{"triorelay":"subscribed","channel":"jobs","ack":"explicit","max_in_flight":0,'
        '"ack_timeout_seconds":1,"max_deliveries":1}',
        '{"triorelay":"subscribed","channel":"jobs","ack":"explicit","max_in_flight":1,'
        '"ack_timeout_seconds":"1","max_deliveries":1}',
        '{"triorelay":"refused","channel":"jobs","kind":"ack","id":"3","reason":"x"}',
        "j jobs one 1\npayload",
        "{not json",
    ],
)
def test_malformed_frames_are_protocol_errors(frame: str) -> None:
    """A frame the relay should never send ends the consumer, saying what was wrong."""
    state = connected_state()
    with pytest.raises(ProtocolError, match="malformed"):
        state.receive(frame)


def test_other_channels_and_unknown_kinds_are_ignored() -> None:
    """Room to grow: other channels, messages, unknown frame and control kinds."""
    state = connected_state()
    state.receive(RULES)
    assert state.receive(framing.encode_job("other", 1, 1, "x")) is None
    assert state.receive(framing.encode_message("jobs", 1, "x")) is None
    assert state.receive("x jobs 1\npayload") is None
    assert state.receive('{"triorelay":"later","channel":"jobs"}') is None
    assert state.receive(framing.refused("other", "ack", 1, "not_in_flight")) is None


def test_a_dead_letter_is_read_back_with_its_history() -> None:
    """read_dead_letter takes a subscription's message or a raw payload (text or UTF-8
    bytes); a binary job comes back as bytes."""
    letter = framing.dead_letter(
        "jobs",
        b"\xffpoison",
        seq=9,
        deliveries=2,
        reason="max_deliveries",
        history=[
            {"at": 1.5, "consumer": "n:1", "outcome": "nacked"},
            {"at": 2.0, "consumer": "n:2", "outcome": "timed out"},
        ],
    )
    expected = DeadLetter(
        "jobs",
        9,
        b"\xffpoison",
        2,
        "max_deliveries",
        (DeliveryEnd(1.5, "n:1", "nacked"), DeliveryEnd(2.0, "n:2", "timed out")),
    )
    assert read_dead_letter(letter) == expected
    assert read_dead_letter(letter.encode()) == expected
    received = ReceivedMessage("jobs.dead", Position("E", 1), letter)
    assert read_dead_letter(received) == expected


def test_a_dead_letter_over_the_limit_goes_without_its_job() -> None:
    """A letter that would be longer than max_bytes (base64, JSON's escapes) leaves the job
    out: read back with payload None and payload_bytes its size; one within it keeps it."""
    kwargs: dict[str, Any] = {"seq": 1, "deliveries": 1, "reason": "max_deliveries", "history": []}
    letter = framing.dead_letter("jobs", b"\x00" * 300, max_bytes=300, **kwargs)
    assert len(letter) <= 300
    read = read_dead_letter(letter)
    assert (read.payload, read.payload_bytes) == (None, 300)
    text = framing.dead_letter("jobs", "\u00e9" * 100, max_bytes=300, **kwargs)  # 6 bytes each
    assert (read_dead_letter(text).payload, read_dead_letter(text).payload_bytes) == (None, 200)
    long_history = [{"at": 1.0, "consumer": f"c:{i}", "outcome": "nacked"} for i in range(50)]
    trimmed = framing.dead_letter(
        "jobs", "x", seq=1, deliveries=50, reason="max_deliveries", history=long_history,
        max_bytes=600,
    )  # fmt: skip
    assert len(trimmed) <= 600
    _, fields = framing.read_dead_letter(trimmed)
    assert fields["history"] == long_history[-len(fields["history"]) :]  # the latest kept
    assert fields["history_omitted"] == 50 - len(fields["history"]) > 0
    kept = framing.dead_letter("jobs", "small", max_bytes=300, **kwargs)
    assert (read_dead_letter(kept).payload, read_dead_letter(kept).payload_bytes) == ("small", None)


@pytest.mark.parametrize("message", ["hello", b"\xff", "[]", '{"payload":"x"}', "{"])
def test_what_is_not_a_dead_letter_is_a_value_error(message: str | bytes) -> None:
    """Anything else on the channel is refused with ValueError, not a KeyError or worse."""
    with pytest.raises(ValueError, match="not a dead letter"):
        read_dead_letter(message)
