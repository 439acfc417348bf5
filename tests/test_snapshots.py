"""The dashboard's snapshots, in process: what they hold, their rates and their bound."""

from __future__ import annotations

import json
from contextlib import ExitStack

from tests.conftest import make_settings
from triorelay.observability.snapshots import Snapshots
from triorelay.relay import Relay
from triorelay.tracing import StageHistograms

KEYS = {"time", "status", "broker", "tasks", "connections", "channels_live", "totals", "p99"}
CHANNEL_KEYS = {"name", "mode", "producers", "consumers", "messages_in", "messages_out"}
CHANNEL_KEYS |= {"rate_in", "rate_out", "dropped", "buffered", "p99"}


def make_relay(**overrides: object) -> Relay:
    return Relay(make_settings(**overrides), handle_signals=False)


async def test_a_snapshot_has_every_part_and_rates_from_the_second_on() -> None:
    """The first snapshot has no rates; the next has messages per second since the first,
    for the relay and for each channel it listed; connections by role, broker and health."""
    relay = make_relay()
    snapshots = Snapshots(relay.sources, relay.health, max_channels=5)
    relay.counters.opened("consumer")
    with relay.hub.attach_producer("news") as producer, relay.hub.attach_consumer("news"):
        await producer.publish("one")
        first = snapshots.take(100.0)
        for i in range(4):
            await producer.publish(f"m{i}")
        second = snapshots.take(102.0)
    assert set(first) == KEYS | {"channels"}
    assert json.loads(json.dumps(first)) == first  # JSON as it is
    assert (first["status"], first["broker"]["kind"], first["channels_live"]) == ("ok", "memory", 1)
    assert first["connections"] == {"consumer": 1}
    assert first["totals"] == {
        "messages_in": 1,
        "messages_out": 0,
        "rate_in": None,
        "rate_out": None,
    }
    assert first["p99"] == {"accept": None, "broker": None, "queue": None, "write": None}
    [news] = first["channels"]
    assert set(news) == CHANNEL_KEYS
    assert (news["name"], news["producers"], news["consumers"], news["buffered"]) == (
        "news",
        1,
        1,
        1,
    )
    assert news["rate_in"] is None
    assert second["totals"]["rate_in"] == 2.0  # 4 messages in 2 s
    assert second["channels"][0]["rate_in"] == 2.0
    assert second["channels"][0]["rate_out"] == 0.0


async def test_at_most_max_channels_the_busiest_first() -> None:
    """Of 8 channels, the 3 with the most messages, busiest first; the count and the totals
    are of all 8."""
    relay = make_relay()
    snapshots = Snapshots(relay.sources, relay.health, max_channels=3)
    with ExitStack() as stack:
        for i in range(8):
            producer = stack.enter_context(relay.hub.attach_producer(f"c{i}"))
            for n in range(i):
                await producer.publish(f"m{n}")
        snapshot = snapshots.take(1.0)
    assert [c["name"] for c in snapshot["channels"]] == ["c7", "c6", "c5"]
    assert snapshot["channels_live"] == 8
    assert snapshot["totals"]["messages_in"] == sum(range(8))


def test_the_relay_p99_is_of_the_messages_traced_in_the_interval() -> None:
    """p99 per stage covers only what was traced since the previous snapshot (None if
    nothing was); the status is /healthz's."""
    relay = make_relay()
    snapshots = Snapshots(relay.sources, relay.health, max_channels=5)
    histograms = relay.hub.latency["chat"] = StageHistograms()
    histograms.observe((3.0, 0.001, 0.001, 0.001))
    first = snapshots.take(1.0)
    assert first["p99"]["accept"] > 2.5
    histograms.observe((0.001, 0.001, 0.001, 0.001))
    second = snapshots.take(2.0)
    assert second["p99"]["accept"] <= 0.001
    assert snapshots.take(3.0)["p99"]["accept"] is None
    relay.shutdown.begin("the test")
    assert snapshots.take(4.0)["status"] == "shutting down"


async def test_a_rate_is_unknown_when_a_count_went_down() -> None:
    """A channel that goes takes its counts with it: the relay's rate for that interval is
    None, not negative; a channel the previous snapshot did not list has no rate yet."""
    relay = make_relay()
    snapshots = Snapshots(relay.sources, relay.health, max_channels=5)
    with relay.hub.attach_producer("gone") as producer:
        await producer.publish("m")
        snapshots.take(1.0)
    with relay.hub.attach_producer("new"):
        snapshot = snapshots.take(2.0)
    assert snapshot["totals"]["rate_in"] is None
    assert snapshot["channels"][0]["rate_in"] is None
    assert snapshots.take(3.0)["totals"]["rate_in"] == 0.0
