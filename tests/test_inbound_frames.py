"""Producers' frames of every shape reach consumers in order.

The relay parses simple frames itself and hands anything else (fragments, control frames,
compression, invalid UTF-8, oversized frames) to wsproto; these tests mix both in one read.
"""

from __future__ import annotations

import json
import os
import zlib

import pytest
import trio
import wsproto.events as ws

from tests.conftest import StartRelay
from tests.helpers import RawWebSocket, RunningRelay, receive_n
from triorelay.compat import hypercorn as compat

MiB = 1024 * 1024


def masked_frame(first_byte: int, payload: bytes) -> bytes:
    """A client frame built by hand (for payloads wsproto refuses to send)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([first_byte, 0x80 | len(payload)]) + mask + masked


async def test_fragments_and_pings_between_simple_frames(relay: RunningRelay) -> None:
    """Simple frames, a fragmented message with a ping inside, in one write: all in order."""
    async with relay.websocket("/ws/consumer/frag") as consumer:
        producer = await RawWebSocket.connect(relay.port, "/ws/producer/frag?ack=id", 65536)
        try:
            await producer.send_events(
                ws.TextMessage(data="a"),
                ws.TextMessage(data="he", message_finished=False),
                ws.Ping(payload=b"p"),
                ws.TextMessage(data="llo", message_finished=True),
                ws.BytesMessage(data=b"z" * 70_000),
                ws.TextMessage(data="b"),
            )
            assert await receive_n(consumer, 4) == ["a", "hello", b"z" * 70_000, "b"]
            events = await producer.read_events(5)
        finally:
            producer.close()
    acks = [json.loads(e.data) for e in events if isinstance(e, ws.TextMessage)]
    assert acks == [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}]
    assert any(isinstance(e, ws.Pong) and e.payload == b"p" for e in events)


async def test_compressed_producer(start_relay: StartRelay) -> None:
    """With compression on, a permessage-deflate producer is relayed through wsproto."""
    relay = await start_relay(compression=True)
    async with relay.websocket("/ws/consumer/zp") as consumer:
        producer = await RawWebSocket.connect(relay.port, "/ws/producer/zp", 65536, deflate=True)
        try:
            await producer.send_events(ws.TextMessage(data="x" * 5000), ws.BytesMessage(data=b""))
            assert await receive_n(consumer, 2) == ["x" * 5000, b""]
            echoes = await producer.read_messages(2)
        finally:
            producer.close()
    assert echoes == ["x" * 5000, b""]


async def test_invalid_utf8_closes_1007_after_the_valid_ones(relay: RunningRelay) -> None:
    """Invalid UTF-8 in a text frame closes that producer with 1007; earlier messages went."""
    async with relay.websocket("/ws/consumer/utf") as consumer:
        producer = await RawWebSocket.connect(relay.port, "/ws/producer/utf?ack=none", 65536)
        try:
            await producer.send_raw(
                masked_frame(0x81, b"ok")
                + masked_frame(0x81, b"\xff\xfe")
                + masked_frame(0x81, b"no")
            )
            _, code, _ = await producer.read_until_closed()
        finally:
            producer.close()
        assert code == 1007
        assert await consumer.get_message() == "ok"
        async with relay.websocket("/ws/producer/utf?ack=none") as other:
            await other.send_message("still relaying")
            assert await consumer.get_message() == "still relaying"


async def test_oversized_frame_closes_1009(start_relay: StartRelay) -> None:
    """A frame declaring more than max_message_bytes closes that producer with 1009."""
    relay = await start_relay(max_message_bytes=1024, consumer_buffer_bytes=4096)
    producer = await RawWebSocket.connect(relay.port, "/ws/producer/big", 65536)
    try:
        await producer.send_events(ws.TextMessage(data="fine"), ws.BytesMessage(data=b"x" * 2048))
        messages, code, _ = await producer.read_until_closed()
    finally:
        producer.close()
    assert messages == ["fine"]
    assert code == 1009


@pytest.mark.parametrize("role", ["producer", "consumer", "echo"])
async def test_a_client_that_never_answers_the_close_is_dropped(
    start_relay: StartRelay, role: str
) -> None:
    """A client that reads the relay's close frame but never answers it is not kept open:
    once the relay's handler has sent the close and ended, Hypercorn drops the connection."""
    relay = await start_relay(max_message_bytes=1024, consumer_buffer_bytes=4096,
                              close_timeout_seconds=0.3)  # fmt: skip
    path = "/ws/echo" if role == "echo" else f"/ws/{role}/mute"
    client = await RawWebSocket.connect(relay.port, path, 65536)
    try:
        await client.send_events(ws.BytesMessage(data=b"x" * 2048))  # over the limit: 1009
        received = b""
        with trio.fail_after(10):
            while True:  # read everything, answer nothing
                try:
                    data = await client.sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                received += data
    finally:
        client.close()
    assert received[:1] == b"\x88"  # the close frame came first, then the socket was dropped
    assert int.from_bytes(received[2:4], "big") == 1009


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "plain-asgi"])
@pytest.mark.parametrize("role", ["producer", "consumer", "echo"])
async def test_a_client_that_ignores_the_1009_for_fragments_is_dropped(
    start_relay: StartRelay, role: str, fast_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fragments over the limit: Hypercorn closes with 1009 and the relay ends the connection,
    so a client that ignores the close and keeps sending is not kept open (with the inbound
    tap, which sees the limit passed, and without it, on plain ASGI)."""
    if not fast_path:
        monkeypatch.setattr(compat, "tap_inbound", lambda *args, **kwargs: None)
        monkeypatch.setattr(compat, "open_direct", lambda *args, **kwargs: None)
    relay = await start_relay(max_message_bytes=1024, consumer_buffer_bytes=4096)
    path = "/ws/echo" if role == "echo" else f"/ws/{role}/chatty"
    client = await RawWebSocket.connect(relay.port, path, 65536)
    try:
        fragments = [ws.BytesMessage(data=b"x" * 800, message_finished=False)] * 3
        await client.send_events(*fragments)  # 2,400 bytes of one message: over the limit
        received = b""
        with trio.fail_after(10):
            while True:  # keep sending more of the message, never answer the close
                try:
                    await client.send_events(fragments[0])
                    with trio.move_on_after(0.05):
                        data = await client.sock.recv(65536)
                        if not data:
                            break
                        received += data
                except OSError:
                    break
    finally:
        client.close()
    assert received[:1] == b"\x88"
    assert int.from_bytes(received[2:4], "big") == 1009


@pytest.mark.parametrize("role", ["producer", "consumer"])
async def test_huge_frame_is_refused_on_its_header(start_relay: StartRelay, role: str) -> None:
    """A frame header declaring 300 MiB is answered with 1009 before any payload arrives."""
    relay = await start_relay()
    client = await RawWebSocket.connect(relay.port, f"/ws/{role}/huge", 65536)
    try:
        header = bytes([0x82, 0x80 | 127]) + (300 * 1024 * 1024).to_bytes(8, "big")
        await client.send_raw(header + os.urandom(4) + b"\x00" * 1000)  # mask, a little payload
        _, code, reason = await client.read_until_closed()
    finally:
        client.close()
    assert code == 1009
    assert reason is not None
    assert "limit" in reason


async def test_compressed_frame_without_negotiation_is_refused(relay: RunningRelay) -> None:
    """With compression off, a deflate bomb (RSV1 frame) is a protocol error: close 1002."""
    bomb = zlib.compressobj(wbits=-15)
    payload = bomb.compress(b"\x00" * (64 * MiB)) + bomb.flush(zlib.Z_SYNC_FLUSH)[:-4]
    assert len(payload) < 100_000
    client = await RawWebSocket.connect(relay.port, "/ws/producer/bomb", 65536, deflate=True)
    try:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        header = bytes([0xC2, 0x80 | 127]) + len(payload).to_bytes(8, "big")  # FIN+RSV1, binary
        await client.send_raw(header + mask + masked)
        _, code, _ = await client.read_until_closed()
    finally:
        client.close()
    assert code == 1002


@pytest.mark.parametrize("path", ["/ws/producer/frag", "/ws/consumer/frag", "/ws/echo"])
async def test_fragmented_message_over_the_limit_closes_1009(
    start_relay: StartRelay, path: str
) -> None:
    """Fragments each under the limit, together over it: close 1009, whatever the role."""
    relay = await start_relay(max_message_bytes=1024, consumer_buffer_bytes=4096)
    client = await RawWebSocket.connect(relay.port, path, 65536)
    try:
        await client.send_events(
            ws.BytesMessage(data=b"x" * 512, message_finished=False),
            ws.BytesMessage(data=b"x" * 512, message_finished=False),
            ws.BytesMessage(data=b"x", message_finished=True),
        )
        _, code, _ = await client.read_until_closed()
    finally:
        client.close()
    assert code == 1009


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
async def test_fragmented_message_at_the_limit_is_relayed(
    start_relay: StartRelay, deflate: bool
) -> None:
    """A message of exactly max_message_bytes in fragments, compressed or not, is relayed."""
    relay = await start_relay(max_message_bytes=1024, consumer_buffer_bytes=4096, compression=True)
    message = bytes(range(256)) * 4
    async with relay.websocket("/ws/consumer/edge") as consumer:
        producer = await RawWebSocket.connect(
            relay.port, "/ws/producer/edge?ack=none", 65536, deflate=deflate
        )
        try:
            await producer.send_events(
                *[
                    ws.BytesMessage(data=message[i : i + 256], message_finished=i == 768)
                    for i in range(0, 1024, 256)
                ],
                ws.TextMessage(data="é" * 512),  # 1024 bytes in UTF-8: fits
            )
            assert await receive_n(consumer, 2) == [message, "é" * 512]
        finally:
            producer.close()


async def test_compressed_message_over_the_limit_closes_1009(start_relay: StartRelay) -> None:
    """With compression on, a message inflating past the limit closes 1009; others carry on."""
    relay = await start_relay(max_message_bytes=1024, consumer_buffer_bytes=4096, compression=True)
    async with relay.websocket("/ws/consumer/zbig") as consumer:
        producer = await RawWebSocket.connect(
            relay.port, "/ws/producer/zbig?ack=none", 65536, deflate=True
        )
        try:
            await producer.send_events(
                ws.BytesMessage(data=bytes(1024)), ws.BytesMessage(data=bytes(64 * 1024))
            )
            _, code, _ = await producer.read_until_closed()
        finally:
            producer.close()
        assert code == 1009
        assert await consumer.get_message() == bytes(1024)
        async with relay.websocket("/ws/producer/zbig?ack=none") as other:
            await other.send_message("still relaying")
            assert await consumer.get_message() == "still relaying"


@pytest.mark.parametrize(
    "header",
    [
        bytes([0x82, 0x80 | 126]) + (5).to_bytes(2, "big"),  # 16 bits for a 7-bit length
        bytes([0x82, 0x80 | 127]) + (5).to_bytes(8, "big"),  # 64 bits for a 7-bit length
        bytes([0x82, 0x80 | 127]) + ((1 << 63) | 5).to_bytes(8, "big"),  # top bit set
        bytes([0x82, 5]),  # unmasked
    ],
    ids=["16-bit", "64-bit", "top-bit", "unmasked"],
)
async def test_malformed_frame_closes_1002_after_the_valid_ones(
    relay: RunningRelay, header: bytes
) -> None:
    """A frame RFC 6455 forbids (non-minimal or top-bit length, no mask) closes 1002, with a
    close frame; the messages before it were relayed."""
    async with relay.websocket("/ws/consumer/bad") as consumer:
        producer = await RawWebSocket.connect(relay.port, "/ws/producer/bad?ack=none", 65536)
        try:
            masked = header[1] & 0x80
            await producer.send_raw(
                masked_frame(0x81, b"ok") + header + (os.urandom(4) if masked else b"") + b"x" * 5
            )
            with trio.fail_after(10):  # before the fix: no close frame at all, or a 1009
                _, code, _ = await producer.read_until_closed()
        finally:
            producer.close()
        assert code == 1002
        assert await consumer.get_message() == "ok"
