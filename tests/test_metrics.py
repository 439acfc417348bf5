"""GET /metrics: the Prometheus text format, exact counter values, bounded series."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed

from tests.auth.keys import SECRET, token
from tests.conftest import StartRelay
from tests.helpers import RunningRelay, wait_until
from tests.redis_server import RedisServer
from triorelay.framing import Position


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def _scrape(relay: RunningRelay, **headers: Any) -> dict[Any, float]:
    answer = await relay.http.get("/metrics", headers=headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return _samples(answer.text)


async def test_metrics_count_a_scripted_workload_exactly(start_relay: StartRelay) -> None:
    """10 messages to one consumer and a drop_newest drop on another channel: the scraped
    counters are exactly those, by namespace."""
    relay = await start_relay(
        channels={"lossy.*": {"slow_consumer_policy": "drop_newest", "consumer_buffer_messages": 1}}
    )
    async with (
        relay.websocket("/ws/consumer/chat.a") as consumer,
        relay.websocket("/ws/producer/chat.a?ack=id") as producer,
    ):
        for i in range(10):
            await producer.send_message(f"m{i}")
            await producer.get_message()
        for _ in range(10):
            await consumer.get_message()
        hub = relay.relay.hub
        with hub.attach_consumer("lossy.x"), hub.attach_producer("lossy.x") as lossy:
            await lossy.publish("kept")
            await lossy.publish("dropped")  # the buffer of 1 is full
            samples = await _scrape(relay)
    chat = (("namespace", "chat"),)
    assert samples[("triorelay_channel_messages_in_total", chat)] == 10
    assert samples[("triorelay_channel_messages_out_total", chat)] == 10
    assert samples[("triorelay_channel_consumers", chat)] == 1
    lossy_ns = (("namespace", "lossy"),)
    assert samples[("triorelay_channel_dropped_messages_total", lossy_ns)] == 1
    assert samples[("triorelay_channel_buffered_messages", lossy_ns)] == 1
    assert samples[("triorelay_broker_ready", ())] == 1
    assert samples[("triorelay_task_running", (("task", "broker"),))] == 1


async def test_ten_thousand_channel_names_make_no_more_than_the_namespace_bound(
    start_relay: StartRelay,
) -> None:
    """Channels are labelled by namespace, at most metrics_max_namespaces + "other": 10,000
    distinct names add a bounded number of series."""
    relay = await start_relay(metrics_max_namespaces=5)
    hub = relay.relay.hub
    from contextlib import ExitStack

    with ExitStack() as stack:
        for i in range(10_000):
            stack.enter_context(hub.attach_consumer(f"ns{i % 50}.c{i}"))
        samples = await _scrape(relay)
    namespaces = {
        dict(labels)["namespace"]
        for (name, labels) in samples
        if name == "triorelay_channel_consumers"
    }
    assert len(namespaces) == 6
    assert "other" in namespaces
    total = sum(v for (name, _), v in samples.items() if name == "triorelay_channel_consumers")
    assert total == 10_000
    assert samples[("triorelay_channels", ())] == 10_000


async def test_metrics_need_the_admin_right(start_relay: StartRelay) -> None:
    """With tokens on, /metrics needs admin: 401 without a token, 403 without the right."""
    relay = await start_relay(auth_hmac_secret=SECRET)
    assert (await relay.http.get("/metrics")).status_code == 401
    other = {"Authorization": f"Bearer {token(grant={'rights': ['echo']})}"}
    assert (await relay.http.get("/metrics", headers=other)).status_code == 403
    admin = {"Authorization": f"Bearer {token(grant={'rights': ['admin']})}"}
    samples = await _scrape(relay, **admin)
    assert samples[("triorelay_channels", ())] == 0


async def test_metrics_follow_connections(relay: RunningRelay) -> None:
    """triorelay_connections follows the WebSocket connections open."""
    async with relay.websocket("/ws/echo"):
        await wait_until(lambda: relay.relay.limits.total == 1)
        assert (await _scrape(relay))[("triorelay_connections", ())] == 1


async def test_connections_and_refusals_are_counted_by_role_close_and_status(
    start_relay: StartRelay,
) -> None:
    """Ended connections count by role and close code (client, 1009), with their messages;
    refused handshakes and requests by status; the open gauge goes back to zero."""
    relay = await start_relay(auth_hmac_secret=SECRET, max_message_bytes=1024)
    admin = {"Authorization": f"Bearer {token(grant={'rights': ['admin']})}"}
    grant = {"channels": {"*": ["publish", "subscribe"]}}
    bearer = [("Authorization", f"Bearer {token(grant=grant)}")]
    async with relay.websocket("/ws/producer/x?ack=none", extra_headers=bearer) as producer:
        for _ in range(3):
            await producer.send_message("abc")
    async with relay.websocket("/ws/producer/x", extra_headers=bearer) as oversized:
        await oversized.send_message("y" * 2000)
        with contextlib.suppress(ConnectionClosed):
            await oversized.get_message()
    assert (await relay.http.get("/channels")).status_code == 401
    from tests.helpers import refused_upgrade

    assert (await refused_upgrade(relay.port, "/ws/consumer/x"))[0] == 401

    def ended() -> bool:
        return relay.relay.counters.ended.total() >= 2

    await wait_until(ended)
    samples = await _scrape(relay, **admin)
    producer_role = (("role", "producer"),)
    assert samples[("triorelay_connections_open", producer_role)] == 0
    ended_total = "triorelay_connections_ended_total"
    assert samples[(ended_total, (("close", "client"), *producer_role))] == 1
    assert samples[(ended_total, (("close", "1009"), *producer_role))] == 1
    messages_in = (("direction", "in"), *producer_role)
    # The oversized message is refused on its frame's header: never read, never counted.
    assert samples[("triorelay_connection_messages_total", messages_in)] == 3
    # Both refusals needed a token: the HTTP listing and the consumer handshake.
    assert samples[("triorelay_refusals_total", (("reason", "no_token"), ("status", "401")))] == 2


async def test_recoveries_are_counted_by_result_after_their_channels_are_gone(
    start_relay: StartRelay,
) -> None:
    """Two resumes, one recovered and one from another epoch: counted by result, and still
    there once the channel is gone from the hub; the histories' bytes are a gauge."""
    relay = await start_relay()
    hub = relay.relay.hub
    with hub.attach_producer("news") as producer:
        await producer.publish("one")
    position = (await hub.recover("news", None)).position
    await hub.recover("news", position)
    await hub.recover("news", Position("another", 1))
    samples = await _scrape(relay)
    assert samples[("triorelay_recoveries_total", (("result", "recovered"),))] == 1
    assert samples[("triorelay_recoveries_total", (("result", "epoch"),))] == 1
    assert samples[("triorelay_history_bytes", ())] > len("one")


