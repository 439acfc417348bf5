"""The size limit inside Hypercorn's and wsproto's inbound path (compat/message_limits.py).

The first tests pin the upstream behaviour the module works around (Hypercorn 0.18.0,
wsproto 1.3.2): if an upgrade changes it, they fail and the workaround can be revisited. The
others feed one wsproto side's output into the other, synchronously.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import wsproto.events as ws
from hypercorn.protocol.ws_stream import FrameTooLargeError, Handshake, WebsocketBuffer
from wsproto.connection import Connection, ConnectionType
from wsproto.extensions import PerMessageDeflate

from triorelay.compat import message_limits
from triorelay.compat.message_limits import BoundedDeflate, LimitedBuffer, limit_inbound

MiB = 1024 * 1024
OFFER = [
    (b"connection", b"Upgrade"),
    (b"upgrade", b"websocket"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
]


def _deflate_client() -> Connection:
    extension = PerMessageDeflate()
    extension.finalize("permessage-deflate; client_max_window_bits=15")
    return Connection(ConnectionType.CLIENT, [extension])


def test_upstream_buffer_writes_before_checking_and_keeps_growing() -> None:
    """Hypercorn's WebsocketBuffer: over the limit it has already written, and never clears."""
    buffer = WebsocketBuffer(10)
    buffer.extend(ws.BytesMessage(data=b"x" * 8, message_finished=False))
    for length in (16, 24):
        with pytest.raises(FrameTooLargeError):
            buffer.extend(ws.BytesMessage(data=b"x" * 8, message_finished=False))
        assert buffer.length == length


def test_upstream_deflate_inflates_a_chunk_whole() -> None:
    """wsproto's PerMessageDeflate turns a few KB into 4 MiB in one call (hypercorn#307)."""
    client = _deflate_client()
    data = client.send(ws.BytesMessage(data=bytes(4 * MiB)))
    assert len(data) < 8 * 1024
    server = Handshake(OFFER, "1.1").accept(None, [])[2]
    server.receive_data(data)
    (event,) = server.events()
    assert isinstance(event, ws.BytesMessage)
    assert len(event.data) == 4 * MiB


def test_upstream_accept_returns_the_connection_and_its_extension() -> None:
    """Handshake.accept: (101, headers, Connection) with the negotiated PerMessageDeflate."""
    status, headers, connection = Handshake(OFFER, "1.1").accept(None, [])
    assert status == 101
    assert (
        b"sec-websocket-extensions",
        b"permessage-deflate; client_max_window_bits=15",
    ) in headers
    proto: Any = connection._proto
    assert [type(e) for e in proto.extensions] == [PerMessageDeflate]
    assert proto._frame_decoder.extensions == proto.extensions


def test_limited_buffer_refuses_before_writing_and_for_good() -> None:
    """Past the limit nothing is written, the buffer empties, and every later piece is refused."""
    buffer = LimitedBuffer(10)
    buffer.extend(ws.BytesMessage(data=b"x" * 10, message_finished=False))
    with pytest.raises(FrameTooLargeError):
        buffer.extend(ws.BytesMessage(data=b"x", message_finished=False))
    assert (buffer.exceeded, buffer.size, buffer.value) == (True, 0, None)
    with pytest.raises(FrameTooLargeError):
        buffer.extend(ws.BytesMessage(data=b""))


def test_limited_buffer_counts_text_in_utf8_bytes() -> None:
    """Text counts its UTF-8 bytes, as the relay's check of a frame header does."""
    buffer = LimitedBuffer(4)
    buffer.extend(ws.TextMessage(data="éé", message_finished=False))
    with pytest.raises(FrameTooLargeError):
        buffer.extend(ws.TextMessage(data="é"))


class _FakeWSStream:
    """The attributes of Hypercorn's WSStream that limit_inbound uses, before the accept."""

    def __init__(self) -> None:
        self.handshake = Handshake(OFFER, "1.1")
        self.buffer = WebsocketBuffer(16 * MiB)
        self.state = message_limits.ASGIWebsocketState.HANDSHAKE

    async def app_send(self, message: Any) -> None:  # pragma: no cover - never called
        raise AssertionError(message)


