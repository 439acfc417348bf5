"""What subscribers and publishers share: URLs, tokens, opening a WebSocket, keeping it alive."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import NoReturn
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    DisconnectionTimeout,
    HandshakeError,
    WebSocketConnection,
)

from triorelay.client.errors import Closed, ConnectionFailed, Rejected
from triorelay.compat.trio_websocket import open_websocket_url
from triorelay.framing import refresh

TokenProvider = Callable[[], str | Awaitable[str]]
"""A function (or coroutine function) returning a fresh token, called for each connection
attempt and each in-band refresh: a long-running client outlives any one token's expiry."""

Token = str | TokenProvider
"""A token (``Authorization: Bearer``), or a provider of fresh ones."""

_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}

CONNECT_TIMEOUT_SECONDS = 10.0
"""Default bound on opening a connection (TCP, TLS and the WebSocket handshake)."""
CLOSE_TIMEOUT_SECONDS = 5.0
"""Default bound on the closing handshake (a dead relay never answers it)."""
MAX_FRAME_BYTES = 1024 * 1024 + 256
"""Default largest frame taken from the relay: its default ``max_message_bytes`` plus a
message header (``m <channel> <offset>\\n``: at most 4 + 128 + 19 bytes)."""


def endpoint_url(base_url: str, path: str, query: Mapping[str, str]) -> str:
    """The WebSocket URL of ``path`` (``/ws/consumer/chat``) on the relay at ``base_url``.

    ``base_url`` is ``ws://``, ``wss://``, ``http://`` or ``https://`` (mapped to ws/wss),
    with or without a path prefix (a relay behind a proxy at ``/relay``); its own query
    parameters are kept. Raises ValueError for another scheme.
    """
    parts = urlsplit(base_url)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(
            f"the relay's URL must be ws://, wss://, http:// or https://: {base_url!r}"
        )
    params = [*parse_qsl(parts.query, keep_blank_values=True), *query.items()]
    return urlunsplit(
        (scheme, parts.netloc, parts.path.rstrip("/") + quote(path), urlencode(params), "")
    )


async def resolve_token(token: Token | None) -> str | None:
    """The token to present now: ``token`` itself, or what its provider returns."""
    if token is None or isinstance(token, str):
        return token
    fresh = token()
    if inspect.isawaitable(fresh):
        fresh = await fresh
    if not isinstance(fresh, str):
        raise TypeError(f"a token provider must return a str, not {type(fresh).__name__}")
    return fresh


