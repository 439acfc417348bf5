"""The relay's WebSocket paths: a path → handler table, served on a lean ASGI path.

Every path below is served here, straight on the ASGI ``receive``/``send`` callables Hypercorn
gives us, not through Quart's ``websocket`` object. Quart-Trio's WebSocket layer adds a task
and a queue per connection (two more task hops per message, most of a naive relay's cost) and
has three traps this path avoids:

- it delivers an empty binary message as ``None`` (``event.get("bytes") or event["text"]``);
- its reader stops reading at 10 unread messages, so it never sees the disconnect, and the
  handler is never cancelled;
- after a disconnect, its ``send`` returns without a checkpoint, so a send loop spins.

Every other path (HTTP, unknown WebSocket paths) goes to Quart. A handler raises a
:class:`~triorelay.errors.RequestError` before the upgrade to refuse it with an HTTP status;
after the upgrade, :func:`~triorelay.routes.session.open_session` turns errors into close codes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from triorelay.errors import RequestError
from triorelay.routes import channels, flows
from triorelay.routes.asgi import ASGIApp, Query, Receive, Rejected, Scope, Send, reject

if TYPE_CHECKING:
    from triorelay.relay import Relay

Handler = Callable[["Relay", str, Query, Receive, Send], Awaitable[None]]
"""``await handler(relay, argument, query, receive, send)``; ``argument`` is what the path
names (a channel, an upstream) or ``""``."""

DEFAULT_CHANNEL = "default"
"""The channel of ``/ws/producer`` and ``/ws/consumer``: the asyncio version's clients."""

PATHS: dict[str, tuple[Handler, str]] = {
    "/ws/producer": (channels.produce, DEFAULT_CHANNEL),
    "/ws/consumer": (channels.consume, DEFAULT_CHANNEL),
    "/ws/echo": (flows.echo, ""),
    "/ws": (flows.flows, ""),
    "/ws/upload": (flows.uploads, ""),
}
"""Exact paths, with the argument their handler gets."""

PREFIXES: tuple[tuple[str, Handler], ...] = (
    ("/ws/producer/", channels.produce),
    ("/ws/consumer/", channels.consume),
    ("/ws/proxy/", flows.proxy_pipe),
)
"""Path prefixes; the rest of the path is the handler's argument (not validated here:
``/ws/producer/a/b`` is a producer path with a bad channel name)."""


def route(path: str) -> tuple[Handler, str] | None:
    """The handler of a WebSocket ``path`` and its argument, or None for any other path."""
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
        handler, argument = found
        connect = await receive()
        if connect["type"] != "websocket.connect":  # pragma: no cover - the ASGI spec's order
            return
        query = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        try:
            await handler(self.relay, argument, query, receive, send)
        except RequestError as error:  # refused before the upgrade
            await reject(send, error)
        except Rejected as rejected:  # refused while attaching
            await reject(send, rejected.error)
