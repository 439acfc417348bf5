"""The polled consumer (``--consumer-client polled``): its frame parser against wsproto's
frames, a hand-made server that sends frames with its 101, pings and closes, and a fan-out
on the broadcast loop."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from conftest import RunningServer
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from loadtest import scenarios
from loadtest.clients import DeliveryCounter, DeliveryRecorder, Stopper
from loadtest.codec import encode
from loadtest.polled import FrameError, PolledConsumer, Poller, ServerFrames, consume_polled
from loadtest.report import check_result
from loadtest.stats import RoleStats

pytestmark = pytest.mark.timeout(30)


def server_frames(*events: Any) -> bytes:
    """What a server's wsproto connection writes for ``events``."""
    connection = Connection(ConnectionType.SERVER)
    return b"".join(connection.send(event) for event in events)


def test_frames_split_anywhere_parse_as_wsproto_wrote_them() -> None:
    """Every length form (7-bit, 16-bit, 64-bit), text and binary, a fragmented message with
    a ping between its frames, and a close: fed whole, or cut at every byte of the first
    frames, the parser returns each whole message and control frame once, in order."""
    wire = server_frames(
        TextMessage(data="short"),
        BytesMessage(data=b"m" * 300),
        TextMessage(data="x" * 70_000),
        TextMessage(data="first ", message_finished=False),
        Ping(payload=b"p"),
        TextMessage(data="last"),
        CloseConnection(code=1001, reason="bye"),
    )
    expected = [
        (0x1, b"short"),
        (0x2, b"m" * 300),
        (0x1, b"x" * 70_000),
        (0x9, b"p"),
        (0x1, b"first last"),
        (0x8, (1001).to_bytes(2, "big") + b"bye"),
    ]
    assert ServerFrames().feed(wire) == expected
    for cut in range(1, 320):
        frames = ServerFrames()
        assert frames.feed(wire[:cut]) + frames.feed(wire[cut:]) == expected, cut
    frames = ServerFrames()
    assert [got for byte in wire for got in frames.feed(bytes([byte]))] == expected


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (Connection(ConnectionType.CLIENT).send(TextMessage(data="x")), "masked"),
        (b"\x80\x01x", "continuation"),
        (b"\x09\x01p", "fragmented control"),
        (b"\xc1\x01x", "reserved bits"),
        (b"\x83\x01x", "reserved opcode"),
        (b"\x8b\x00", "reserved opcode"),
        (b"\x89\x7e\x00\x7e" + b"p" * 126, "over 125"),
        (b"\x89\x7f" + (1 << 40).to_bytes(8, "big"), "over 125"),  # refused before its payload
        (b"\x01\x01a\x81\x01b", "inside a fragmented"),
    ],
)
def test_what_no_server_sends_is_a_frame_error(wire: bytes, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        ServerFrames().feed(wire)


async def test_a_polled_consumer_reads_what_came_with_the_101_then_pings_and_a_close(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hand-made server answers the handshake with a message and half of another in the
    same write: the consumer reads both the lean way (wsproto holds part of a frame until the
    rest comes), then hands its socket to the poller, which records a third message, answers
    a ping with its pong, and answers the server's close; each message is one delivery."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    run = "0123abcd"
    first, second, third = (encode(run, 0, n, 0, 0) for n in range(3))
    heard: list[Any] = []

    async def serve(stream: trio.SocketStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            ws.receive_data(await stream.receive_some(65536))
            if any(isinstance(event, Request) for event in ws.events()):
                break
        accept = ws.send(AcceptConnection())
        frames = ws.send(Message(data=second))
        cut = len(frames) // 2
        await stream.send_all(accept + ws.send(Message(data=first)) + frames[:cut])
        await stream.send_all(frames[cut:])  # the lean read waits for it: no handover before
        await handed.wait()  # the poller has the socket from here on
        await stream.send_all(ws.send(Ping(payload=b"hi")) + ws.send(Message(data=third)))
        while not any(isinstance(event, Pong) for event in heard):
            ws.receive_data(await stream.receive_some(65536))
            heard.extend(ws.events())
        await stream.send_all(ws.send(CloseConnection(code=1001, reason="going")))
        while not any(isinstance(event, CloseConnection) for event in heard):
            ws.receive_data(await stream.receive_some(65536))
            heard.extend(ws.events())
        await stream.aclose()

    nursery.start_soon(trio.serve_listeners, serve, listeners)
    handed = trio.Event()
    real_add, real_read = Poller.add, PolledConsumer.read_ready
    polled: list[int] = []  # what the poller recorded, read by read

    def add(self: Poller, consumer: PolledConsumer) -> None:
        real_add(self, consumer)
        handed.set()

    def read_ready(self: PolledConsumer) -> None:
        before = counter.delivered
        real_read(self)
        polled.append(counter.delivered - before)

    monkeypatch.setattr(Poller, "add", add)
    monkeypatch.setattr(PolledConsumer, "read_ready", read_ready)
    stats = RoleStats()
    counter = DeliveryCounter()
    stopper = Stopper()
    await consume_polled(f"ws://127.0.0.1:{port}/", run, stats, counter, stopper)
    assert counter.delivered == 3
    assert sum(polled) == 1  # the third, read by the poller (the first two the lean way)
    assert stats.counters.bad_frames == 0
    assert stats.per_consumer_delivered == [3]
    pong = next(event for event in heard if isinstance(event, Pong))
    assert pong.payload == b"hi"
    close = next(event for event in heard if isinstance(event, CloseConnection))
    assert close.code == 1001  # the server's own code, answered
    assert stats.error_samples == ["consumer: LeanClosedError('closed by the server: 1001 going')"]


async def test_fanout_read_polled_on_the_broadcast_loop(broadcast_server: RunningServer) -> None:
    """1 producer -> 20 consumers read by one poller: every delivery counted, once each."""
    common = scenarios.Common(
        url=broadcast_server.url,
        server_pid=broadcast_server.pid,
        duration_s=1.0,
        drain_s=1.0,
        sample_interval_s=0.25,
        producer_procs=1,
        consumer_client="polled",
    )
    result = await scenarios.run_fanout(common, consumers=20, rate_per_s=100)
    assert check_result(json.loads(json.dumps(result))) == []
    counts = result["summary"]["counts"]
    assert counts["errors"] == 0, result["summary"]["errors"]
    assert counts["sent"] == counts["acks"] == 100
    assert counts["delivered"] == counts["expected"] == 20 * 100
    assert result["extra"]["per_consumer_delivered"]["consumers"] == 20
    assert result["params"]["consumer_client"] == "polled"


async def test_a_failure_inside_the_poller_ends_that_consumer_only() -> None:
    """Whatever one consumer's read raises becomes that consumer's error; the poller goes on
    reading the others."""
    import socket

    poller = Poller()
    pairs = [socket.socketpair() for _ in range(2)]
    stats = RoleStats()
    counter = DeliveryCounter()
    consumers = [
        PolledConsumer(
            ours, WSConnection(ConnectionType.CLIENT), DeliveryRecorder("0123abcd", stats, counter)
        )
        for ours, _ in pairs
    ]
    broken, healthy = consumers

    def explode() -> None:
        raise RuntimeError("broken recorder")

    broken.read_ready = explode  # type: ignore[method-assign]
    for consumer in consumers:
        poller.add(consumer)
    message = server_frames(TextMessage(data=encode("0123abcd", 0, 0, 0, 0)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller.run)
        pairs[0][1].send(message)
        await broken.done.wait()
        pairs[1][1].send(message)
        with trio.fail_after(5):
            while counter.delivered < 1:  # the poller's task reads it: let it run
                await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert isinstance(broken.error, RuntimeError)
    assert not healthy.done.is_set()
    for ours, theirs in pairs:
        ours.close()
        theirs.close()