@contextlib.asynccontextmanager
async def open_connection(
    url: str,
    *,
    token: str | None,
    subprotocols: list[str] | None,
    max_frame_bytes: int,
    connect_timeout_seconds: float,
    close_timeout_seconds: float,
) -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client connection to ``url``, with the handshake's failures
    translated: ConnectionFailed (refused, reset, timed out) or Rejected (an HTTP status).

    Closes with 1000 when the body ends (bounded by ``close_timeout_seconds``); a close
    that times out is not an error (the socket is closed either way). Any other failure
    before the handshake is done (a peer that does not answer in HTTP) is ConnectionFailed.
    """
    headers = [] if token is None else [(b"Authorization", b"Bearer " + token.encode())]
    entered = False
    body_error: BaseException | None = None
    try:
        async with open_websocket_url(
            url,
            subprotocols=subprotocols,
            extra_headers=headers,
            max_message_size=max_frame_bytes,
            connect_timeout=connect_timeout_seconds,
            disconnect_timeout=close_timeout_seconds,
        ) as ws:
            entered = True
            try:
                yield ws
            except BaseException as error:
                body_error = error  # a close that times out would take its place
                raise
    except ConnectionRejected as rejected:
        if entered:
            raise
        body = (rejected.body or b"").decode("utf-8", "replace").strip()
        raise Rejected(rejected.status_code or 0, body) from None
    except DisconnectionTimeout as timeout:
        if not entered:
            raise _failed(url, timeout) from timeout
        if body_error is not None:
            raise body_error from None
    except HandshakeError as error:
        if entered:
            raise
        raise _failed(url, error) from error
    except OSError as error:  # TLS, DNS and friends, before trio-websocket wraps them
        if entered:
            raise
        raise _failed(url, error) from error
    except Exception as error:
        # Anything else before the handshake is done is a peer that does not speak HTTP or
        # WebSocket as it should (a response that is not HTTP, a 101 without its headers:
        # trio-websocket 0.12.2 then fails answering it, with h11's LocalProtocolError):
        # worth another attempt, like a refused connection, not the end of the client.
        if entered:
            raise
        said = f"its answer is not a WebSocket handshake ({type(error).__name__}: {error})"
        raise ConnectionFailed(f"could not connect to {_safe(url)}: {said}") from error


def closed_error(closed: ConnectionClosed) -> Closed:
    """The Closed of a trio-websocket ConnectionClosed (1006: dropped, no close frame)."""
    reason = closed.reason
    if reason is None or reason.code == 1006:
        return Closed(None, "")
    return Closed(reason.code, reason.reason or "")


def _failed(url: str, error: BaseException) -> ConnectionFailed:
    """ConnectionFailed saying what went wrong, from the innermost cause (``[Errno 111]
    ... Connection refused``, a timeout)."""
    cause = error
    while True:
        if isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
            cause = cause.exceptions[0]  # trio's "all attempts to connect failed"
        elif cause.__cause__ is not None:
            cause = cause.__cause__
        else:
            break
    said = str(cause) or type(cause).__name__
    return ConnectionFailed(f"could not connect to {_safe(url)}: {said}")


def _safe(url: str) -> str:
    """``url`` without its query (which may hold a token) for error messages."""
    return url.partition("?")[0]


class Liveness:
    """Pings the relay every ``interval_seconds``; a pong missing for ``timeout_seconds``
    means the relay (or the network to it) is gone without a word.

    The time a reader spends held back (``held_back``: its caller has not taken the last
    message yet, so trio-websocket stops reading the socket, pongs included) does not count:
    backpressure is not silence.
    """

    def __init__(self, interval_seconds: float, timeout_seconds: float) -> None:
        self.interval_seconds = interval_seconds
        self.timeout_seconds = timeout_seconds
        self.held_back = False
        self._holds = 0
        # Messages heard from the relay (heard()): a relay that answers is not silent, even
        # while its pong waits behind what it sends.
        self._heard = 0

    def heard(self) -> None:
        """A message came from the relay."""
        self._heard += 1

    @contextlib.contextmanager
    def holding_back(self) -> Iterator[None]:
        """Around a wait for the caller (the reader stops reading meanwhile)."""
        self.held_back, self._holds = True, self._holds + 1
        try:
            yield
        finally:
            self.held_back = False

    async def watch(self, ws: WebSocketConnection) -> None:
        """Return when a ping went unanswered for ``timeout_seconds``; else run for ever.

        Raises ConnectionClosed when the connection closes meanwhile.
        """
        while True:
            await trio.sleep(self.interval_seconds)
            if self.held_back:
                continue
            holds, heard = self._holds, self._heard
            with trio.move_on_after(self.timeout_seconds) as waited:
                await ws.ping()
            if (
                waited.cancelled_caught
                and not self.held_back
                and self._holds == holds
                and self._heard == heard
            ):
                return


async def refresh_forever(
    ws: WebSocketConnection, token: TokenProvider, every_seconds: float, lock: trio.Lock
) -> NoReturn:
    """Send ``{"triorelay":"refresh","token":...}`` with a fresh token every ``every_seconds``.

    ``lock`` is the connection's send lock (a publisher sends from several tasks). Raises
    ConnectionClosed once the connection is closed.
    """
    while True:
        await trio.sleep(every_seconds)
        fresh = await resolve_token(token)
        assert fresh is not None
        async with lock:
            await ws.send_message(refresh(fresh))


def reraise_single(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise the one exception of ``group`` as it is (the client's own nurseries hold one
    task and the caller's block: its error should not come out wrapped), else the group."""
    if len(group.exceptions) != 1:
        raise group
    error = group.exceptions[0]
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context  # not the group it was just taken out of
        del error, context
