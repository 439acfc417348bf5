"""InboundTap: what arrived before it first, then frames parsed in Hypercorn's reader task."""

from __future__ import annotations

import gc
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.events import RawData
from hypercorn.protocol.events import Data
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WebsocketBuffer
from trio_websocket import ConnectionClosed
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType

from tests.conftest import StartRelay
from triorelay import framing
from triorelay.compat import hypercorn as compat
from triorelay.errors import BrokerUnavailable
from triorelay.routes import positioned
from triorelay.wire.frames import Opcode, serialize_frame


class _FakeWSStream:
    """Just what InboundTap touches before any frame arrives."""

    def __init__(self, send_channel: trio.MemorySendChannel[Any]) -> None:
        self.app_put = send_channel.send

    async def handle(self, event: Any) -> None:  # pragma: no cover - not reached here
        raise AssertionError(event)


async def test_tap_delivers_what_arrived_before_it_first() -> None:
    """Messages queued for the app before the tap are delivered first, a disconnect kept."""
    send_channel, receive_channel = trio.open_memory_channel[Any](10)
    for event in (
        {"type": "websocket.receive", "bytes": None, "text": "early"},
        {"type": "websocket.receive", "bytes": b"", "text": None},
        {"type": "websocket.disconnect", "code": 1000},
    ):
        send_channel.send_nowait(event)
    delivered: list[Any] = []
    disconnected: list[bool] = []

    async def on_messages(payloads: list[Any]) -> None:
        delivered.extend(payloads)

    tap = compat.InboundTap(
        _FakeWSStream(send_channel), receive_channel, on_messages, lambda c, r: None, 100
    )
    tap.on_disconnect = lambda: disconnected.append(True)
    await tap.start()
    assert delivered == ["early", b""]
    assert disconnected == [True]
    assert receive_channel.receive_nowait()["type"] == "websocket.disconnect"


class _ReadingWSStream(_FakeWSStream):
    """What InboundTap reads from while it parses: an open connection, wsproto idle; what
    reaches Hypercorn's own ``handle`` is recorded."""

    def __init__(self, send_channel: trio.MemorySendChannel[Any]) -> None:
        super().__init__(send_channel)
        self.closed = False
        self.state = ASGIWebsocketState.CONNECTED
        self.connection = WSConnection(ConnectionType.SERVER)
        self.buffer = WebsocketBuffer(1 << 30)
        self.to_wsproto: list[bytes] = []
        self.wsproto_events: list[Any] = []

    async def handle(self, event: Any) -> None:
        """Hypercorn's ``WSStream.handle``: feed wsproto, which holds any partial frame."""
        self.to_wsproto.append(event.data)
        self.connection.receive_data(event.data)
        self.wsproto_events.extend(self.connection.events())


class _Tapped:
    """An InboundTap on a _ReadingWSStream, with what it delivered and refused."""

    def __init__(self, max_message_bytes: int = 1 << 20) -> None:
        send_channel, receive_channel = trio.open_memory_channel[Any](10)
        self.ws_stream = _ReadingWSStream(send_channel)
        self.delivered: list[Any] = []
        self.refused: list[tuple[int, str]] = []
        self.tap = compat.InboundTap(
            self.ws_stream,
            receive_channel,
            self.on_messages,
            lambda code, reason: self.refused.append((code, reason)),
            max_message_bytes,
        )

    async def on_messages(self, payloads: list[Any]) -> None:
        self.delivered.extend(payloads)

    async def read(self, data: bytes) -> None:
        await self.ws_stream.handle(Data(stream_id=1, data=data))


def client(opcode: Opcode, payload: bytes, *, fin: bool = True) -> bytes:
    return serialize_frame(opcode, payload, fin=fin, mask=b"\x0f\xf0\x55\xaa")


