"""The memory broker's histories (:class:`MemoryHistories`): bounds, budget, expiry. Pure."""

from __future__ import annotations

from tests.conftest import make_settings
from triorelay.brokers.history import (
    CHANNEL_OVERHEAD_BYTES,
    ENTRY_OVERHEAD_BYTES,
    ChannelHistory,
    MemoryHistories,
)
from triorelay.settings import ChannelConfig


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def config(**overrides: object) -> ChannelConfig:
    return make_settings(**overrides).channel_config("any")


def publish(histories: MemoryHistories, history: ChannelHistory, *payloads: str) -> list[int]:
    histories.touch(history)
    offsets = [histories.keep(history, payload) for payload in payloads]
    histories.settle()
    return offsets


def test_offsets_are_contiguous_and_the_ring_keeps_the_last_history_messages() -> None:
    """A channel keeps its last ``history_messages``; offsets go on past them."""
    histories = MemoryHistories(10**9, 3600, Clock())
    history = histories.state("c", config(history_messages=3))
    assert publish(histories, history, "a", "b", "c", "d", "e") == [1, 2, 3, 4, 5]
    assert histories.read(history, 0) == ([(3, "c"), (4, "d"), (5, "e")], 3)
    assert histories.read(history, 4) == ([(5, "e")], 1)
    assert histories.read(history, 5) == ([], 0)


def test_history_bytes_bound_what_a_channel_keeps_counting_utf8() -> None:
    """``history_bytes`` counts each message's UTF-8 bytes (payloads only, as Redis does)."""
    limit = 6
    histories = MemoryHistories(10**9, 3600, Clock())
    history = histories.state("c", config(history_bytes=limit, max_message_bytes=4))
    publish(histories, history, "ab", "éé", "cd")  # "éé" is 4 bytes
    kept, size = histories.read(history, 0)
    assert kept == [(2, "éé"), (3, "cd")]
    assert size == 6


def test_the_budget_trims_the_histories_published_to_least_recently_first() -> None:
    """Past ``max_bytes`` for all channels, the channel published to least recently loses
    its oldest messages first, then its state; the one just published to keeps its own."""
    entry = 1 + ENTRY_OVERHEAD_BYTES
    histories = MemoryHistories(2 * CHANNEL_OVERHEAD_BYTES + 4 * entry, 3600, Clock())
    old = histories.state("old", config())
    new = histories.state("new", config())
    publish(histories, old, "1", "2", "3")
    publish(histories, new, "a", "b")  # one over: old loses its oldest
    assert histories.read(old, 0)[0] == [(2, "2"), (3, "3")]
    assert histories.trimmed == 1
    publish(histories, new, "c", "d", "e")  # old loses everything, then its state
    assert histories.held("old") is None
    assert old.dropped
    assert histories.read(new, 0)[0] == [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")]
    assert histories.bytes <= histories.max_bytes
    again = histories.state("old", config())
    assert again.epoch != old.epoch  # a resume from before is told "epoch"


def test_a_state_dropped_during_a_publish_keeps_nothing_more() -> None:
    """A publish under way whose channel's state was let go (another channel needed the room)
    still numbers its messages but keeps none: the budget's count stays true."""
    histories = MemoryHistories(10**9, 3600, Clock())
    history = histories.state("c", config())
    histories.touch(history)
    histories.keep(history, "kept")
    histories._drop_state(history)
    assert histories.keep(history, "not kept") == 2
    histories.settle()
    assert histories.bytes == 0


def test_expiry_lets_go_of_messages_then_of_the_position() -> None:
    """No publish for ``history_ttl_seconds``: the messages go (``expired_through``); for
    the meta TTL: the state goes (a new epoch)."""
    clock = Clock()
    histories = MemoryHistories(10**9, 100, clock)
    history = histories.state("c", config(history_ttl_seconds=10))
    publish(histories, history, "a", "b")
    clock.now = 11
    assert histories.get("c") is history
    assert (history.entries, history.expired_through) == (type(history.entries)(), 2)
    clock.now = 200
    assert histories.get("c") is None
    assert histories.bytes == 0


def test_a_publish_after_the_meta_ttl_goes_on_with_a_fresh_history() -> None:
    """A channel quiet for longer than the meta TTL, then published to: no error; its
    messages expired, its numbering goes on (the state being published to is kept)."""
    clock = Clock()
    histories = MemoryHistories(10**9, 100, clock)
    history = histories.state("c", config(history_ttl_seconds=10))
    publish(histories, history, "a")
    clock.now = 25 * 3600
    assert publish(histories, history, "b") == [2]
    assert histories.read(history, 0) == ([(2, "b")], 1)
    assert history.expired_through == 1


def test_states_made_for_subscribers_go_first_under_the_budget() -> None:
    """Subscribing to channels nobody publishes to makes states that go before any real
    history when the budget needs room."""
    entry = 1 + ENTRY_OVERHEAD_BYTES
    histories = MemoryHistories(3 * CHANNEL_OVERHEAD_BYTES + entry, 3600, Clock())
    real = histories.state("real", config())
    publish(histories, real, "1")
    for i in range(5):
        histories.state(f"idle{i}", config(), read=True)
    assert histories.held("real") is real
    assert histories.read(real, 0)[0] == [(1, "1")]
    assert histories.bytes <= histories.max_bytes


def test_a_channel_without_history_is_forgotten_with_its_channel() -> None:
    """``history_messages = 0``: nothing to resume from, so the state goes with the channel."""
    histories = MemoryHistories(10**9, 3600, Clock())
    history = histories.state("c", config(history_messages=0))
    assert publish(histories, history, "a") == [1]
    histories.forget("c")
    assert histories.held("c") is None
    assert histories.bytes == 0
