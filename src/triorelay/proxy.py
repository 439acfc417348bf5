"""WebSocket-to-WebSocket forwarding: dial a configured upstream, then pipe both ways.

Only the upstreams named in ``proxy_upstreams`` are ever dialled; a client names one, never
gives a URL. trio-websocket is the client side, in its own nursery inside the connection's.

:func:`pipe` runs both directions concurrently in one nursery. Each direction holds one
message in flight plus a bounded buffer (``flow_buffer_messages``: the client's inbound channel
one way, trio-websocket's message queue the other), and writes with a send that waits for the
socket: a side that stops reading stops the other side's reading, down to its TCP window.

Closes cross over with their code and reason, with three exceptions: a close frame without a
code (1005) is passed on as 1000; an upstream lost without a close frame (1006, 1015) closes the
client with 1014; a client lost without one closes the upstream with 1001.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    DisconnectionTimeout,
    HandshakeError,
    WebSocketConnection,
)

from triorelay.compat.trio_websocket import open_websocket_url
from triorelay.envelopes import Payload
from triorelay.errors import CloseCode, UnknownUpstream, UpstreamError
from triorelay.settings import Settings

log = logging.getLogger(__name__)

NO_STATUS = CloseCode.NO_STATUS_RECEIVED
LOST = (CloseCode.ABNORMAL_CLOSURE, CloseCode.TLS_HANDSHAKE_FAILED)
"""Close codes that mean no close frame came (1015: the TLS layer failed)."""


@dataclass(frozen=True, slots=True)
class Close:
    """A close to send: code and reason."""

    code: int
    reason: str


class ClientEnd(Protocol):
    """The client side of a pipe, as the route provides it."""

    async def receive(self) -> Payload:
        """The client's next message; raises :class:`trio.EndOfChannel` once it has gone."""

    async def send(self, payload: Payload) -> bool:
        """Send ``payload`` to the client (waiting for its socket); False if it has gone."""

    def peer_close(self) -> Close | None:
        """The close frame the client sent, or None if it went away without one."""


@asynccontextmanager
async def open_upstream(settings: Settings, name: str) -> AsyncIterator[WebSocketConnection]:
    """Connect to upstream ``name`` for the ``async with`` block, then close it.

    Raises :class:`UnknownUpstream` for a name ``proxy_upstreams`` lacks, and
    :class:`UpstreamError` when connecting fails or takes over
    ``proxy_connect_timeout_seconds``. The reasons name the upstream, never its URL. Leaving
    the block closes the upstream with 1000 if still open (bounded by
    ``close_timeout_seconds``).
    """
    url = settings.proxy_upstreams.get(name)
    if url is None:
        raise UnknownUpstream(f"no upstream named {name[:64]!r}")
    timeout = settings.proxy_connect_timeout_seconds
    too_slow = UpstreamError(f"upstream {name!r} did not answer within {timeout:g} s")
    connected = False
    try:
        # Bounded whatever the upstream does (see triorelay.compat.trio_websocket).
        async with open_websocket_url(
            str(url),
            message_queue_size=settings.flow_buffer_messages,
            max_message_size=settings.max_message_bytes,
            connect_timeout=timeout,
            disconnect_timeout=settings.close_timeout_seconds,
        ) as upstream:
            connected = True
            yield upstream
    except ConnectionTimeout:
        raise too_slow from None
    except ConnectionRejected as rejected:
        raise UpstreamError(
            f"upstream {name!r} refused the connection (HTTP {rejected.status_code})"
        ) from None
    except DisconnectionTimeout:
        log.info("upstream %r did not finish its close handshake in time", name)
    except HandshakeError as error:
        if connected:  # pragma: no cover - trio-websocket raises only the two above on exit
            raise
        log.info("cannot reach upstream %r: %r", name, error.__cause__ or error)
        raise UpstreamError(f"cannot reach upstream {name!r}") from None


async def close_upstream(upstream: WebSocketConnection, close: Close, timeout: float) -> None:
    """Close ``upstream`` with ``close`` unless it is closed: shielded, at most ``timeout``."""
    if upstream.closed is not None:
        return
    with trio.CancelScope(shield=True), trio.move_on_after(timeout):
        await upstream.aclose(close.code, close.reason)


async def request(upstream: WebSocketConnection, name: str, message: Payload) -> Payload:
    """Send ``message`` to ``upstream`` (named ``name``) and return its next message.

    Raises :class:`UpstreamError` when the upstream closes without replying. Waits for the
    reply as long as it takes: cancel to give up.
    """
    try:
        await upstream.send_message(message)
        return await upstream.get_message()
    except ConnectionClosed as closed:
        code = closed.reason.code if closed.reason is not None else NO_STATUS
        raise UpstreamError(f"upstream {name!r} closed before replying ({code})") from None


async def pipe(
    client: ClientEnd, upstream: WebSocketConnection, close_timeout: float
) -> Close | None:
    """Forward messages both ways, as they are (text as text, binary as binary), until one
    side closes; then close the other side the same way.

    Returns the close the route must send to the client when the upstream closed first; None
    when the client went first (the upstream has then been closed, waiting at most
    ``close_timeout`` seconds). Cancelling it leaves the upstream open: the caller closes it,
    which needs trio-websocket's reader task, so the caller must not cancel a scope around
    :func:`open_upstream` before that.
    """
    endings: list[Close | None] = []

    async def client_to_upstream() -> None:
        while True:
            try:
                payload = await client.receive()
            except trio.EndOfChannel:
                endings.append(None)
                nursery.cancel_scope.cancel()
                return
            try:
                await upstream.send_message(payload)
            except ConnectionClosed:
                return  # the upstream is closing: the other direction passes its close on

    async def upstream_to_client() -> None:
        while True:
            try:
                message = await upstream.get_message()
            except ConnectionClosed as closed:
                endings.append(_for_client(closed.reason))
                nursery.cancel_scope.cancel()
                return
            if not await client.send(message):
                return  # the client has gone: the other direction sees it end

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_to_upstream)
        nursery.start_soon(upstream_to_client)
    ending = endings[0] if endings else None
    if ending is None:
        await close_upstream(upstream, _for_upstream(client.peer_close()), close_timeout)
    return ending


def _for_client(reason: CloseReason | None) -> Close:
    """The close for the client, given how the upstream closed."""
    if reason is None or reason.code in LOST:
        return Close(CloseCode.BAD_GATEWAY, "upstream connection lost")
    if reason.code == NO_STATUS:
        return Close(CloseCode.NORMAL, "")
    return Close(reason.code, reason.reason or "")


def _for_upstream(close: Close | None) -> Close:
    """The close for the upstream, given how the client closed (None: without a frame)."""
    if close is None or close.code in LOST:
        return Close(CloseCode.GOING_AWAY, "client connection lost")
    if close.code == NO_STATUS:
        return Close(CloseCode.NORMAL, "")
    return close
