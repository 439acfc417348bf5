"""A subscription's frames, fed synchronously: positions, duplicates, notices, bad frames."""

from __future__ import annotations

import pytest

from triorelay import framing
from triorelay.client.errors import ProtocolError, retryable_close, retryable_status
from triorelay.client.stream import Dropped, Gap, ReceivedMessage, StreamState, Subscribed
from triorelay.framing import Position


def subscribed(epoch: str, offset: int, replayed: int = 0, **kwargs: object) -> str:
    fields = {"recovering": False, "recovered": False, "reason": None} | kwargs
    return framing.subscribed(
        "chat",
        Position(epoch, offset),
        recovering=bool(fields["recovering"]),
        recovered=bool(fields["recovered"]),
        reason=fields["reason"],  # type: ignore[arg-type]
        replayed=replayed,
    )


def message(offset: int, payload: str | bytes = "x", channel: str = "chat") -> str | bytes:
    return framing.encode_message(channel, offset, payload)


def connected_state(since: Position | None = None) -> StreamState:
    state = StreamState("chat", since)
    state.connected()
    return state


def test_subscribed_without_since_sets_the_channel_position() -> None:
    """A live subscription starts at the relay's position; the first message follows it."""
    state = connected_state()
    event = state.receive(subscribed("E1", 41))
    assert event == Subscribed("chat", Position("E1", 41), False, False, None, 0)
    assert state.position == Position("E1", 41)
    assert state.receive(message(42, "hi")) == ReceivedMessage("chat", Position("E1", 42), "hi")
    assert state.position == Position("E1", 42)


def test_replayed_messages_are_not_taken_for_duplicates() -> None:
    """subscribed's offset is the channel's last: the replayed messages before it go through."""
    state = connected_state(Position("E1", 10))
    state.receive(subscribed("E1", 13, replayed=3, recovering=True, recovered=True))
    assert state.position == Position("E1", 10)
    got = [state.receive(message(offset)) for offset in (11, 12, 13, 14)]
    assert [m.position.offset for m in got if isinstance(m, ReceivedMessage)] == [11, 12, 13, 14]


def test_messages_at_or_before_the_position_are_dropped_and_counted() -> None:
    """Offsets not past the last one seen in the epoch are duplicates: dropped, counted."""
    state = connected_state(Position("E1", 5))
    state.receive(subscribed("E1", 8, replayed=3, recovering=True, recovered=True))
    results = [state.receive(message(offset)) for offset in (4, 5, 6, 6, 7)]
    kept = [r.position.offset for r in results if isinstance(r, ReceivedMessage)]
    assert kept == [6, 7]
    assert state.duplicates == 3


def test_a_failed_recovery_goes_on_from_the_channel_position() -> None:
    """Without recovery (a new epoch), the position is the relay's, whatever the old one."""
    state = connected_state(Position("OLD", 900))
    event = state.receive(subscribed("NEW", 3, recovering=True, reason="epoch"))
    assert isinstance(event, Subscribed)
    assert (event.recovered, event.reason) == (False, "epoch")
    assert state.position == Position("NEW", 3)
    assert isinstance(state.receive(message(4)), ReceivedMessage)


def test_a_gap_with_a_new_epoch_resumes_from_its_start() -> None:
    """A gap carrying an epoch voids the old offsets: the position is new-epoch:0."""
    state = connected_state()
    state.receive(subscribed("E1", 50))
    gap = state.receive(framing.gap("chat", None, "history lost", "E2"))
    assert gap == Gap("chat", None, "history lost", "E2")
    assert state.position == Position("E2", 0)
    received = state.receive(message(1))
    assert isinstance(received, ReceivedMessage)
    assert received.position == Position("E2", 1)


def test_a_gap_without_an_epoch_keeps_the_position() -> None:
    """A gap within the same history (count known) changes nothing but informs."""
    state = connected_state()
    state.receive(subscribed("E1", 50))
    assert state.receive(framing.gap("chat", 4, "redis", None)) == Gap("chat", 4, "redis", None)
    assert state.position == Position("E1", 50)


def test_dropped_notice() -> None:
    """A dropped notice is an event with its counts."""
    state = connected_state()
    state.receive(subscribed("E1", 0))
    assert state.receive(framing.dropped("chat", 3, 10)) == Dropped("chat", 3, 10)


