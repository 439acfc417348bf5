"""``GET /dashboard``: a live page of the relay's channels, broker and connections (``admin``).

Served on raw ASGI, beside the event streams (one task writes the feed, Hypercorn tells us of
the disconnect):

``GET /dashboard``          the page (``src/triorelay/dashboard/``: plain files, no build step,
                            nothing from another origin)
``GET /dashboard/{file}``   one of its files (:data:`FILES`)
``GET /dashboard/feed``     ``text/event-stream``: an ``event: snapshot`` of the relay
                            (:mod:`triorelay.observability.snapshots`) every
                            ``dashboard_interval_seconds``, until the client leaves or the
                            relay shuts down

Each needs the ``admin`` right. A browser's token comes as ``?token=`` on the page's URL (the
``auth_query_parameter``, redacted from every log): the page hands it on to its files and its
feed, since neither a ``<script>`` nor an ``EventSource`` can set a header. Every answer
carries a Content-Security-Policy of ``'self'`` alone (the page has no inline script or style).
"""

from __future__ import annotations

import html
import json
import logging
import time
from importlib.resources import files
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode

import trio

from triorelay.auth.access import Access, Credentials, credentials_from_headers
from triorelay.auth.tokens import Identity
from triorelay.errors import MethodNotAllowed, RequestError, ServiceError
from triorelay.observability.counters import close_label
from triorelay.observability.logs import access_fields
from triorelay.observability.snapshots import Snapshots
from triorelay.routes.asgi import ASGIApp, Receive, Scope, Send
from triorelay.routes.events import StreamWriter, answer

if TYPE_CHECKING:
    from triorelay.relay import Relay

access_log = logging.getLogger("triorelay.access")

PAGE, FEED, PREFIX = "/dashboard", "/dashboard/feed", "/dashboard/"

FILES = {
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
    "uPlot.iife.min.js": b"text/javascript; charset=utf-8",
    "uPlot.min.css": b"text/css; charset=utf-8",
    "icon.svg": b"image/svg+xml",
}
"""The page's files, by name: nothing else under ``/dashboard/`` is served."""

QUERY_MARK = b"{{query}}"
"""Where the page's HTML takes the token's query (``?token=...``, or nothing)."""

HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # the page's URL may hold a token
    (b"cache-control", b"no-store"),
]


class Dashboard:
    """ASGI middleware: ``/dashboard`` and its files and feed here, the rest by ``app``.

    The files are read once, when the app is made.
    """

    def __init__(self, app: ASGIApp, relay: Relay) -> None:
        self.app = app
        self.relay = relay
        folder = files("triorelay") / "dashboard"
        self._page = (folder / "index.html").read_bytes()
        self._files = {name: (folder / name).read_bytes() for name in FILES}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path != PAGE and path != FEED and path.removeprefix(PREFIX) not in FILES:
            await self.app(scope, receive, send)
            return
        try:
            if scope["method"] != "GET":
                raise MethodNotAllowed("the dashboard is read with GET")
            identity, credentials = await self._identify(scope, check_origin=path == FEED)
            Access.require(identity, "admin")
            if path == FEED:
                await self._feed(scope, identity, credentials, receive, send)
            elif path == PAGE:
                page = self._page.replace(QUERY_MARK, self._query(scope, credentials))
                await _respond(send, page, PAGE)
            else:
                name = path.removeprefix(PREFIX)
                await _respond(send, self._files[name], name)
        except (RequestError, ServiceError) as error:
            self.relay.counters.refusal(error.status, error.label)
            await answer(send, error.status, str(error), error.status == 405)

    async def _identify(self, scope: Scope, *, check_origin: bool) -> tuple[Identity, Credentials]:
        relay = self.relay
        peer = scope.get("client")
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        credentials = credentials_from_headers(
            headers,
            scope["query_string"].decode("latin-1"),
            peer[0] if peer else None,
            relay.settings,
        )
        identity = await relay.access.identify(credentials, check_origin=check_origin)
        return identity, credentials

    def _query(self, scope: Scope, credentials: Credentials) -> bytes:
        """``?token=...`` for the page's files and feed, if the page's URL had the token (the
        one that was verified: a header's wins over it)."""
        parameter = self.relay.settings.auth_query_parameter
        values = parse_qs(scope["query_string"].decode("latin-1")).get(parameter)
        if not values or credentials.token is None or values[0] != credentials.token:
            return b""
        return html.escape("?" + urlencode({parameter: credentials.token})).encode()

    async def _feed(
        self,
        scope: Scope,
        identity: Identity,
        credentials: Credentials,
        receive: Receive,
        send: Send,
    ) -> None:
        relay, settings = self.relay, self.relay.settings
        started = trio.current_time()
        with (
            relay.limits.hold(Access.client_key(identity, credentials)),
            relay.hub.attach_standalone("dashboard") as connection,
        ):
            headers = [(b"content-type", b"text/event-stream; charset=utf-8"), *HEADERS]
            headers.append((b"x-accel-buffering", b"no"))  # nginx: do not buffer the stream
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            relay.counters.opened(connection.role)
            snapshots = Snapshots(relay.sources, relay.health, settings.dashboard_max_channels)
            writer = StreamWriter(send)
            sent = sent_bytes = 0
            cancel_scope = trio.CancelScope()
            # Ends at the token's expiry, as an event stream does (the page's EventSource then
            # reconnects with whatever token it has: an admin token's exp is what cuts access).
            verifier = relay.access.verifier
            left = verifier.seconds_left(identity) if verifier is not None else None
            if left is not None:
                cancel_scope.deadline = trio.current_time() + left
            connection.bind(cancel_scope)
            with cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(writer.until_disconnect, receive, cancel_scope)
                    retry = f"retry: {settings.sse_retry_milliseconds}\n"
                    while True:
                        data = json.dumps(snapshots.take(time.time()), separators=(",", ":"))
                        event = f"{retry}event: snapshot\ndata: {data}\n\n"
                        if not await writer.send_many([event]):
                            break
                        retry, sent, sent_bytes = "", sent + 1, sent_bytes + len(event)
                        await trio.sleep(settings.dashboard_interval_seconds)
                    cancel_scope.cancel()
            with trio.CancelScope(shield=True):  # end the response (bounded: a local write)
                with trio.move_on_after(settings.close_timeout_seconds):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            close = close_label(connection.close_code, writer.gone)
            relay.counters.closed(connection.role, close, (0, sent), (0, sent_bytes))
            seconds = trio.current_time() - started
            code = connection.close_code
            ended = "client" if writer.gone else (str(int(code)) if code else "end")
            access_log.info(
                "%s sub=%s path=%s role=dashboard seconds=%.3f out=%d/%dB close=%s",
                credentials.client or "local",
                identity.sub or "-",
                scope["path"],
                seconds,
                sent,
                sent_bytes,
                ended,
                extra=access_fields(
                    client=credentials.client or "local",
                    sub=identity.sub,
                    path=scope["path"],
                    role=connection.role,
                    channel=None,
                    seconds=seconds,
                    messages=(0, sent),
                    size=(0, sent_bytes),
                    close=ended,
                ),
            )


async def _respond(send: Send, body: bytes, name: str) -> None:
    content_type = FILES.get(name, b"text/html; charset=utf-8")
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *HEADERS]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