def _accept_bounded(limit: int) -> tuple[list[Any], Connection, LimitedBuffer]:
    stream = _FakeWSStream()
    buffer = limit_inbound(stream.app_send, limit)
    assert buffer is stream.buffer
    _, headers, connection = stream.handshake.accept(None, [])
    return headers, connection, buffer


def _hypercorn_reads(server: Connection, buffer: LimitedBuffer, data: bytes) -> list[Any]:
    """Feed ``data`` 64 KiB at a time as Hypercorn does: what reaches the buffer, or 1009."""
    received: list[Any] = []
    for start in range(0, len(data), 65536):
        server.receive_data(data[start : start + 65536])
        for event in server.events():
            assert isinstance(event, ws.BytesMessage)
            assert len(event.data) <= buffer.max_length + 1, "inflated past the limit at once"
            try:
                buffer.extend(event)
            except FrameTooLargeError:
                return [*received, 1009]
            if event.message_finished:
                received.append(buffer.to_message()["bytes"])
                buffer.clear()
    return received


def test_bounded_deflate_stops_inflating_past_the_limit() -> None:
    """A 16 MiB compressed message under a 64 KiB limit: 1009, never more than 64 KiB inflated."""
    headers, server, buffer = _accept_bounded(64 * 1024)
    assert any(name == b"sec-websocket-extensions" for name, _ in headers)
    (extension,) = server._proto.extensions  # type: ignore[attr-defined]
    assert isinstance(extension, BoundedDeflate)
    client = _deflate_client()
    fits = bytes(range(256)) * 256  # exactly 64 KiB
    data = b"".join(
        client.send(ws.BytesMessage(data=payload))
        for payload in (fits, b"small", bytes(16 * MiB), b"after")
    )
    assert _hypercorn_reads(server, buffer, data) == [fits, b"small", 1009]
    assert buffer.exceeded
    assert extension._inflated <= 64 * 1024 + 1


def test_limit_inbound_refuses_compression_it_cannot_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the bounded inflater cannot be installed, the accept goes out without compression."""
    monkeypatch.setattr(message_limits, "_bound_inflation", lambda *args: False)
    headers, connection, _ = _accept_bounded(1024)
    assert all(name != b"sec-websocket-extensions" for name, _ in headers)
    assert connection._proto.extensions == []  # type: ignore[attr-defined]


def test_limit_inbound_declines_outside_hypercorn() -> None:
    """A plain callable: nothing to bound, None."""

    async def send(message: Any) -> None:  # pragma: no cover - never called
        raise AssertionError(message)

    assert limit_inbound(send, 1024) is None


@pytest.mark.parametrize("accepted", [False, True], ids=["refused", "accepted"])
def test_limit_inbound_leaves_no_reference_cycle(accepted: bool) -> None:
    """The handshake's bounded accept does not hold the handshake it is kept on: refused or
    accepted, the stream and its handshake go by reference counting, with no cyclic garbage.
    Once called, the handshake's own accept is back."""
    stream = _FakeWSStream()
    limit_inbound(stream.app_send, 1024)
    if accepted:
        stream.handshake.accept(None, [])
        assert "accept" not in vars(stream.handshake)
    gone = weakref.ref(stream.handshake)
    gc.collect()
    gc.disable()
    try:
        del stream
        assert gone() is None
    finally:
        gc.enable()


def test_limit_inbound_calls_an_accept_already_wrapped() -> None:
    """An accept another layer had replaced is the one the bounded accept calls."""
    stream = _FakeWSStream()
    calls: list[Any] = []
    own = stream.handshake.accept

    def wrapped(*args: Any) -> Any:
        calls.append(args)
        return own(*args)

    stream.handshake.accept = wrapped  # type: ignore[method-assign]
    buffer = limit_inbound(stream.app_send, 1024)
    _, _, connection = stream.handshake.accept(None, [])
    assert calls == [(None, [])]
    (extension,) = connection._proto.extensions  # type: ignore[attr-defined]
    assert isinstance(extension, BoundedDeflate)
    assert extension._buffer is buffer