def test_binary_messages_keep_their_bytes() -> None:
    """A binary frame's payload is the bytes after the header line, newlines included."""
    state = connected_state()
    state.receive(subscribed("E1", 0))
    received = state.receive(message(1, b"\x00\n\xff"))
    assert isinstance(received, ReceivedMessage)
    assert received.payload == b"\x00\n\xff"


def test_unknown_kinds_and_other_channels_are_ignored() -> None:
    """Room to grow: unknown frame kinds, control kinds and channels are skipped."""
    state = connected_state()
    state.receive(subscribed("E1", 0))
    assert state.receive("x chat 1\npayload") is None  # "j" is taken: a job frame
    assert state.receive('{"triorelay":"job","channel":"chat"}') is None
    assert state.receive(message(1, channel="other")) is None
    assert state.position == Position("E1", 0)


def test_a_message_before_subscribed_is_a_protocol_error() -> None:
    """Without subscribed, a message has no epoch: the relay broke the protocol."""
    state = connected_state()
    with pytest.raises(ProtocolError, match="before the subscribed"):
        state.receive(message(1))


def test_each_connection_needs_its_own_subscribed() -> None:
    """After a reconnection, messages before the new subscribed are refused too."""
    state = connected_state()
    state.receive(subscribed("E1", 0))
    state.connected()
    with pytest.raises(ProtocolError):
        state.receive(message(1))


@pytest.mark.parametrize(
    "frame",
    [
        "no header line",
        "m chat notanumber\nx",
        "{not json",
        '{"triorelay":"subscribed","channel":"chat","epoch":"E1","offset":-1,"replayed":0}',
        '{"triorelay":"subscribed","channel":"chat","epoch":"bad epoch","offset":1,"replayed":0}',
        '{"triorelay":"subscribed","channel":"chat","epoch":"E1","offset":1,"replayed":2}',
        '{"triorelay":"subscribed","channel":"chat","epoch":"E1"}',
        '{"triorelay":"dropped","channel":"chat","count":"3","total":3}',
    ],
)
def test_malformed_frames_are_protocol_errors(frame: str) -> None:
    """A frame the framing does not allow raises ProtocolError, naming the problem."""
    with pytest.raises(ProtocolError):
        connected_state().receive(frame)


@pytest.mark.parametrize(
    ("code", "fresh_token", "retry"),
    [
        (1000, False, True),
        (1001, False, True),
        (None, False, True),
        (1011, False, True),
        (1013, False, True),
        (4401, False, False),
        (4401, True, True),
        (4403, True, False),
        (4410, True, False),
        (1008, True, False),
        (1009, False, False),
        (1002, False, False),
    ],
)
def test_which_close_codes_are_retried(code: int | None, fresh_token: bool, retry: bool) -> None:
    """Transient closes are retried; the ones that would repeat are not (4401 needs a
    token provider)."""
    assert retryable_close(code, fresh_token=fresh_token) is retry


@pytest.mark.parametrize(
    ("status", "retry"),
    [(503, True), (502, True), (429, True), (400, False), (401, False), (403, False), (404, False)],
)
def test_which_handshake_refusals_are_retried(status: int, retry: bool) -> None:
    """5xx and 429 are retried; 4xx refusals (401 included) are final."""
    assert retryable_status(status) is retry


def test_a_recovery_replaying_from_further_back_keeps_the_position() -> None:
    """A recovered stream that replays messages already seen: they are duplicates."""
    state = connected_state(Position("E1", 10))
    state.receive(subscribed("E1", 12, replayed=5, recovering=True, recovered=True))
    assert state.position == Position("E1", 10)
    kept = [state.receive(message(offset)) for offset in range(8, 13)]
    assert [m.position.offset for m in kept if isinstance(m, ReceivedMessage)] == [11, 12]


def test_a_future_position_gives_way_to_the_relays() -> None:
    """Not recovered (future): the relay's lower position wins, so new messages pass."""
    state = connected_state(Position("E1", 100))
    state.receive(subscribed("E1", 7, recovering=True, reason="future"))
    assert state.position == Position("E1", 7)
    assert isinstance(state.receive(message(8)), ReceivedMessage)
