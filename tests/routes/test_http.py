"""The HTTP API: publish, channel statistics, health."""

from __future__ import annotations

import json

from tests.conftest import StartRelay
from tests.helpers import RunningRelay


async def test_post_publishes_text_and_binary_to_consumers(relay: RunningRelay) -> None:
    """POST publishes text for text/* and JSON bodies, binary otherwise; 202 with the id."""
    async with relay.websocket("/ws/consumer/api") as consumer:
        sent = [
            ("text/plain; charset=utf-8", "héllo".encode(), "héllo"),
            ("application/json", b'{"a": 1}', '{"a": 1}'),
            ("application/octet-stream", b"\x00\x01", b"\x00\x01"),
        ]
        for i, (content_type, body, _) in enumerate(sent, start=1):
            response = await relay.http.post(
                "/channels/api/messages", content=body, headers={"content-type": content_type}
            )
            assert response.status_code == 202
            assert response.json() == {"id": i}
        for _, _, expected in sent:
            got = await consumer.get_message()
            assert type(got) is type(expected)
            assert got == expected


async def test_post_refuses_oversized_and_bad_input(start_relay: StartRelay) -> None:
    """413 over max_message_bytes, 400 for a bad name or undecodable text; nothing published."""
    relay = await start_relay(max_message_bytes=1024, consumer_buffer_bytes=4096)
    too_big = await relay.http.post("/channels/a/messages", content=b"x" * 1025)
    assert too_big.status_code == 413
    bad_name = await relay.http.post("/channels/a%20b/messages", content=b"x")
    assert bad_name.status_code == 400
    assert "channel names" in bad_name.json()["error"]
    bad_text = await relay.http.post(
        "/channels/a/messages", content=b"\xff", headers={"content-type": "text/plain"}
    )
    assert bad_text.status_code == 400
    assert (await relay.http.get("/channels")).json() == {"channels": []}


async def test_statistics_per_channel_and_connection(relay: RunningRelay) -> None:
    """GET /channels and /channels/{name} report counters; an unknown channel is 404."""
    async with relay.websocket("/ws/consumer/stats") as consumer:
        async with relay.websocket("/ws/producer/stats?ack=id") as producer:
            for payload in ("ab", b"cde"):
                await producer.send_message(payload)
                await producer.get_message()
            await consumer.get_message()
            await consumer.get_message()
            listing = (await relay.http.get("/channels")).json()["channels"]
            assert [c["name"] for c in listing] == ["stats"]
            stats = await relay.channel("stats")
    assert stats["mode"] == "broadcast"
    assert stats["slow_consumer_policy"] == "disconnect"
    assert (stats["producers"], stats["consumers"]) == (1, 1)
    assert (stats["messages_in"], stats["bytes_in"]) == (2, 5)
    assert (stats["messages_out"], stats["bytes_out"]) == (2, 5)
    assert (stats["dropped"], stats["buffered"]) == (0, 0)
    roles = sorted(c["role"] for c in stats["connections"])
    assert roles == ["consumer", "producer"]
    missing = await relay.http.get("/channels/stats")
    assert missing.status_code == 404


async def test_healthz_reports_ready_then_shutting_down(relay: RunningRelay) -> None:
    """/healthz is 200 while serving and 503 once shutdown has begun."""
    response = await relay.http.get("/healthz")
    assert response.status_code == 200
    assert json.loads(response.text)["status"] == "ok"
    relay.relay.shutdown.begin()
    response = await relay.http.get("/healthz")
    assert response.status_code == 503


async def test_channels_are_removed_when_idle(relay: RunningRelay) -> None:
    """One-off channel names leave nothing behind once their clients are gone."""
    for i in range(200):
        response = await relay.http.post(f"/channels/once-{i}/messages", content=b"x")
        assert response.status_code == 202
        async with relay.websocket(f"/ws/consumer/c-{i}"):
            pass
    assert (await relay.http.get("/channels")).json() == {"channels": []}
    assert len(relay.relay.hub) == 0
