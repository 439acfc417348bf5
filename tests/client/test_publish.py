"""open_publisher() and publish() against the real relay: offsets, pipelining, failures."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing
from trio_websocket import WebSocketRequest

from tests.auth.keys import SECRET, token
from tests.client.fake_relay import start_fake_relay, start_mute_relay
from tests.conftest import StartRelay
from tests.helpers import RunningRelay, receive_n
from triorelay.client import (
    ClientError,
    Closed,
    ConnectionFailed,
    ProtocolError,
    Rejected,
    open_publisher,
    publish,
)
from triorelay.client.connection import Liveness

GUARD_SECONDS = 10


async def test_publish_returns_contiguous_offsets(relay: RunningRelay) -> None:
    """Each message's offset follows the last: 1..3, then 4..5 on the same channel (kept
    alive by a consumer: the memory broker forgets an idle channel)."""
    with trio.fail_after(GUARD_SECONDS):
        async with relay.websocket("/ws/consumer/news"):
            assert await publish(relay.ws_url, "news", ["a", "b", b"\x00c"]) == [1, 2, 3]
            assert await publish(relay.http_url, "news", ["d", "e"]) == [4, 5]


async def test_messages_arrive_as_published(relay: RunningRelay) -> None:
    """Text stays text, bytes stay bytes, empty included, in order."""
    payloads: list[str | bytes] = ["text", b"\x00\xff", "", b"", "ünïcødé"]
    with trio.fail_after(GUARD_SECONDS):
        async with relay.websocket("/ws/consumer/types") as consumer:
            await publish(relay.ws_url, "types", payloads)
            assert await receive_n(consumer, len(payloads)) == payloads


async def test_pipelined_sends_stay_within_max_in_flight(relay: RunningRelay) -> None:
    """send() without waiting: at most max_in_flight unacknowledged, offsets in order."""
    with trio.fail_after(GUARD_SECONDS):
        async with open_publisher(relay.ws_url, "pipe", max_in_flight=4) as publisher:
            acks = []
            for number in range(50):
                acks.append(await publisher.send(f"m{number}"))
                assert publisher.statistics().in_flight <= 4
            offsets = [await ack.wait() for ack in acks]
            assert publisher.statistics().published == 50
    assert offsets == list(range(1, 51))


async def test_publishers_in_several_tasks_get_distinct_contiguous_offsets(
    relay: RunningRelay,
) -> None:
    """Concurrent publish() calls on one publisher: each gets its own offset, none skipped."""
    offsets: list[int] = []
    with trio.fail_after(GUARD_SECONDS):
        async with open_publisher(relay.ws_url, "many") as publisher:

            async def publish_ten(task: int) -> None:
                for number in range(10):
                    offsets.append(await publisher.publish(f"{task}-{number}"))

            async with trio.open_nursery() as nursery:
                for task in range(5):
                    nursery.start_soon(publish_ten, task)
    assert sorted(offsets) == list(range(1, 51))


async def test_leaving_the_block_waits_for_the_acks_due(relay: RunningRelay) -> None:
    """Messages sent without waiting are acknowledged before the block ends."""
    with trio.fail_after(GUARD_SECONDS):
        async with open_publisher(relay.ws_url, "flush") as publisher:
            acks = [await publisher.send(f"m{n}") for n in range(20)]
        assert all(ack.done for ack in acks)
        assert [await ack.wait() for ack in acks] == list(range(1, 21))


async def test_a_message_over_the_limit_closes_with_1009(start_relay: StartRelay) -> None:
    """The messages before it are acknowledged; it and every later call raise Closed 1009."""
    relay = await start_relay(max_message_bytes=1024, consumer_buffer_bytes=1024 * 64)
    with trio.fail_after(GUARD_SECONDS):
        async with open_publisher(relay.ws_url, "big") as publisher:
            assert await publisher.publish("small") == 1
            with pytest.raises(Closed) as raised:
                await publisher.publish("x" * 2000)
            assert raised.value.code == 1009
            with pytest.raises(Closed):
                await publisher.publish("after")


async def test_a_bad_channel_name_is_rejected(relay: RunningRelay) -> None:
    """The relay's 400 comes out as Rejected with its status and reason."""
    with trio.fail_after(GUARD_SECONDS), pytest.raises(Rejected) as raised:
        await publish(relay.ws_url, "bad name!", ["x"])
    assert raised.value.status == 400
    assert "channel names" in raised.value.body