async def test_tap_hands_the_rest_of_a_read_to_wsproto_from_a_ping() -> None:
    """Simple frames are delivered; from a ping on, the bytes go to wsproto, and so does the
    next read while wsproto holds part of a frame."""
    tapped = _Tapped()
    await tapped.tap.start()
    rest = client(Opcode.PING, b"p") + client(Opcode.TEXT, b"b")
    await tapped.read(client(Opcode.TEXT, b"a") + client(Opcode.BINARY, b"") + rest[:3])
    await tapped.read(rest[3:])
    assert tapped.delivered == ["a", b""]
    assert b"".join(tapped.ws_stream.to_wsproto) == rest
    assert [type(event).__name__ for event in tapped.ws_stream.wsproto_events] == [
        "Ping",
        "TextMessage",
    ]
    assert tapped.refused == []


async def test_tap_gives_a_held_partial_frame_to_wsproto_once_it_is_busy() -> None:
    """A partial simple frame held back goes to wsproto with the next read when wsproto is not
    idle (here: the app closed meanwhile)."""
    tapped = _Tapped()
    await tapped.tap.start()
    frame = client(Opcode.TEXT, b"hello")
    await tapped.read(frame[:4])
    tapped.ws_stream.closed = True
    await tapped.read(frame[4:])
    assert tapped.delivered == []
    assert tapped.ws_stream.to_wsproto == [frame]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x82\xfe\x00\x05" + b"mask" + b"12345", 1002),  # 16 bits for a 7-bit length
        (b"\x82\x05hello", 1002),  # unmasked
        (client(Opcode.TEXT, b"\xff"), 1007),
        (b"\x82\xff" + (70_000).to_bytes(8, "big"), 1009),  # refused on its header
    ],
    ids=["non-minimal", "unmasked", "utf8", "too-big"],
)
async def test_tap_refuses_and_reads_no_further(data: bytes, code: int) -> None:
    """A frame the parser refuses calls on_invalid once, after the messages before it;
    nothing that arrives later is delivered or handed to wsproto."""
    tapped = _Tapped(max_message_bytes=1024)
    await tapped.tap.start()
    await tapped.read(client(Opcode.TEXT, b"ok") + data)
    await tapped.read(client(Opcode.TEXT, b"later"))
    assert tapped.delivered == ["ok"]
    assert [refused_code for refused_code, _ in tapped.refused] == [code]
    assert tapped.ws_stream.to_wsproto == []


@pytest.mark.timeout(30)
async def test_tap_takes_a_trickled_frame_in_linear_time() -> None:
    """A 256 KB frame arriving one byte per TCP read is one message, and each read reaches
    the parser as it came: the tap never rebuilds what it holds (which took over 15 s of CPU
    for 900 KB). The parser's own linear buffering: tests/wire/test_frames.py."""
    tapped = _Tapped()
    await tapped.tap.start()
    parser = tapped.tap._parser
    fed: list[int] = []
    feed = parser.feed

    def counting_feed(data: bytes) -> Any:
        fed.append(len(data))
        return feed(data)

    parser.feed = counting_feed  # type: ignore[method-assign]
    payload = bytes(range(256)) * 1024  # 262,144 bytes
    frame = client(Opcode.BINARY, payload)
    for i in range(len(frame)):
        await tapped.read(frame[i : i + 1])
    assert tapped.delivered == [payload]
    assert tapped.ws_stream.to_wsproto == []
    assert len(fed) == len(frame)
    assert set(fed) == {1}


