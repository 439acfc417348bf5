"""``GET /channels/{c}/events``: a channel as Server-Sent Events (a browser's EventSource)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import pytest
import trio

from tests.auth.keys import SECRET, token
from tests.conftest import StartRelay
from tests.helpers import RunningRelay

pytestmark = pytest.mark.timeout(30)


class EventStream:
    """A text/event-stream response read off a raw TCP connection (h11), an event at a time
    (fields as in the SSE spec): what a browser's EventSource sees."""

    def __init__(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        self._stream = stream
        self._conn = conn
        self._buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.ended = False

    async def _data(self) -> bool:
        """Read more of the body into the buffer; False once it has ended."""
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                self._conn.receive_data(await self._stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                self.status = event.status_code
                self.headers = {k.decode(): v.decode() for k, v in event.headers}
                return True
            elif isinstance(event, h11.Data):
                self._buffer += bytes(event.data)
                return True
            else:  # EndOfMessage, ConnectionClosed
                self.ended = True
                return False

    async def start(self) -> None:
        while not self.status:
            await self._data()

    async def body(self) -> bytes:
        while await self._data():
            pass
        return self._buffer

    async def next(self) -> dict[str, Any]:
        """The next event: ``{"event": ..., "id": ..., "data": ...}``, or ``{"comment": ...}``."""
        while b"\n\n" not in self._buffer:
            if not await self._data():
                raise AssertionError("the stream ended")
        block, self._buffer = self._buffer.split(b"\n\n", 1)
        event: dict[str, Any] = {}
        for line in block.decode().split("\n"):
            if line.startswith(":"):
                return {"comment": line[1:].strip()}
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                event["data"] = f"{event['data']}\n{value}" if "data" in event else value
            else:
                event[name] = value
        return event


@asynccontextmanager
async def open_events(
    server: RunningRelay, path: str, method: str = "GET", **headers: str
) -> AsyncIterator[EventStream]:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method=method,
        target=path,
        headers=[("Host", f"127.0.0.1:{server.port}"), *headers.items()],
    )
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        reader = EventStream(stream, conn)
        await reader.start()
        yield reader


@asynccontextmanager
async def events(
    server: RunningRelay, channel: str, query: str = "", **headers: str
) -> AsyncIterator[EventStream]:
    path = f"/channels/{channel}/events" + (f"?{query}" if query else "")
    async with open_events(server, path, **headers) as stream:
        assert stream.status == 200, await stream.body()
        yield stream


async def publish(server: RunningRelay, channel: str, body: bytes | str, kind: str) -> int:
    response = await server.http.post(
        f"/channels/{channel}/messages", content=body, headers={"content-type": kind}
    )
    assert response.status_code == 202, response.text
    offset: int = response.json()["id"]
    return offset


async def test_each_message_has_its_position_as_the_event_id(start_relay: StartRelay) -> None:
    """``subscribed`` first (its id the channel's position), then each message with
    ``id: epoch:offset``; text as ``data:`` lines, binary as base64 under ``event: binary``,
    text with a carriage return as a JSON string under ``event: text``."""
    server = await start_relay()
    async with events(server, "news") as stream:
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        first = await stream.next()
        fields = json.loads(first["data"])
        epoch = fields["epoch"]
        assert (first["event"], first["id"]) == ("subscribed", f"{epoch}:0")
        await publish(server, "news", "two\nlines", "text/plain")
        await publish(server, "news", b"\x00\xff", "application/octet-stream")
        await publish(server, "news", "a\rb", "text/plain")
        text, binary, carriage = [await stream.next() for _ in range(3)]
    assert text == {"id": f"{epoch}:1", "data": "two\nlines"}
    assert binary == {
        "event": "binary",
        "id": f"{epoch}:2",
        "data": base64.b64encode(b"\0\xff").decode(),
    }
    assert carriage == {"event": "text", "id": f"{epoch}:3", "data": json.dumps("a\rb")}


async def test_last_event_id_resumes_without_loss_or_duplicate(start_relay: StartRelay) -> None:
    """What a browser does by itself after a disconnect: ``Last-Event-ID`` replays the
    messages after it, then the stream goes on live."""
    server = await start_relay()
    async with events(server, "news") as stream:
        epoch = json.loads((await stream.next())["data"])["epoch"]
        await publish(server, "news", "one", "text/plain")
        assert (await stream.next())["data"] == "one"
    for text in ("two", "three"):
        await publish(server, "news", text, "text/plain")
    async with events(server, "news", **{"Last-Event-ID": f"{epoch}:1"}) as stream:
        opening = await stream.next()
        result = json.loads(opening["data"])
        replayed = [await stream.next() for _ in range(2)]
        await publish(server, "news", "four", "text/plain")
        live = await stream.next()
    assert (result["recovered"], result["replayed"], result["offset"]) == (True, 2, 3)
    # Its id is where the replay starts: a drop before the replay ends loses none of it.
    assert (opening["id"], opening["retry"]) == (f"{epoch}:1", "500")
    assert [e["data"] for e in replayed] == ["two", "three"]
    assert live == {"id": f"{epoch}:4", "data": "four"}


async def test_the_header_wins_over_since_and_a_failed_required_resume_is_410(
    start_relay: StartRelay,
) -> None:
    """``Last-Event-ID`` (newer: the browser's last message) wins over the URL's ``since``;
    ``recover=required`` refuses a resume that cannot be done with 410, before the stream."""
    server = await start_relay()
    await publish(server, "news", "one", "text/plain")
    response = await server.http.get(
        "/channels/news/events?since=nope:0&recover=required",
        headers={"Last-Event-ID": "gone:1"},
    )
    assert response.status_code == 410
    assert response.json() == {"error": "recovery failed: epoch"}


async def test_a_keepalive_comment_goes_out_when_the_channel_is_quiet(
    start_relay: StartRelay,
) -> None:
    """No message for ``sse_keepalive_seconds``: a comment line, so proxies keep it open."""
    server = await start_relay(sse_keepalive_seconds=0.05)
    async with events(server, "quiet") as stream:
        await stream.next()  # subscribed
        assert await stream.next() == {"comment": "keepalive"}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/channels/news/events", 405),
        ("GET", "/channels/bad%20name/events", 400),
        ("GET", "/channels/news/events?since=bad", 400),
    ],
)
async def test_bad_requests_get_a_status_and_a_reason(
    start_relay: StartRelay, method: str, path: str, status: int
) -> None:
    """Anything but GET, a bad channel name, a malformed position: an HTTP error."""
    server = await start_relay()
    response = await server.http.request(method, path)
    assert response.status_code == status
    assert response.json()["error"]


