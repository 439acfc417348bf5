"""``GET /channels/{channel}/events``: a channel as Server-Sent Events, for ``EventSource``.

Served on raw ASGI, beside the WebSocket routes: one task writes the stream, Hypercorn tells
us of the disconnect (``http.disconnect``), and the consumer is an ordinary positioned hub
consumer, with the same right (``subscribe`` on the channel), buffer and slow-consumer policy
as a WebSocket consumer. Each message carries ``id: epoch:offset``, so the browser resumes by
itself after any disconnect (it sends ``Last-Event-ID``). Wire format:
``docs/reference/framing.md``.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote

import trio

from triorelay.auth.access import Access, credentials_from_headers
from triorelay.compat import hypercorn as hypercorn_compat
from triorelay.envelopes import Payload
from triorelay.errors import InvalidQuery, MethodNotAllowed, RequestError, ServiceError
from triorelay.hub import Consumer, Entry, validate_channel_name
from triorelay.observability.counters import close_label
from triorelay.observability.logs import access_fields
from triorelay.routes import positioned
from triorelay.routes.asgi import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from triorelay.relay import Relay

access_log = logging.getLogger("triorelay.access")

PREFIX, SUFFIX = "/channels/", "/events"
KEEPALIVE = b": keepalive\n\n"


class EventEncoding:
    """Server-Sent Events: ``id: epoch:offset`` on every message, notices as named events.

    ``retry_milliseconds``: how long the browser waits before it reconnects (sent once, with
    ``subscribed``).
    """

    def __init__(self, retry_milliseconds: int) -> None:
        self.retry_milliseconds = retry_milliseconds

    def message(self, channel: str, entry: Entry) -> Payload:
        payload, position = entry.payload, f"{entry.epoch}:{entry.offset}"
        if not payload:  # EventSource drops an event whose data is empty: name it instead
            kind = "binary" if isinstance(payload, bytes) else "text"
            return f"event: empty\nid: {position}\ndata: {kind}\n\n"
        if isinstance(payload, bytes):
            data = base64.b64encode(payload).decode()
            return f"event: binary\nid: {position}\ndata: {data}\n\n"
        if "\r" in payload:  # EventSource would turn it into a line feed: keep it exact
            return f"event: text\nid: {position}\ndata: {json.dumps(payload)}\n\n"
        data = payload.replace("\n", "\ndata: ")
        return f"id: {position}\ndata: {data}\n\n"

    def control(self, control: str) -> Payload:
        fields = json.loads(control)
        kind = fields["triorelay"]
        if kind == "subscribed":
            # A page that gets nothing else resumes from here: before the replay, if there is
            # one (a drop in the middle of it must not skip the rest).
            offset = fields["offset"] - (fields["replayed"] if fields["recovered"] else 0)
            return (
                f"retry: {self.retry_milliseconds}\nevent: {kind}\n"
                f"id: {fields['epoch']}:{offset}\ndata: {control}\n\n"
            )
        return f"event: {kind}\ndata: {control}\n\n"


def channel_of(path: str) -> str | None:
    """The channel of an event-stream path, or None for any other path."""
    if path.startswith(PREFIX) and path.endswith(SUFFIX) and len(path) > len(PREFIX + SUFFIX):
        return unquote(path[len(PREFIX) : -len(SUFFIX)])
    return None


class EventStreams:
    """ASGI middleware: ``GET /channels/{c}/events`` is served here, the rest by ``app``."""

    def __init__(self, app: ASGIApp, relay: Relay) -> None:
        self.app = app
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        channel = channel_of(scope["path"]) if scope["type"] == "http" else None
        if channel is None:
            await self.app(scope, receive, send)
            return
        try:
            if scope["method"] != "GET":
                raise MethodNotAllowed("an event stream is read with GET")
            await self._serve(scope, channel, receive, send)
        except (RequestError, ServiceError) as error:
            self.relay.counters.refusal(error.status, error.label)
            await answer(send, error.status, str(error), error.status == 405)

    async def _serve(self, scope: Scope, channel: str, receive: Receive, send: Send) -> None:
        relay = self.relay
        validate_channel_name(channel)
        query_string = scope["query_string"].decode("latin-1")
        peer = scope.get("client")
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        credentials = credentials_from_headers(
            headers, query_string, peer[0] if peer else None, relay.settings
        )
        identity = await relay.access.identify(credentials)
        Access.require_channel(identity, "subscribe", channel)
        if relay.settings.channel_config(channel).mode != "broadcast":
            raise InvalidQuery("event streams are for broadcast channels")
        last_event_id = next((v for k, v in headers if k == "last-event-id"), None)
        resume = positioned.resume_query(
            parse_qs(query_string, keep_blank_values=True), last_event_id
        )
        hub = relay.hub
        started = trio.current_time()
        with (
            relay.limits.hold(Access.client_key(identity, credentials)),
            hub.attach_consumer(channel, positioned=True) as consumer,
        ):
            consumer.role = "events"
            await hub.broker.wait_watching(channel)
            recovery, cursor = await positioned.subscribe(hub, consumer, resume)
            response_headers = [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-store"),
                (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
            ]
            if credentials.origin is not None:  # a page of an allowed origin: let it read
                response_headers += [
                    (b"access-control-allow-origin", credentials.origin.encode("latin-1")),
                    (b"access-control-allow-credentials", b"true"),
                    (b"vary", b"origin"),
                ]
            if relay.settings.tcp_user_timeout_seconds is not None:
                # A vanished browser fails the stream's writes in this long, as a WebSocket's.
                hypercorn_compat.set_user_timeout(send, relay.settings.tcp_user_timeout_seconds)
            await send({"type": "http.response.start", "status": 200, "headers": response_headers})
            relay.counters.opened(consumer.role)
            events = EventEncoding(relay.settings.sse_retry_milliseconds)
            opening = positioned.opening_frames(channel, recovery, resume, events)
            scope_ = trio.CancelScope()
            # Ends at the token's expiry, as a WebSocket session does (the browser then
            # reconnects with whatever token its page gives it).
            verifier = relay.access.verifier
            left = verifier.seconds_left(identity) if verifier is not None else None
            if left is not None:
                scope_.deadline = trio.current_time() + left
            consumer.bind(scope_)
            writer = StreamWriter(send)
            try:
                with scope_:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(writer.until_disconnect, receive, scope_)
                        if await writer.send_many(opening):
                            await positioned.write_positioned(
                                consumer,
                                writer.send_many,
                                cursor,
                                events,
                                idle_seconds=relay.settings.sse_keepalive_seconds,
                                on_idle=writer.keepalive,
                            )
                        scope_.cancel()
                with trio.CancelScope(shield=True):  # end the response (a bounded local write)
                    with trio.move_on_after(relay.settings.close_timeout_seconds):
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:  # however it ends (Hypercorn's own deadline included): counted and logged
                relay.counters.closed(
                    consumer.role,
                    close_label(consumer.close_code, writer.gone),
                    (0, consumer.messages_out),
                    (0, consumer.bytes_out),
                )
                _log_stream(credentials.client, identity.sub, scope["path"], channel, consumer,
                            trio.current_time() - started, writer.gone)  # fmt: skip


def _log_stream(
    client: str | None,
    sub: str | None,
    path: str,
    channel: str,
    consumer: Consumer,
    seconds: float,
    gone: bool,
) -> None:
    """The access-log line of an event stream that ended (never its token)."""
    code = consumer.close_code
    ended = "client" if gone else (str(int(code)) if code else "end")
    access_log.info(
        "%s sub=%s path=%s role=events channel=%s seconds=%.3f out=%d/%dB close=%s",
        client or "local",
        sub or "-",
        path,
        channel,
        seconds,
        consumer.messages_out,
        consumer.bytes_out,
        ended,
        extra=access_fields(
            client=client or "local",
            sub=sub,
            path=path,
            role="events",
            channel=channel,
            seconds=seconds,
            messages=(0, consumer.messages_out),
            size=(0, consumer.bytes_out),
            close=ended,
        ),
    )


class StreamWriter:
    """Writes a streamed response's chunks; notices a client that went away."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.gone = False

    async def send_many(self, frames: list[Payload]) -> bool:
        body = "".join(f if isinstance(f, str) else f.decode() for f in frames).encode()
        return await self._write(body)

    async def keepalive(self) -> bool:
        return await self._write(KEEPALIVE)

    async def _write(self, body: bytes) -> bool:
        if not self.gone:
            await self._send({"type": "http.response.body", "body": body, "more_body": True})
        return not self.gone

    async def until_disconnect(self, receive: Receive, scope: trio.CancelScope) -> None:
        """Wait for the client's disconnect; then end the stream (``scope``)."""
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                scope.cancel()
                return


async def answer(send: Send, status: int, text: str, allow: bool = False) -> None:
    """A JSON error, ``{"error": text}``, with ``Allow: GET`` if ``allow``."""
    body = json.dumps({"error": text}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if allow:
        headers.append((b"allow", b"GET"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
