"""Test helpers: a running relay, HTTP access to it, and a raw client that can stall."""

from __future__ import annotations

import contextlib
import inspect
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx
import trio
import wsproto
import wsproto.events as ws_events
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url
from wsproto.extensions import PerMessageDeflate

from triorelay.relay import Relay


async def refused_upgrade(
    port: int, path: str, headers: Sequence[tuple[str, str]] = ()
) -> tuple[int, bytes]:
    """Send a WebSocket upgrade request for ``path`` (with ``headers`` added); return the HTTP
    status and body.

    For requests the relay refuses before the upgrade (a trio-websocket client leaks its
    socket when refused, so the tests speak HTTP themselves).
    """
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=path,
        headers=[
            ("Host", f"127.0.0.1:{port}"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
            *headers,
        ],
    )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        status, body = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response | h11.InformationalResponse):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, body


@dataclass
class RunningRelay:
    """A relay served by Hypercorn on a free port, in the test's own trio run."""

    relay: Relay
    http_url: str
    stop: trio.Event
    _http: httpx.AsyncClient | None = field(default=None, repr=False)

    @property
    def ws_url(self) -> str:
        return "ws" + self.http_url.removeprefix("http")

    @property
    def port(self) -> int:
        return int(self.http_url.rsplit(":", 1)[1])

    def websocket(self, path: str, **kwargs: Any) -> Any:
        """``async with server.websocket("/ws/consumer/x") as ws``: a trio-websocket client."""
        return open_websocket_url(self.ws_url + path, **kwargs)

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.http_url, timeout=10)
        return self._http

    async def channel(self, name: str) -> dict[str, Any]:
        response = await self.http.get(f"/channels/{name}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


async def closed_with(ws: WebSocketConnection) -> tuple[int, str | None]:
    """Read until the server closes ``ws``; return its close code and reason."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed as closed:
        reason = closed.reason
    assert reason is not None
    return reason.code, reason.reason


def stored_files(relay: RunningRelay) -> list[Path]:
    """Every file in the relay's upload directory (temporary ones included)."""
    directory = relay.relay.settings.upload_dir
    return sorted(directory.iterdir()) if directory.exists() else []


async def wait_until(condition: Callable[[], object], timeout_seconds: float = 10) -> Any:
    """Wait until ``condition()`` (a function or a coroutine function) returns something true,
    and return it: for state nothing signals with an event (a publish under way inside the
    relay, what a Redis in another process holds). Bounded by ``timeout_seconds``."""
    with trio.fail_after(timeout_seconds):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            await trio.sleep(0.01)  # no event exists for this state


async def receive_n(ws: WebSocketConnection, count: int) -> list[str | bytes]:
    return [await ws.get_message() for _ in range(count)]


class RawWebSocket:
    """A WebSocket client on a raw socket with a tiny receive buffer, that reads only when told.

    trio-websocket keeps reading its socket in a background task; to stall a consumer for
    real, the test needs a client that does not read at all.
    """

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._partial: list[Any] = []  # fragments of a message not yet finished

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str,
        receive_buffer_bytes: int = 4096,
        *,
        deflate: bool = False,
        subprotocols: Sequence[str] = (),
    ) -> RawWebSocket:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
        await sock.connect(("127.0.0.1", port))
        raw = cls(sock)
        extensions = [PerMessageDeflate()] if deflate else []
        request = ws_events.Request(
            host="127.0.0.1", target=path, extensions=extensions, subprotocols=list(subprotocols)
        )
        await raw._send(request)
        while True:
            for event in await raw._events():
                if isinstance(event, ws_events.AcceptConnection):
                    return raw
                raise AssertionError(f"handshake failed: {event!r}")

    async def send_text(self, text: str) -> None:
        await self._send(ws_events.TextMessage(data=text))

    async def send_events(self, *events: ws_events.Event) -> None:
        """Send several events in one socket write (so the server reads them together)."""
        await self.sock.send(b"".join(self.conn.send(event) for event in events))

    async def send_raw(self, data: bytes) -> None:
        """Send all of ``data`` (bytes the client built itself), however the socket takes it."""
        view = memoryview(data)
        while view:
            view = view[await self.sock.send(view) :]

    async def wait_for_close(self) -> tuple[int | None, str | None]:
        """Read until the server's close frame, answering nothing; (code, reason).

        (None, None) when the connection was dropped without a close frame. Safe to run while
        another task sends (it never writes).
        """
        while True:
            try:
                events = await self._events()
            except OSError:
                return None, None
            for event in events:
                if isinstance(event, ws_events.CloseConnection):
                    if self.conn.state is wsproto.connection.ConnectionState.CLOSED:
                        return None, None  # the socket ended, no close frame
                    return event.code, event.reason

    async def read_events(self, count: int) -> list[ws_events.Event]:
        """Read at least ``count`` wsproto events (messages, pongs, close...)."""
        events: list[ws_events.Event] = []
        while len(events) < count:
            events += await self._events()
        return events

    async def _send(self, event: ws_events.Event) -> None:
        await self.sock.send(self.conn.send(event))

    async def _events(self) -> list[ws_events.Event]:
        data = await self.sock.recv(65536)
        self.conn.receive_data(data or None)
        return list(self.conn.events())

    def _collect(self, event: ws_events.Message[Any], messages: list[str | bytes]) -> None:
        """Add a message's fragment; append the whole message once it is finished."""
        self._partial.append(event.data)
        if event.message_finished:
            messages.append(_join(event, self._partial))
            self._partial = []

    async def read_messages(self, count: int) -> list[str | bytes]:
        """Read at least ``count`` messages (fails if the connection closes first)."""
        messages: list[str | bytes] = []
        while len(messages) < count:
            for event in await self._events():
                if isinstance(event, ws_events.Message):
                    self._collect(event, messages)
                elif isinstance(event, ws_events.Ping):
                    await self._send(event.response())
                else:
                    raise AssertionError(f"unexpected {event!r} after {len(messages)} messages")
        return messages

    async def read_until_closed(
        self, *, answer_pings: bool = True
    ) -> tuple[list[str | bytes], int | None, str | None]:
        """Read everything the server sends; return (messages, close code, close reason).

        A connection dropped without a close frame returns code None. ``answer_pings=False``
        plays a peer that reads but never answers (a dead peer, seen from the server).
        """
        messages: list[str | bytes] = []
        while True:
            try:
                events = await self._events()
            except OSError:
                return messages, None, None
            if not events and self.conn.state is wsproto.connection.ConnectionState.CLOSED:
                return messages, None, None
            for event in events:
                if isinstance(event, ws_events.Message):
                    self._collect(event, messages)
                elif isinstance(event, ws_events.CloseConnection):
                    if self.conn.state is wsproto.connection.ConnectionState.CLOSED:
                        return messages, None, None  # dropped without a close frame
                    with contextlib.suppress(OSError):
                        await self._send(event.response())
                    return messages, event.code, event.reason
                elif isinstance(event, ws_events.Ping) and answer_pings:
                    await self._send(event.response())

    def close(self) -> None:
        self.sock.close()


