"""/ws: the text, file and proxy flows end to end, against a real upstream server."""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import WebSocketConnection

from tests.conftest import StartRelay
from tests.helpers import RawWebSocket, RunningRelay, closed_with, exchange_raw, stored_files
from tests.upstream import close_after_first, reply_prefixed, start_upstream
from triorelay.uploads import Upload

pytestmark = pytest.mark.both_paths


async def test_the_exact_ws_exchange(start_relay: StartRelay, nursery: trio.Nursery) -> None:
    """text, file (several chunks, byte-identical on disk) and proxy, repeatedly, on one socket."""
    upstream = await start_upstream(nursery, reply_prefixed)
    relay = await start_relay(proxy_upstreams={"default": upstream.url})
    chunks = [bytes(range(256)) * 400, b"", b"\x00" * 70_000, b"EOF!", b"tail"]
    async with relay.websocket("/ws") as ws:
        await ws.send_message("text")
        await ws.send_message("héllo")
        assert await ws.get_message() == "Echo: héllo"
        await ws.send_message("file")
        for chunk in chunks:
            await ws.send_message(chunk)
        await ws.send_message(b"EOF")
        assert await ws.get_message() == "File received successfully"
        await ws.send_message("proxy")
        await ws.send_message("ping")
        assert await ws.get_message() == "External response: upstream got ping"
        await ws.send_message("text")
        await ws.send_message("again")
        assert await ws.get_message() == "Echo: again"
        await ws.send_message("file")
        await ws.send_message(b"EOF")
        assert await ws.get_message() == "File received successfully"
    files = [path for path in stored_files(relay) if path.suffix != ".json"]
    contents = sorted(path.read_bytes() for path in files)
    assert contents == [b"", b"".join(chunks)]
    for path in files:
        description = json.loads(path.with_suffix(".json").read_text())
        assert description["bytes"] == path.stat().st_size
    assert upstream.connections == 1


@pytest.mark.parametrize(
    ("messages", "code", "reason"),
    [
        (["video"], 1008, "unknown flow 'video': expected text, file or proxy"),
        ([b"text"], 1003, "expected a flow name as text: text, file or proxy"),
        (["text", b"binary"], 1003, "the text flow takes a text message"),
        (["proxy", b"binary"], 1003, "the proxy flow takes a text message"),
        (["file", b"part", "EOF"], 1003, "a file is binary chunks ended by the binary frame EOF"),
    ],
    ids=["unknown-flow", "binary-flow-name", "binary-text", "binary-proxy", "text-in-file"],
)
async def test_anything_else_closes_with_a_reason_after_earlier_replies(
    relay: RunningRelay, messages: list[str | bytes], code: int, reason: str
) -> None:
    """A message the protocol does not allow closes 1003/1008; replies before it still arrive."""
    async with relay.websocket("/ws") as ws:
        await ws.send_message("text")
        await ws.send_message("first")
        for message in messages:
            await ws.send_message(message)
        assert await ws.get_message() == "Echo: first"
        assert await closed_with(ws) == (code, reason)
    assert stored_files(relay) == []


async def test_a_file_over_the_upload_limit_closes_1009_and_leaves_nothing(
    start_relay: StartRelay,
) -> None:
    """Past max_upload_bytes the partial file is removed before the 1009 close is sent."""
    relay = await start_relay(max_upload_bytes=100_000)
    async with relay.websocket("/ws") as ws:
        await ws.send_message("file")
        await ws.send_message(b"x" * 60_000)
        await ws.send_message(b"x" * 60_000)
        assert await closed_with(ws) == (1009, "upload over the limit of 100000 bytes")
        assert stored_files(relay) == []


@pytest.fixture
def discarded(monkeypatch: pytest.MonkeyPatch) -> trio.Event:
    """Set once an upload has removed its temporary file."""
    event = trio.Event()
    original = Upload.discard

    async def discard_and_tell(self: Upload) -> None:
        await original(self)
        event.set()

    monkeypatch.setattr(Upload, "discard", discard_and_tell)
    return event


