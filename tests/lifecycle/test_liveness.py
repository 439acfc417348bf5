"""Dead peers: a peer that never answers pings is closed; a live one stays."""

from __future__ import annotations

import logging
import socket

import pytest
import trio

from tests.conftest import StartRelay
from tests.helpers import RawWebSocket
from triorelay import framing
from triorelay.compat import hypercorn as compat


async def test_silent_peer_is_closed_and_live_peer_stays(start_relay: StartRelay) -> None:
    """No pong within interval + timeout: close 1011; a peer that answers pings carries on."""
    relay = await start_relay(ping_interval_seconds=0.1, ping_timeout_seconds=0.1)
    async with relay.websocket("/ws/consumer/live") as live:
        silent = await RawWebSocket.connect(relay.port, "/ws/consumer/live", 65536)
        try:
            _, code, reason = await silent.read_until_closed(answer_pings=False)
        finally:
            silent.close()
        assert code == 1011
        assert reason == "keepalive ping timeout"
        # At least interval + timeout has passed: the live consumer, which answered, remains.
        async with relay.websocket("/ws/producer/live?ack=none") as producer:
            await producer.send_message("still connected")
            assert await live.get_message() == "still connected"
    stats = (await relay.http.get("/channels")).json()["channels"]
    assert stats == []


async def test_accepted_sockets_get_tcp_user_timeout(start_relay: StartRelay) -> None:
    """Every accepted WebSocket's socket carries TCP_USER_TIMEOUT from the settings."""
    relay = await start_relay(tcp_user_timeout_seconds=7.5)
    async with relay.websocket("/ws/consumer/tcp"):
        (send,) = relay.relay.reaper._sends.values()
        stream = compat.transport_of(send)
        assert isinstance(stream, trio.SocketStream)
        value = stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
    assert value == 7500


async def test_a_producer_the_relay_holds_back_is_not_taken_for_a_dead_peer(
    start_relay: StartRelay,
) -> None:
    """A full queue holds a producer's reading back for longer than interval + timeout: it is
    not closed with 1011, and once a consumer makes room every message is published."""
    relay = await start_relay(
        ping_interval_seconds=0.1,
        ping_timeout_seconds=0.1,
        channels={"jobs.*": {"mode": "queue", "queue_buffer_messages": 2}},
    )
    async with relay.websocket("/ws/producer/jobs.held?ack=id") as producer:
        for i in range(6):
            await producer.send_message(f"job{i}")
        assert [await producer.get_message() for _ in range(2)] == ['{"id": 1}', '{"id": 2}']
        # The third publish waits for room: the relay reads nothing more from this producer.
        # Wait well past interval + timeout (0.2 s): no ack, and above all no 1011.
        with trio.move_on_after(1.0) as waited:
            await producer.get_message()
        assert waited.cancelled_caught
        assert not producer.closed
        async with relay.websocket("/ws/consumer/jobs.held") as consumer:
            assert [await consumer.get_message() for _ in range(6)] == [f"job{i}" for i in range(6)]
            acks = [await producer.get_message() for _ in range(4)]
        assert acks == [f'{{"id": {i}}}' for i in range(3, 7)]


async def test_a_producer_that_stops_reading_its_acks_is_a_dead_peer(
    start_relay: StartRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """A producer with acks on that publishes and never reads: once the relay's ack write is
    stuck behind its full window, the relay is not holding it back, the peer is silent, and
    liveness closes it (1011, the socket aborted by the reaper). TCP_USER_TIMEOUT is off: no
    other bound applies. (The stuck ack write counted as the relay's own hold: the connection
    stayed until shutdown.)"""
    caplog.set_level(logging.INFO, logger="triorelay.lifecycle.liveness")
    relay = await start_relay(
        ping_interval_seconds=0.1, ping_timeout_seconds=0.1, tcp_user_timeout_seconds=None
    )
    producer = await RawWebSocket.connect(relay.port, "/ws/producer/unread?ack=echo", 4096)
    message = "x" * 65536
    try:
        with trio.fail_after(10):
            while True:  # each echoed back, never read: the acks fill both buffers
                try:
                    await producer.send_text(message)
                except OSError:
                    break  # the relay dropped the connection
    finally:
        producer.sock.close()
    assert "closing a connection that did not answer a ping" in caplog.messages


async def test_a_job_consumer_that_stops_reading_is_a_dead_peer(
    start_relay: StartRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """An acked queue's consumer that never reads, its window full of jobs, and sends frames
    the relay must refuse: once the refusals' write is stuck, liveness closes it (1011, then
    the reaper drops it). TCP_USER_TIMEOUT is off. (The stuck write counted as the relay's own
    hold: the consumer kept its connection for good.)"""
    caplog.set_level(logging.INFO, logger="triorelay.lifecycle.liveness")
    relay = await start_relay(
        ping_interval_seconds=0.1,
        ping_timeout_seconds=0.1,
        tcp_user_timeout_seconds=None,
        channels={
            "*.dead": {"mode": "broadcast"},
            "jobs*": {"mode": "queue", "ack": "explicit", "max_in_flight": 64},
        },
    )
    consumer = await RawWebSocket.connect(
        relay.port, "/ws/consumer/jobs", 4096, subprotocols=[framing.SUBPROTOCOL]
    )
    try:
        async with relay.websocket("/ws/producer/jobs?ack=none") as producer:
            for _ in range(64):
                await producer.send_message("j" * 65536)
            with trio.fail_after(10):
                while True:  # malformed settles: each refused, never read
                    try:
                        await consumer.send_text("x" * 1024)
                    except OSError:
                        break  # the relay dropped the connection
    finally:
        consumer.sock.close()
    assert "closing a connection that did not answer a ping" in caplog.messages
