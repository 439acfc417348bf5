"""The relay's WebSocket paths: a path → handler table, served on a lean ASGI path.

Every path below is served here, straight on the ASGI ``receive``/``send`` callables Hypercorn
gives us, not through Quart's ``websocket`` object. Quart-Trio's WebSocket layer adds a task
and a queue per connection (two more task hops per message, most of a naive relay's cost) and
has three traps this path avoids:

- it delivers an empty binary message as ``None`` (``event.get("bytes") or event["text"]``);
- its reader stops reading at 10 unread messages, so it never sees the disconnect, and the
  handler is never cancelled;
- after a disconnect, its ``send`` returns without a checkpoint, so a send loop spins.

Every other path (HTTP, unknown WebSocket paths) goes to Quart.

Each route names the right it needs (:mod:`triorelay.auth.grants`): before any work, the
handshake's origin, token and right are checked (:class:`~triorelay.auth.access.Access`) and
the client's connection counted against ``max_connections`` / ``max_connections_per_client``.
A refusal, or a :class:`~triorelay.errors.RequestError` a handler raises before the upgrade,
is an HTTP status; after the upgrade :func:`~triorelay.routes.session.open_session` turns
errors into close codes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from triorelay.auth.access import Access, credentials_from_headers
from triorelay.auth.grants import PROXY_RIGHT_PREFIX
from triorelay.errors import RequestError
from triorelay.routes import channels, flows
from triorelay.routes.asgi import ASGIApp, Receive, Rejected, Scope, Send, reject
from triorelay.routes.session import Request

if TYPE_CHECKING:
    from triorelay.relay import Relay

Handler = Callable[[Request], Awaitable[None]]

DEFAULT_CHANNEL = "default"
"""The channel of ``/ws/producer`` and ``/ws/consumer``: the asyncio version's clients."""


@dataclass(frozen=True, slots=True)
class Route:
    """A handler and the right it needs: on the channel the path names (``publish``,
    ``subscribe``), an endpoint right, or ``proxy:`` followed by the path's upstream name."""

    handler: Handler
    right: str
    on_channel: bool = False


PRODUCER = Route(channels.produce, "publish", on_channel=True)
CONSUMER = Route(channels.consume, "subscribe", on_channel=True)

PATHS: dict[str, tuple[Route, str]] = {
    "/ws/producer": (PRODUCER, DEFAULT_CHANNEL),
    "/ws/consumer": (CONSUMER, DEFAULT_CHANNEL),
    "/ws/echo": (Route(flows.echo, "echo"), ""),
    "/ws": (Route(flows.flows, "echo"), ""),
    "/ws/upload": (Route(flows.uploads, "upload"), ""),
}
"""Exact paths, with the argument their handler gets."""

PREFIXES: tuple[tuple[str, Route], ...] = (
    ("/ws/producer/", PRODUCER),
    ("/ws/consumer/", CONSUMER),
    ("/ws/proxy/", Route(flows.proxy_pipe, PROXY_RIGHT_PREFIX)),
)
"""Path prefixes; the rest of the path is the handler's argument (not validated here:
``/ws/producer/a/b`` is a producer path with a bad channel name)."""


def route(path: str) -> tuple[Route, str] | None:
    """The route of a WebSocket ``path`` and its argument, or None for any other path."""
    found = PATHS.get(path)
    if found is not None:
        return found
    for prefix, handler in PREFIXES:
        if path.startswith(prefix):
            return handler, path[len(prefix) :]
    return None


class RelayWebSockets:
    """ASGI middleware: the relay's WebSocket paths are served here, the rest by ``app``."""

    def __init__(self, app: ASGIApp, relay: Relay) -> None:
        self.app = app
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = route(scope["path"]) if scope["type"] == "websocket" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        if (await receive())["type"] != "websocket.connect":  # pragma: no cover - ASGI's order
            return
        try:
            # This frame lives as long as the connection: it keeps only what it needs.
            request, client_key = await self._admit(scope, *found, receive, send)
            handler = found[0].handler
            del found
            with self.relay.limits.hold(client_key):
                await handler(request)
        except RequestError as error:  # refused before the upgrade
            self.relay.counters.refusal(error.status, error.label)
            await reject(send, error)
        except Rejected as rejected:  # refused while attaching
            self.relay.counters.refusal(rejected.error.status, rejected.error.label)
            await reject(send, rejected.error)

    async def _admit(
        self, scope: Scope, route: Route, argument: str, receive: Receive, send: Send
    ) -> tuple[Request, str]:
        """The request a handler serves, and the key its client's connections are counted
        under; raises :class:`RequestError` for a client without the route's right."""
        relay = self.relay
        query_string = scope["query_string"].decode("latin-1")
        peer = scope.get("client")
        address = peer[0] if peer else None
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        credentials = credentials_from_headers(headers, query_string, address, relay.settings)
        identity = await relay.access.identify(credentials)
        right, channel = route.right, None
        if route.on_channel:
            channel = argument
            Access.require_channel(identity, right, channel)  # type: ignore[arg-type]
        else:
            if right == PROXY_RIGHT_PREFIX:
                right += argument
            Access.require(identity, right)
        request = Request(
            relay=relay,
            path=scope["path"],
            argument=argument,
            query=parse_qs(query_string, keep_blank_values=True),
            identity=identity,
            client=address or "local",
            right=right,
            channel=channel,
            receive=receive,
            send=send,
            subprotocols=tuple(scope.get("subprotocols") or ()),
        )
        return request, Access.client_key(identity, credentials)
