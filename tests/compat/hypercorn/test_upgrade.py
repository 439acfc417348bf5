"""release_handshake: once the WebSocket is accepted, the h11 state Hypercorn keeps behind it is
let go, wsproto's event queue is a list, and the WebSocket works as before (messages both ways,
wsproto's ping, the close)."""

from __future__ import annotations

import gc
import inspect
import re
import weakref
from typing import Any

import h11
import pytest
from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
from hypercorn.protocol.ws_stream import WSStream
from wsproto.connection import Connection as WSConnection

from tests.conftest import StartRelay
from triorelay.compat import hypercorn as compat
from triorelay.compat.hypercorn import upgrade


@pytest.mark.timeout(10)
async def test_the_h11_connection_is_let_go_once_accepted(
    start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    released: list[weakref.ref[Any]] = []
    original = upgrade.release_handshake

    def recording(send: object) -> bool:
        ws_stream = upgrade.bound_self(send)
        connection = upgrade.bound_self(ws_stream.send).connection
        assert isinstance(connection, H11WSConnection)
        released.append(weakref.ref(connection.h11_connection))
        assert original(send) is True
        assert isinstance(connection.h11_connection, upgrade._Released)
        assert type(ws_stream.connection._events) is upgrade.EventQueue
        return True

    monkeypatch.setattr(compat, "release_handshake", recording)
    relay = await start_relay()
    async with (
        relay.websocket("/ws/consumer/c") as consumer,
        relay.websocket("/ws/producer/c?ack=none") as producer,
    ):
        for i in range(5):
            await producer.send_message(f"m{i}")
        assert [await consumer.get_message() for _ in range(5)] == [f"m{i}" for i in range(5)]
        await producer.ping(b"still there")
        gc.collect()
        assert len(released) == 2
        assert all(ref() is None for ref in released), "the h11 connection is still held"


def test_the_event_queue_is_first_in_first_out() -> None:
    queue = upgrade.EventQueue(["a"])
    queue.append("b")
    queue.append("c")
    taken = []
    while queue:
        taken.append(queue.popleft())
    assert taken == ["a", "b", "c"]
    with pytest.raises(IndexError):
        queue.popleft()


def test_wsproto_uses_its_event_queue_only_as_the_list_allows() -> None:
    """The assumption: wsproto's Connection appends to ``_events``, pops it from the left and
    tests it for emptiness, nothing else a list lacks (wsproto 1.3.2)."""
    uses = re.findall(r"self\._events\b[^\n]*", inspect.getsource(WSConnection))
    assert sorted(uses) == [
        "self._events.append(CloseConnection(code=CloseReason.ABNORMAL_CLOSURE))",
        "self._events.popleft()",
        "self._events:",
        "self._events: deque[Event] = deque()",
    ]


def test_nothing_is_sent_through_h11_once_released() -> None:
    with pytest.raises(h11.LocalProtocolError, match="a WebSocket now"):
        upgrade._RELEASED.send(h11.Response(status_code=200, headers=[]))


def test_outside_hypercorn_release_does_nothing() -> None:
    async def send(message: object) -> None:  # pragma: no cover - never called
        pass

    assert upgrade.release_handshake(send) is False


def test_hypercorn_sends_through_h11_only_before_the_accept() -> None:
    """The assumption: once connected, WSStream sends only WebSocket data (passed through as it
    is); an HTTP response (the only thing h11 would send) is accepted in the handshake only."""
    app_send = inspect.getsource(WSStream.app_send)
    start = app_send.split('message["type"] == "websocket.http.response.start"', 1)[1]
    assert start.lstrip().startswith("and self.state == ASGIWebsocketState.HANDSHAKE")
    stream_send = inspect.getsource(H11Protocol.stream_send)
    data_branch = stream_send.split("elif isinstance(event, Data):", 1)[1]
    assert data_branch.split("\n")[1].strip() == "await self.send(RawData(data=event.data))"