async def test_no_relay_is_connection_failed() -> None:
    """Nothing listening: ConnectionFailed, the OSError chained."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(GUARD_SECONDS), pytest.raises(ConnectionFailed):
        await publish(f"ws://127.0.0.1:{port}", "chat", ["x"])


async def test_a_payload_neither_str_nor_bytes_is_a_type_error(relay: RunningRelay) -> None:
    """Only str (text) and bytes (binary) are messages."""
    with trio.fail_after(GUARD_SECONDS):
        async with open_publisher(relay.ws_url, "checks") as publisher:
            with pytest.raises(TypeError):
                await publisher.publish(bytearray(b"x"))  # type: ignore[arg-type]
            assert await publisher.publish("fine") == 1


async def test_with_a_token(start_relay: StartRelay) -> None:
    """A token goes as Authorization: Bearer; a provider is called for it; a text the relay
    would take as a refresh is refused (ValueError) before it goes out; in-band refreshes
    leave the acks in step."""
    relay = await start_relay(auth_hmac_secret=SECRET)
    grant = {"channels": {"chat": ["publish"]}}
    calls = 0
    refreshed = trio.Event()

    def provider() -> str:
        nonlocal calls
        calls += 1
        if calls == 3:  # the first, then two in-band refreshes
            refreshed.set()
        return token(grant=grant)

    with trio.fail_after(GUARD_SECONDS):
        async with open_publisher(
            relay.ws_url, "chat", token=provider, token_refresh_seconds=0.01
        ) as publisher:
            assert await publisher.publish("one") == 1
            with pytest.raises(ValueError, match="refresh"):
                await publisher.publish('{"triorelay":"refresh","token":"x"}')
            await refreshed.wait()
            assert await publisher.publish_many(["two", "three"]) == [2, 3]
        with pytest.raises(Rejected) as raised:
            await publish(relay.ws_url, "other", ["x"], token=token(grant=grant))
        assert raised.value.status == 403
        with pytest.raises(Rejected) as raised:
            await publish(relay.ws_url, "chat", ["x"])
        assert raised.value.status == 401


async def test_an_ack_that_is_not_one_is_a_protocol_error(nursery: trio.Nursery) -> None:
    """A relay answering something other than {"id": N}: ProtocolError for the message
    waiting, and for every later call."""

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await request.accept()
        await ws.get_message()
        await ws.send_message("not an ack")
        await trio.sleep_forever()

    fake = await start_fake_relay(nursery, handler)
    with trio.fail_after(GUARD_SECONDS):
        async with open_publisher(fake.url, "chat") as publisher:
            with pytest.raises(ProtocolError, match="expected an ack"):
                await publisher.publish("x")
            with pytest.raises(ProtocolError):
                await publisher.send("y")
    assert fake.handshakes[0].path == "/ws/producer/chat"
    assert fake.handshakes[0].query == {"ack": "id"}


async def test_messages_waiting_when_the_relay_closes_fail_with_its_code(
    nursery: trio.Nursery,
) -> None:
    """Acks still due when the relay closes: each fails with Closed and the close code;
    those that came first keep their offsets."""

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await request.accept()
        for _ in range(3):
            await ws.get_message()
        await ws.send_message('{"id": 7}')
        await ws.aclose(1013, "the broker is unavailable: message not published")

    fake = await start_fake_relay(nursery, handler)
    with trio.fail_after(GUARD_SECONDS):
        async with open_publisher(fake.url, "chat") as publisher:
            acks = [await publisher.send(f"m{n}") for n in range(3)]
            assert await acks[0].wait() == 7
            for ack in acks[1:]:
                with pytest.raises(Closed) as raised:
                    await ack.wait()
                assert raised.value.code == 1013


async def test_a_send_cancelled_mid_write_leaves_the_publisher_unusable(
    nursery: trio.Nursery,
) -> None:
    """Cancelled while its message was half written (the relay not reading): later calls
    raise, since an ack could no longer be matched to its message."""
    url = await start_mute_relay(nursery)
    with trio.fail_after(GUARD_SECONDS):
        async with open_publisher(url, "chat", close_timeout_seconds=0.1) as publisher:
            with trio.move_on_after(0.2) as cancelled:
                await publisher.send(b"x" * 16 * 1024 * 1024)
            assert cancelled.cancelled_caught
            with pytest.raises(ClientError, match="cancelled"):
                await publisher.send("next")


async def test_a_publisher_finds_a_silent_relay_by_ping(nursery: trio.Nursery) -> None:
    """The relay accepts, then goes silent (no pong, no close, no ack): after
    ping_timeout_seconds the ack due fails with Closed saying so, and so does the next
    send, instead of waiting for as long as TCP takes to give up."""
    url = await start_mute_relay(nursery)
    with trio.fail_after(GUARD_SECONDS):
        async with open_publisher(
            url,
            "chat",
            ping_interval_seconds=0.02,
            ping_timeout_seconds=0.1,
            close_timeout_seconds=0.1,
        ) as publisher:
            ack = await publisher.send("never acked")
            with pytest.raises(Closed, match="no pong") as raised:
                await ack.wait()
            assert raised.value.code is None
            with pytest.raises(Closed, match="no pong"):
                await publisher.send("after")


class NoPong:
    """A connection whose pings are never answered (the pong waits behind a backlog)."""

    async def ping(self) -> None:
        await trio.sleep_forever()


async def test_a_keepalive_does_not_give_up_on_a_relay_it_hears_from(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A relay whose pong is late behind the acks it sends (a slow consumer's backlog
    ahead of it) is not taken for silent: each ack heard restarts the wait. Heard from
    no more, it is given up one interval and one timeout later."""
    liveness = Liveness(1, 5)

    async def hear_every_two_seconds() -> None:
        for _ in range(10):
            await trio.sleep(2)
            liveness.heard()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hear_every_two_seconds)
        with trio.move_on_after(20) as still_watching:
            await liveness.watch(NoPong())  # type: ignore[arg-type]
        assert still_watching.cancelled_caught
    with trio.fail_after(1 + 5 + 1):
        await liveness.watch(NoPong())  # type: ignore[arg-type]
