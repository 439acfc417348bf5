"""One bad connection never takes the server down."""

from __future__ import annotations

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import start_server
from tests.helpers import RunningRelay


async def _round_trip(relay: RunningRelay) -> None:
    async with (
        relay.websocket("/ws/consumer/alive") as consumer,
        relay.websocket("/ws/producer/alive") as producer,
    ):
        await producer.send_message("still here")
        assert await consumer.get_message() == "still here"


UPGRADE = (
    b"GET /ws/consumer/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def test_upgrade_with_trailing_bytes_does_not_kill_the_server(relay: RunningRelay) -> None:
    """An upgrade request with a frame in the same write (hypercorn#225): only it fails."""
    stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
    async with stream:
        await stream.send_all(UPGRADE + b"\x81\x85abcd" + b"hello")
        answer = b""
        while chunk := await stream.receive_some(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400")
    await _round_trip(relay)


def _frame(opcode: int, payload: bytes, *, fin: bool, masked: bool) -> bytes:
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    header = bytes([first, (0x80 if masked else 0) | min(length, 125)])
    return header + (b"abcd" if masked else b"") + payload[:125]


raw_bytes = st.binary(max_size=300)
frames = st.builds(
    _frame,
    st.integers(0, 15),
    st.binary(max_size=40),
    fin=st.booleans(),
    masked=st.booleans(),
)
after_handshake = st.lists(st.one_of(frames, raw_bytes), max_size=5).map(b"".join)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(["/ws/consumer/fuzz", "/ws/producer/fuzz", "/ws/producer/fuzz?ack=id"]),
    before=st.one_of(st.just(b""), raw_bytes),
    after=after_handshake,
    split=st.booleans(),
)
async def test_fuzzed_connections_never_take_the_server_down(
    path: str, before: bytes, after: bytes, split: bool
) -> None:
    """Garbage, bad handshakes and random frames: afterwards a round trip still works."""
    # pytest-trio runs each Hypothesis example in its own trio run: a server per example.
    async with trio.open_nursery() as nursery:
        relay = await start_server(nursery)
        upgrade = UPGRADE.replace(b"/ws/consumer/x", path.encode())
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        async with stream:
            with trio.move_on_after(0.5):  # a half-open connection may be left waiting
                if split:
                    await stream.send_all(before + upgrade)
                    await stream.send_all(after)
                else:
                    await stream.send_all(before + upgrade + after)
                while await stream.receive_some(65536):
                    pass
        await _round_trip(relay)
        relay.stop.set()
