"""Without the Hypercorn fast path (compat helpers declining), the relay still works."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed

from tests.conftest import StartRelay
from tests.helpers import closed_with, receive_n
from tests.upstream import reply_prefixed, start_upstream
from triorelay.compat import hypercorn as compat


@pytest.fixture
def no_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def decline(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(compat, "tap_inbound", decline)
    monkeypatch.setattr(compat, "open_direct", decline)


@pytest.mark.usefixtures("no_fast_path")
async def test_relay_echo_and_acks_over_plain_asgi(start_relay: StartRelay) -> None:
    """Producers, consumers and /ws/echo work on Hypercorn's ASGI callables alone."""
    relay = await start_relay(max_message_bytes=1024, consumer_buffer_bytes=4096)
    async with relay.websocket("/ws/consumer/plain") as consumer:
        async with relay.websocket("/ws/producer/plain?ack=id") as producer:
            for i in range(20):
                await producer.send_message(f"m{i}")
            acks = [json.loads(m) for m in await receive_n(producer, 20)]
            assert acks == [{"id": i + 1} for i in range(20)]
            assert await receive_n(consumer, 20) == [f"m{i}" for i in range(20)]
            await producer.send_message("x" * 1025)
            with pytest.raises(ConnectionClosed) as closed:
                await producer.get_message()
            assert closed.value.reason.code == 1009
    async with relay.websocket("/ws/echo") as echo:
        await echo.send_message(b"")
        assert await echo.get_message() == b""
    assert (await relay.http.get("/channels")).json() == {"channels": []}


@pytest.mark.usefixtures("no_fast_path")
async def test_flows_uploads_and_proxy_over_plain_asgi(
    start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """/ws, /ws/upload and /ws/proxy work on Hypercorn's ASGI callables alone, size limit too."""
    upstream = await start_upstream(nursery, reply_prefixed)
    relay = await start_relay(
        proxy_upstreams={"default": upstream.url},
        max_message_bytes=1024,
        consumer_buffer_bytes=4096,
    )
    async with relay.websocket("/ws") as ws:
        for message in ["text", "a", "file", b"xy", b"EOF", "proxy", "q"]:
            await ws.send_message(message)
        got = await receive_n(ws, 3)
        assert got == ["Echo: a", "File received successfully", "External response: upstream got q"]
    async with relay.websocket("/ws/upload") as ws:
        await ws.send_message("{}")
        await ws.send_message(b"z")
        await ws.send_message("EOF")
        assert json.loads(await ws.get_message())["bytes"] == 1
    async with relay.websocket("/ws/proxy/default") as ws:
        await ws.send_message(b"b")
        assert await ws.get_message() == b"upstream got b"
        await ws.send_message("x" * 1025)
        assert (await closed_with(ws))[0] == 1009  # Hypercorn's own check, before the relay's
    close = await upstream.next_close()
    assert close is not None
    assert close.code == 1000  # the /ws proxy flow's own connection, closed after its reply
    close = await upstream.next_close()
    assert close is not None
    # The relay closed the client (over the limit), so it closes the upstream with 1001, as on
    # the fast path.
    assert close.code == 1001


@pytest.mark.usefixtures("no_fast_path")
async def test_without_the_fast_path_dead_peers_are_not_watched(
    start_relay: StartRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """Plain ASGI has no ping or pong: the relay says once that dead-peer detection is off."""
    relay = await start_relay(ping_interval_seconds=0.05, ping_timeout_seconds=0.05)
    with caplog.at_level(logging.WARNING, logger="triorelay.lifecycle.liveness"):
        async with relay.websocket("/ws/consumer/quiet"), relay.websocket("/ws/echo") as echo:
            await echo.send_message("hello")
            assert await echo.get_message() == "hello"
            assert relay.relay.liveness._peers == {}
    warnings = [r.message for r in caplog.records if "dead-peer detection is off" in r.message]
    assert len(warnings) == 1