async def test_a_scripted_workload_over_redis_is_counted_exactly(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """Over Redis: 10 messages to a consumer, one drop (drop_newest), one slow consumer
    closed (disconnect: what it held and the message that did not fit), one broker
    reconnection: the scraped counters are exactly those; round trips are timed."""
    relay = await start_relay(
        broker=redis_server.url,
        broker_reconnect_max_seconds=0.1,
        channels={
            "lossy.*": {"slow_consumer_policy": "drop_newest", "consumer_buffer_messages": 1},
            "slow.*": {"slow_consumer_policy": "disconnect", "consumer_buffer_messages": 1},
        },
    )
    hub = relay.relay.hub
    broker = hub.broker
    async with (
        relay.websocket("/ws/consumer/chat.a") as consumer,
        relay.websocket("/ws/producer/chat.a?ack=id") as producer,
    ):
        for i in range(10):
            await producer.send_message(f"m{i}")
            await producer.get_message()
        for _ in range(10):
            await consumer.get_message()
        with (
            hub.attach_consumer("lossy.x") as lossy,
            hub.attach_consumer("slow.y") as slow,
            hub.attach_producer("lossy.x") as to_lossy,
            hub.attach_producer("slow.y") as to_slow,
        ):
            for name in ("lossy.x", "slow.y"):
                await broker.wait_watching(name)
            for text in ("kept", "dropped"):
                await to_lossy.publish(text)
                await to_slow.publish(text)
            await wait_until(lambda: lossy.dropped == 1 and slow.close_code == 1013)
            await redis_server.kill()
            await broker.wait_ready(False)
            await redis_server.start()
            await broker.wait_ready(True)
            samples = await _scrape(relay)
    chat = (("namespace", "chat"),)
    assert samples[("triorelay_channel_messages_in_total", chat)] == 10
    assert samples[("triorelay_channel_messages_out_total", chat)] == 10
    assert samples[("triorelay_drops_total", (("reason", "drop_newest"),))] == 1
    assert samples[("triorelay_drops_total", (("reason", "evicted"),))] == 2
    slow_ns = (("namespace", "slow"),)
    assert samples[("triorelay_channel_slow_consumer_disconnects_total", slow_ns)] == 1
    assert samples[("triorelay_broker_reconnects_total", ())] == 1
    publishes = (("operation", "publish"),)
    assert samples[("triorelay_broker_round_trip_seconds_count", publishes)] == 14


async def test_refusals_are_counted_by_reason(start_relay: StartRelay) -> None:
    """Auth refusals by why: no token, an expired one, a bad signature, an origin, no right."""
    from tests.helpers import refused_upgrade

    relay = await start_relay(auth_hmac_secret=SECRET)
    expired = token(grant={"channels": {"*": ["subscribe"]}}, ttl=-60)
    forged = token("another-secret-long-enough-for-hmac-sha256-x", grant={"rights": ["admin"]})
    publisher = token(grant={"channels": {"*": ["publish"]}})
    for headers in (
        [],
        [("Authorization", f"Bearer {expired}")],
        [("Authorization", f"Bearer {forged}")],
        [("Origin", "https://evil.example")],
        [("Authorization", f"Bearer {publisher}")],
    ):
        await refused_upgrade(relay.port, "/ws/consumer/x", headers)
    admin = {"Authorization": f"Bearer {token(grant={'rights': ['admin']})}"}
    samples = await _scrape(relay, **admin)

    def refused(status: str, reason: str) -> float:
        return samples[("triorelay_refusals_total", (("reason", reason), ("status", status)))]

    assert refused("401", "no_token") == 1
    assert refused("401", "expired") == 1
    assert refused("401", "bad_signature") == 1
    assert refused("403", "origin") == 1
    assert refused("403", "no_right") == 1