async def test_a_client_vanishing_mid_file_leaves_nothing(
    relay: RunningRelay, discarded: trio.Event
) -> None:
    """A client that drops its TCP connection mid-file leaves no file, partial or temporary."""
    client = await RawWebSocket.connect(relay.port, "/ws", 65536)
    await client.send_text("file")
    await client.send_events(*[_binary(b"y" * 50_000) for _ in range(8)])
    while not stored_files(relay):  # the upload has begun: its temporary file exists
        await trio.testing.wait_all_tasks_blocked()
    client.close()
    with trio.fail_after(10):
        await discarded.wait()
    assert stored_files(relay) == []


async def test_shutdown_mid_file_closes_1001_and_leaves_nothing(relay: RunningRelay) -> None:
    """Shutdown closes a /ws connection mid-file with 1001 and removes the partial file."""
    async with relay.websocket("/ws") as ws:
        await ws.send_message("file")
        await ws.send_message(b"z" * 1000)
        while not stored_files(relay):
            await trio.testing.wait_all_tasks_blocked()
        relay.relay.shutdown.begin()
        assert await closed_with(ws) == (1001, "server shutting down")
    assert stored_files(relay) == []


async def test_proxy_flow_without_a_default_upstream_closes_4404(relay: RunningRelay) -> None:
    """The proxy flow with no upstream named default configured closes with 4404."""
    async with relay.websocket("/ws") as ws:
        await ws.send_message("proxy")
        await ws.send_message("ping")
        assert await closed_with(ws) == (4404, "no upstream named 'default'")


async def test_proxy_flow_upstream_down_or_silent_closes_1014(
    start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """An upstream that refuses connections, or closes without replying, closes with 1014."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    down_port = listener.socket.getsockname()[1]
    await listener.aclose()
    silent = await start_upstream(nursery, close_after_first(4000, "no reply"))
    for url, reason in [
        (f"ws://127.0.0.1:{down_port}/", "cannot reach upstream 'default'"),
        (silent.url, "upstream 'default' closed before replying (4000)"),
    ]:
        relay = await start_relay(proxy_upstreams={"default": url})
        # Read raw: wsproto (under trio-websocket) takes 1014 for a protocol error.
        got = await exchange_raw(relay.port, "/ws", ["text", "first", "proxy", "ping"])
        assert got == (["Echo: first"], 1014, reason)


async def test_proxy_flow_keeps_binary_replies_binary(
    start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """A binary reply from the upstream comes back binary, prefixed."""

    async def binary_reply(ws: WebSocketConnection) -> None:
        await ws.send_message((await ws.get_message()).encode() + b"\xff")  # type: ignore[union-attr]

    upstream = await start_upstream(nursery, binary_reply)
    relay = await start_relay(proxy_upstreams={"default": upstream.url})
    async with relay.websocket("/ws") as ws:
        await ws.send_message("proxy")
        await ws.send_message("raw")
        assert await ws.get_message() == b"External response: raw\xff"


async def test_a_client_leaving_while_the_upstream_thinks_closes_the_upstream(
    start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """A client gone while its proxy request waits ends the wait and closes the upstream, 1001."""

    async def never_reply(ws: WebSocketConnection) -> None:
        pass  # start_upstream reads on, answering nothing

    upstream = await start_upstream(nursery, never_reply)
    relay = await start_relay(proxy_upstreams={"default": upstream.url})
    client = await RawWebSocket.connect(relay.port, "/ws", 65536)
    await client.send_text("proxy")
    await client.send_text("ping")
    while upstream.connections == 0:
        await trio.testing.wait_all_tasks_blocked()
    client.close()
    close = await upstream.next_close()
    assert close is not None
    assert (close.code, close.reason) == (1001, None)


def _binary(data: bytes) -> object:
    import wsproto.events as ws_events

    return ws_events.BytesMessage(data=data)