async def test_the_same_rights_and_origins_as_a_websocket_consumer(
    start_relay: StartRelay,
) -> None:
    """With tokens: none is 401, one without ``subscribe`` on the channel 403; a page of
    another origin is refused, one of an allowed origin may read (CORS headers)."""
    server = await start_relay(auth_hmac_secret=SECRET, allowed_origins=["https://app.example.com"])
    reader = token(grant={"channels": {"news": ["subscribe"]}})
    assert (await server.http.get("/channels/news/events")).status_code == 401
    other = token(grant={"channels": {"news": ["publish"], "elsewhere": ["subscribe"]}})
    response = await server.http.get(f"/channels/news/events?token={other}")
    assert response.status_code == 403
    evil = await server.http.get(
        f"/channels/news/events?token={reader}", headers={"Origin": "https://evil.example"}
    )
    assert evil.status_code == 403
    async with events(
        server, "news", f"token={reader}", Origin="https://app.example.com"
    ) as stream:
        assert stream.headers["access-control-allow-origin"] == "https://app.example.com"
        assert (await stream.next())["event"] == "subscribed"


async def test_a_slow_event_stream_is_disconnected_by_the_channel_policy(
    start_relay: StartRelay,
) -> None:
    """The same buffer and policy as a WebSocket consumer: a reader that falls a buffer
    behind is cut (its stream ends; the browser would reconnect and resume)."""
    server = await start_relay(
        consumer_buffer_messages=4, max_message_bytes=1024, consumer_buffer_bytes=4096
    )
    async with events(server, "fast") as stream:
        await stream.next()
        hub = server.relay.hub
        (consumer,) = hub._channels["fast"].consumers
        # Fill its buffer faster than the stream is written: deliveries without a checkpoint.
        for i in range(10):
            await hub.deliver("fast", f"m{i}", i + 1, "e", None)
        assert consumer.close_code == 1013
        with trio.fail_after(5):
            await stream.body()  # to its end
        assert stream.ended


async def test_shutdown_ends_the_stream(start_relay: StartRelay) -> None:
    """The relay closing ends every event stream (the browser reconnects elsewhere)."""
    server = await start_relay()
    async with events(server, "news") as stream:
        await stream.next()
        server.relay.hub.close()
        with trio.fail_after(5):
            await stream.body()  # to its end
        assert stream.ended


async def test_the_stream_socket_gets_the_tcp_user_timeout(
    start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a WebSocket's: a vanished browser fails the stream's writes within
    ``tcp_user_timeout_seconds`` (the option is set on the stream's own socket)."""
    from triorelay.compat.hypercorn import sockets
    from triorelay.routes import events as events_module

    set_on: list[tuple[bool, float]] = []

    def spy(send: object, seconds: float) -> bool:
        done = sockets.set_user_timeout(send, seconds)  # type: ignore[arg-type]
        set_on.append((done, seconds))
        return done

    monkeypatch.setattr(events_module.hypercorn_compat, "set_user_timeout", spy)
    server = await start_relay(tcp_user_timeout_seconds=7)
    async with events(server, "news") as stream:
        await stream.next()
    assert set_on == [(True, 7)]


async def test_an_empty_message_is_an_event_of_its_own(start_relay: StartRelay) -> None:
    """EventSource would drop an event with empty data without a trace: an empty message
    comes as ``event: empty`` saying which kind it was, with its id."""
    server = await start_relay()
    async with events(server, "news") as stream:
        epoch = json.loads((await stream.next())["data"])["epoch"]
        await publish(server, "news", "", "text/plain")
        await publish(server, "news", b"", "application/octet-stream")
        text, binary = await stream.next(), await stream.next()
    assert text == {"event": "empty", "id": f"{epoch}:1", "data": "text"}
    assert binary == {"event": "empty", "id": f"{epoch}:2", "data": "binary"}


async def test_a_stream_ends_when_its_token_expires(start_relay: StartRelay) -> None:
    """As a WebSocket session: at the token's expiry (here within 2 s) the stream ends (the
    browser's next attempt needs a valid token)."""
    server = await start_relay(auth_hmac_secret=SECRET, auth_leeway_seconds=0)
    reader = token(grant={"channels": {"news": ["subscribe"]}}, ttl=2)
    async with events(server, "news", f"token={reader}") as stream:
        await stream.next()
        with trio.fail_after(5):
            await stream.body()
        assert stream.ended