@pytest.mark.timeout(10)
async def test_an_accepted_websockets_reads_skip_the_http_layer(
    start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the tap is on, each read goes from the relay's read loop to the tap: none reaches
    H11Protocol.handle (which would copy it twice and pass it on), and every message arrives;
    a ping (wsproto's) and the close still work."""
    relay = await start_relay()
    seen: list[Any] = []
    handle = H11Protocol.handle

    async def counting_handle(self: H11Protocol, event: Any) -> None:
        seen.append(event)
        await handle(self, event)

    monkeypatch.setattr(H11Protocol, "handle", counting_handle)
    async with (
        relay.websocket("/ws/consumer/c") as consumer,
        relay.websocket("/ws/producer/c?ack=none") as producer,
    ):
        before = sum(isinstance(event, RawData) for event in seen)
        for i in range(20):
            await producer.send_message(f"m{i}")
        assert [await consumer.get_message() for _ in range(20)] == [f"m{i}" for i in range(20)]
        await producer.ping(b"still there")
        assert sum(isinstance(event, RawData) for event in seen) == before


async def test_a_read_before_the_tap_starts_waits_for_it() -> None:
    """A message read before start() (which delivers the backlog first) waits, then arrives;
    the event it waited on is not kept afterwards."""
    tapped = _Tapped()
    assert tapped.tap._start_wanted is None  # not made unless a read has to wait
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tapped.read, client(Opcode.TEXT, b"late"))
        await trio.testing.wait_all_tasks_blocked()
        assert tapped.delivered == []  # waiting for start()
        await tapped.tap.start()
    assert tapped.delivered == ["late"]
    assert tapped.tap._start_wanted is None
    await tapped.read(client(Opcode.TEXT, b"later"))  # once started, at once
    assert tapped.delivered == ["late", "later"]


async def test_a_read_waiting_for_a_start_that_never_comes_ends_with_remove() -> None:
    """The handler ended before it started the tap (a resume refused, the broker gone): the
    read waiting for start() returns once the tap is removed, delivering nothing (Hypercorn's
    reader task waited there for good, and the connection's objects with it)."""
    tapped = _Tapped()
    with trio.fail_after(5):  # the read's task ends, so the nursery does
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tapped.read, client(Opcode.TEXT, b"too late"))
            await trio.testing.wait_all_tasks_blocked()
            assert tapped.tap._start_wanted is not None  # the read waits
            tapped.tap.remove()
    assert tapped.delivered == []
    assert tapped.tap._start_wanted is None


async def test_remove_gives_hypercorns_methods_back_with_no_reference_cycle() -> None:
    """Once removed, the stream's own ``handle`` is its class's again (not a bound method kept
    on the object it is bound to: a reference cycle), a callable it had of another's is put
    back as it was, and the relay's disconnect callback is let go."""
    tapped = _Tapped()
    stream = tapped.ws_stream
    tapped.tap.on_disconnect = lambda: None
    await tapped.tap.start()
    tapped.tap.remove()
    assert "handle" not in vars(stream)
    assert isinstance(stream.app_put.__self__, trio.MemorySendChannel)  # the app's channel's
    assert tapped.tap.on_disconnect is None
    await tapped.read(client(Opcode.TEXT, b"to wsproto"))
    assert tapped.delivered == []
    assert [type(event).__name__ for event in stream.wsproto_events] == ["TextMessage"]


def _task_names() -> list[str]:
    """The names of every task running now."""
    names: list[str] = []
    tasks = [trio.lowlevel.current_root_task()]
    while tasks:
        task = tasks.pop()
        assert task is not None
        names.append(task.name)
        tasks.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return names


async def test_a_consumer_refused_before_its_tap_started_leaves_no_reader_behind(
    start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A triorelay.v1 consumer sends a frame while its resume is being read, and the resume
    then fails (the broker gone: 1013): the connection's reader task ends with it (it waited
    for the tap's start for good, until Hypercorn's graceful timeout)."""
    relay = await start_relay()
    gate = trio.Event()
    reading = trio.Event()

    async def slow_then_unavailable(*args: Any) -> Any:
        reading.set()
        await gate.wait()
        raise BrokerUnavailable("the broker is unavailable: try again later")

    monkeypatch.setattr(positioned, "subscribe", slow_then_unavailable)
    before = _task_names().count(_READER)
    with trio.fail_after(10):
        async with relay.websocket(
            "/ws/consumer/c?since=E1:1", subprotocols=[framing.SUBPROTOCOL]
        ) as consumer:
            await reading.wait()
            await consumer.send_message("hello")  # reaches the tap before its start
            while not any(
                isinstance(tap, compat.InboundTap) and tap._start_wanted is not None
                for tap in gc.get_objects()
            ):
                await trio.testing.wait_all_tasks_blocked()
            assert _task_names().count(_READER) == before + 1
            gate.set()
            with pytest.raises(ConnectionClosed) as closed:
                await consumer.get_message()
        assert closed.value.reason.code == 1013
        while _task_names().count(_READER) > before:
            await trio.testing.wait_all_tasks_blocked()


#: The task each connection is read in (Hypercorn's TCPServer, run by trio's serve_listeners).
_READER = "trio._highlevel_serve_listeners._run_handler"