def _join(event: ws_events.Message[Any], parts: list[Any]) -> str | bytes:
    return "".join(parts) if isinstance(event, ws_events.TextMessage) else b"".join(parts)


_UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def client_frame(payload: str | bytes, opcode: int | None = None) -> bytes:
    """One masked client frame (mask 0, so the payload goes as it is)."""
    data = payload.encode() if isinstance(payload, str) else payload
    first = 0x80 | (opcode if opcode is not None else 1 if isinstance(payload, str) else 2)
    length = len(data)
    if length < 126:
        header = bytes([first, 0x80 | length])
    elif length < 65536:
        header = bytes([first, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([first, 0x80 | 127]) + length.to_bytes(8, "big")
    return header + b"\0\0\0\0" + data


async def exchange_raw(
    port: int, path: str, messages: list[str | bytes]
) -> tuple[list[str | bytes], int | None, str]:
    """Send ``messages`` on a new WebSocket, then read until the server closes it.

    Returns (messages received, close code, reason): parsed here, not by wsproto, which
    refuses close codes it does not know (1014) as a protocol error.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(_UPGRADE.format(path=path).encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, f"no handshake response: {data!r}"
            data += chunk
        head, data = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        await stream.send_all(b"".join(client_frame(message) for message in messages))
        received: list[str | bytes] = []
        while True:
            frame = _server_frame(data)
            if frame is None:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return received, None, ""
                data += chunk
                continue
            opcode, payload, data = frame
            if opcode == 8:
                code = int.from_bytes(payload[:2], "big") if payload else None
                return received, code, payload[2:].decode()
            if opcode in (1, 2):
                received.append(payload.decode() if opcode == 1 else payload)


def _server_frame(data: bytes) -> tuple[int, bytes, bytes] | None:
    """(opcode, payload, rest) of the first complete unmasked unfragmented frame, or None."""
    if len(data) < 2:
        return None
    opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
    if length == 126:
        length, start = int.from_bytes(data[2:4], "big"), 4
    elif length == 127:
        length, start = int.from_bytes(data[2:10], "big"), 10
    if len(data) < start + length:
        return None
    return opcode, data[start : start + length], data[start + length :]
