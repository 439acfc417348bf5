"""The HTTP API: publish, channel statistics, health."""

from __future__ import annotations

import json

from tests.auth.keys import SECRET, token
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


async def test_post_takes_utf8_text_only(relay: RunningRelay) -> None:
    """UTF-8 and ASCII text pass; UTF-7, punycode, latin-1, unknown charsets get 415 at once
    (no lone surrogate, no quadratic decoding), and nothing is published."""
    async with relay.websocket("/ws/consumer/cs") as consumer:
        refused = {
            "utf-7": b"+2AA-",
            "punycode": b"a" * 100_000 + b"-",
            "latin-1": b"caf\xe9",
            "utf-16": "x".encode("utf-16"),
            "no-such-charset": b"x",
        }
        for charset, body in refused.items():
            answer = await relay.http.post(
                "/channels/cs/messages",
                content=body,
                headers={"content-type": f"text/plain; charset={charset}"},
            )
            assert answer.status_code == 415, charset
            assert "UTF-8" in answer.json()["error"]
        not_ascii = await relay.http.post(
            "/channels/cs/messages",
            content="é".encode(),
            headers={"content-type": "text/plain; charset=us-ascii"},
        )
        assert not_ascii.status_code == 400
        for charset in ("UTF-8", "utf8", "us-ascii"):
            answer = await relay.http.post(
                "/channels/cs/messages",
                content=b"ok",
                headers={"content-type": f"text/plain; charset={charset}"},
            )
            assert answer.status_code == 202
        assert [await consumer.get_message() for _ in range(3)] == ["ok", "ok", "ok"]
        stats = await relay.channel("cs")
        assert stats["messages_in"] == 3


async def test_a_publish_that_finds_no_room_in_time_gets_503_and_publishes_nothing(
    start_relay: StartRelay,
) -> None:
    """A full queue: after publish_timeout_seconds the HTTP publish gets 503, and the queue
    holds only what was accepted before."""
    relay = await start_relay(
        channels={"jobs.*": {"mode": "queue", "queue_buffer_messages": 2}},
        publish_timeout_seconds=0.2,
    )
    async with relay.websocket("/ws/producer/jobs.t?ack=none"):  # keeps the channel alive
        for i in range(2):
            answer = await relay.http.post("/channels/jobs.t/messages", content=f"j{i}".encode())
            assert answer.status_code == 202
        late = await relay.http.post("/channels/jobs.t/messages", content=b"late")
        assert late.status_code == 503
        assert "nothing published" in late.json()["error"]
        assert (await relay.channel("jobs.t"))["buffered"] == 2
        async with relay.websocket("/ws/consumer/jobs.t") as consumer:
            assert [await consumer.get_message() for _ in range(2)] == [b"j0", b"j1"]
        stats = await relay.channel("jobs.t")
        assert (stats["messages_in"], stats["buffered"]) == (2, 0)


async def test_channels_are_listed_a_page_at_a_time(relay: RunningRelay) -> None:
    """?limit= pages through the channels in name order, ``next`` naming the cursor; a bad
    or too large limit is refused with 400."""
    listed: list[str] = []
    async with (
        relay.websocket("/ws/consumer/p00"),
        relay.websocket("/ws/consumer/p03"),
        relay.websocket("/ws/consumer/p05"),
    ):
        after = ""
        while True:
            page = (await relay.http.get(f"/channels?limit=2&after={after}")).json()
            listed += [c["name"] for c in page["channels"]]
            if "next" not in page:
                break
            after = page["next"]
        for bad in ("0", "1001", "x"):
            assert (await relay.http.get(f"/channels?limit={bad}")).status_code == 400
    assert listed == ["p00", "p03", "p05"]


async def test_a_channels_connections_are_listed_a_page_at_a_time(relay: RunningRelay) -> None:
    """GET /channels/{c}?limit= pages through its producers and consumers in id order."""
    async with (
        relay.websocket("/ws/consumer/many"),
        relay.websocket("/ws/consumer/many"),
        relay.websocket("/ws/producer/many"),
    ):
        ids: list[int] = []
        after = 0
        while True:
            page = await relay.http.get(f"/channels/many?limit=2&after={after}")
            assert page.status_code == 200
            ids += [c["id"] for c in page.json()["connections"]]
            if "next" not in page.json():
                break
            after = page.json()["next"]
        assert len(ids) == 3
        assert ids == sorted(ids)
        assert (await relay.http.get("/channels/many?after=x")).status_code == 400


async def test_http_publishes_past_a_clients_rate_get_429_and_publish_nothing(
    start_relay: StartRelay,
) -> None:
    """HTTP publishes count against the client's publish rate (its token's subject), as a
    producer connection's do: past it 429 with Retry-After, nothing published; another
    client publishes all the same. (Without it, any client could publish over HTTP as
    fast as the relay could take it, whatever the rate set for producers.)"""
    relay = await start_relay(
        auth_hmac_secret=SECRET, publish_rate_messages_per_second=1, auth_leeway_seconds=0
    )
    grant = {"channels": {"rated": ["publish", "subscribe"]}}
    alice = {"authorization": f"Bearer {token(sub='alice', grant=grant)}"}
    bob = {"authorization": f"Bearer {token(sub='bob', grant=grant)}"}
    async with relay.websocket("/ws/consumer/rated", extra_headers=list(alice.items())) as consumer:
        first = await relay.http.post("/channels/rated/messages", content=b"a1", headers=alice)
        assert first.status_code == 202
        refused = await relay.http.post("/channels/rated/messages", content=b"a2", headers=alice)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert "rate limit" in refused.json()["error"]
        other = await relay.http.post("/channels/rated/messages", content=b"b1", headers=bob)
        assert other.status_code == 202
        # (a2, had it been published, would have come before b1)
        assert [await consumer.get_message() for _ in range(2)] == [b"a1", b"b1"]
