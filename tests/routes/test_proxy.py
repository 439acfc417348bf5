"""/ws/proxy/{upstream}: a full-duplex pipe to a real upstream WebSocket server."""

from __future__ import annotations

import hashlib
from functools import partial

import pytest
import trio
import trio.testing
import wsproto
import wsproto.events as ws_events
from trio_websocket import CloseReason, WebSocketConnection, WebSocketRequest, serve_websocket

from tests.conftest import StartRelay
from tests.helpers import RawWebSocket, RunningRelay, closed_with, exchange_raw
from tests.upstream import Upstream, close_after_first, echo, start_upstream
from triorelay import proxy

MiB = 1024 * 1024


pytestmark = pytest.mark.both_paths


async def proxied(start_relay: StartRelay, upstream: Upstream, **settings: object) -> RunningRelay:
    return await start_relay(proxy_upstreams={"up": upstream.url}, **settings)


async def test_text_and_binary_pass_both_ways_unchanged(
    start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """Text stays text and binary binary, empty included, in order, through the proxy."""
    upstream = await start_upstream(nursery, echo)
    relay = await proxied(start_relay, upstream)
    sent: list[str | bytes] = ["héllo", b"\x00\xff", "", b"", "x" * 70_000, b"y" * 200_000]
    async with relay.websocket("/ws/proxy/up") as ws:
        for message in sent:
            await ws.send_message(message)
        got = [await ws.get_message() for _ in sent]
    assert [type(m) for m in got] == [type(m) for m in sent]
    assert got == sent


async def test_an_upstream_close_reaches_the_client_with_its_code_and_reason(
    start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """The upstream closing with 4001 closes the client with 4001 and the same reason."""
    upstream = await start_upstream(nursery, close_after_first(4001, "upstream is done"))
    relay = await proxied(start_relay, upstream)
    async with relay.websocket("/ws/proxy/up") as ws:
        await ws.send_message("bye")
        assert await closed_with(ws) == (4001, "upstream is done")


async def test_a_client_close_reaches_the_upstream_with_its_code_and_reason(
    start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """The client closing with 4002 closes the upstream with 4002 and the same reason."""
    upstream = await start_upstream(nursery, echo)
    relay = await proxied(start_relay, upstream)
    async with relay.websocket("/ws/proxy/up") as ws:
        await ws.send_message("hi")
        assert await ws.get_message() == "hi"
        await ws.aclose(4002, "client is done")
    close = await upstream.next_close()
    assert close is not None
    assert (close.code, close.reason) == (4002, "client is done")


async def test_a_client_vanishing_closes_the_upstream_1001(
    start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """A client lost without a close frame closes the upstream with 1001 and a reason."""
    upstream = await start_upstream(nursery, echo)
    relay = await proxied(start_relay, upstream)
    client = await RawWebSocket.connect(relay.port, "/ws/proxy/up", 65536)
    await client.send_text("hi")
    assert await client.read_messages(1) == ["hi"]
    client.close()
    close = await upstream.next_close()
    assert close is not None
    assert (close.code, close.reason) == (1001, "client connection lost")


async def test_an_upstream_vanishing_closes_the_client_1014(
    start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """An upstream lost without a close frame closes the client with 1014."""

    async def accept_then_drop(stream: trio.SocketStream) -> None:
        conn = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        while True:
            conn.receive_data(await stream.receive_some(65536))
            for event in conn.events():
                if isinstance(event, ws_events.Request):
                    await stream.send_all(conn.send(ws_events.AcceptConnection()))
                elif isinstance(event, ws_events.Message):
                    await stream.aclose()  # no close frame
                    return

    listeners = await nursery.start(trio.serve_tcp, accept_then_drop, 0)
    port = listeners[0].socket.getsockname()[1]
    relay = await start_relay(proxy_upstreams={"up": f"ws://127.0.0.1:{port}/"})
    got = await exchange_raw(relay.port, "/ws/proxy/up", ["hi"])
    assert got == ([], 1014, "upstream connection lost")


async def test_an_upstream_down_rejecting_or_silent_closes_the_client_1014(
    start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """Refused, rejected (HTTP 403) or too slow to answer: close 1014 with a reason."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    down = listener.socket.getsockname()[1]
    await listener.aclose()
    silent = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]  # never accepts

    async def reject(request: WebSocketRequest) -> None:
        await request.reject(403)

    rejecting = await nursery.start(partial(serve_websocket, reject, "127.0.0.1", 0, None))
    upstreams = {
        "down": f"ws://127.0.0.1:{down}/",
        "rejecting": f"ws://127.0.0.1:{rejecting.port}/",
        "silent": f"ws://127.0.0.1:{silent.socket.getsockname()[1]}/",
    }
    # The answers that come at once get a timeout no loaded machine reaches; only the silent one
    # waits out a short one.
    patient = await start_relay(proxy_upstreams=upstreams, proxy_connect_timeout_seconds=30)
    hasty = await start_relay(proxy_upstreams=upstreams, proxy_connect_timeout_seconds=0.2)
    async with silent:
        for relay, name, reason in [
            (patient, "down", "cannot reach upstream 'down'"),
            (patient, "rejecting", "upstream 'rejecting' refused the connection (HTTP 403)"),
            (hasty, "silent", "upstream 'silent' did not answer within 0.2 s"),
        ]:
            got = await exchange_raw(relay.port, f"/ws/proxy/{name}", [])
            assert got == ([], 1014, reason)


@pytest.mark.slow
async def test_a_large_binary_stream_arrives_intact(
    start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """64 MiB each way in 256 KiB messages: same bytes, same order (sha256 on both ends)."""
    upstream = await start_upstream(nursery, echo)
    relay = await proxied(start_relay, upstream)
    count, size = 256, 256 * 1024
    sent, received = hashlib.sha256(), hashlib.sha256()
    async with relay.websocket("/ws/proxy/up", max_message_size=MiB) as ws:

        async def send_all() -> None:
            for i in range(count):
                chunk = i.to_bytes(4, "big") * (size // 4)
                sent.update(chunk)
                await ws.send_message(chunk)

        async with trio.open_nursery() as sending:
            sending.start_soon(send_all)
            for _ in range(count):
                message = await ws.get_message()
                assert isinstance(message, bytes)
                received.update(message)
    assert received.hexdigest() == sent.hexdigest()


async def test_an_upstream_that_stops_reading_stops_the_client(
    start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """Backpressure client → upstream: with the upstream not reading, the client's sends stall
    after a bounded amount (socket buffers, a few messages in the relay); released, all arrive
    in order. (Measured here: 1.8 MiB of 20.)"""
    release = trio.Event()
    got: list[bytes] = []
    count, size = 320, 64 * 1024  # 20 MiB

    async def read_when_released(ws: WebSocketConnection) -> None:
        await release.wait()
        while len(got) < count:
            got.append(await ws.get_message())  # type: ignore[arg-type]

    upstream = await start_upstream(nursery, read_when_released)
    relay = await proxied(start_relay, upstream)
    sent = 0
    async with relay.websocket("/ws/proxy/up") as ws:

        async def send_all() -> None:
            nonlocal sent
            for i in range(count):
                await ws.send_message(i.to_bytes(4, "big") * (size // 4))
                sent += 1

        async with trio.open_nursery() as sending:
            sending.start_soon(send_all)
            await trio.testing.wait_all_tasks_blocked(0.05)
            stalled_at = sent
            release.set()
    close = await upstream.next_close()  # after every message the client sent before closing
    assert close is not None
    assert close.code == 1000
    assert stalled_at * size < 10 * MiB, f"{stalled_at * size / MiB:.1f} MiB taken in"
    assert [int.from_bytes(m[:4], "big") for m in got] == list(range(count))


async def test_a_client_that_stops_reading_stops_the_upstream(
    start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """Backpressure upstream → client: with the client not reading, the upstream's sends stall
    after a bounded amount; once the client reads, every message arrives in order. (Measured
    here: 0.4 MiB of 20.)"""
    count, size = 320, 64 * 1024  # 20 MiB
    sent = 0

    async def flood(ws: WebSocketConnection) -> None:
        nonlocal sent
        await ws.get_message()
        for i in range(count):
            await ws.send_message(i.to_bytes(4, "big") * (size // 4))
            sent += 1

    upstream = await start_upstream(nursery, flood)
    relay = await proxied(start_relay, upstream)
    client = await RawWebSocket.connect(relay.port, "/ws/proxy/up")  # a 4 KiB receive buffer
    try:
        await client.send_text("go")
        await trio.testing.wait_all_tasks_blocked(0.05)
        stalled_at = sent
        got = await client.read_messages(count)
    finally:
        client.close()
    assert stalled_at * size < 10 * MiB, f"{stalled_at * size / MiB:.1f} MiB taken in"
    assert [int.from_bytes(m[:4], "big") for m in got] == list(range(count))  # type: ignore[index]


async def test_shutdown_closes_client_and_upstream_1001(
    start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """Shutdown closes the client with 1001 and the upstream with 1001, same reason."""
    upstream = await start_upstream(nursery, echo)
    relay = await proxied(start_relay, upstream)
    async with relay.websocket("/ws/proxy/up") as ws:
        await ws.send_message("hi")
        assert await ws.get_message() == "hi"
        relay.relay.shutdown.begin()
        assert await closed_with(ws) == (1001, "server shutting down")
    close = await upstream.next_close()
    assert close is not None
    assert (close.code, close.reason) == (1001, "server shutting down")


@pytest.mark.parametrize(
    ("upstream_code", "reason", "client_gets"),
    [
        (4001, "bye", (4001, "bye")),
        (1011, None, (1011, "")),
        (1005, None, (1000, "")),  # no code in the frame: cannot be sent as such
        (1006, None, (1014, "upstream connection lost")),  # no close frame at all
        (1015, None, (1014, "upstream connection lost")),
    ],
)
def test_upstream_closes_map_to_client_closes(
    upstream_code: int, reason: str | None, client_gets: tuple[int, str]
) -> None:
    """What the client is sent for each way an upstream can close."""
    close = proxy._for_client(CloseReason(upstream_code, reason))
    assert (close.code, close.reason) == client_gets


@pytest.mark.parametrize(
    ("client_close", "upstream_gets"),
    [
        (proxy.Close(4002, "bye"), (4002, "bye")),
        (proxy.Close(1005, ""), (1000, "")),
        (None, (1001, "client connection lost")),
    ],
)
def test_client_closes_map_to_upstream_closes(
    client_close: proxy.Close | None, upstream_gets: tuple[int, str]
) -> None:
    """What the upstream is sent for each way a client can close."""
    close = proxy._for_upstream(client_close)
    assert (close.code, close.reason) == upstream_gets
