"""``subscribe()``: a channel's messages with their positions, across reconnections."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, NoReturn

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from triorelay.client.backoff import Backoff
from triorelay.client.connection import (
    CLOSE_TIMEOUT_SECONDS,
    CONNECT_TIMEOUT_SECONDS,
    MAX_FRAME_BYTES,
    Liveness,
    Token,
    closed_error,
    endpoint_url,
    open_connection,
    refresh_forever,
    reraise_single,
    resolve_token,
)
from triorelay.client.errors import (
    ConnectionFailed,
    ProtocolError,
    RecoveryFailed,
    Rejected,
    retryable_close,
    retryable_status,
)
from triorelay.client.stream import Event, ReceivedMessage, Reconnecting, StreamState, Subscribed
from triorelay.errors import CloseCode
from triorelay.framing import SUBPROTOCOL, Position

logger = logging.getLogger(__name__)

Recover = Literal["best_effort", "required"]

BUFFER_MESSAGES = 64
"""Default bound of the buffer between a subscription's connection and its reader."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """How one connection attempt ended, when it is worth another: its close code (None
    without a WebSocket or a close frame), what happened, and whether it was subscribed."""

    code: int | None
    reason: str
    subscribed: bool


async def retry_forever(
    connect_once: Callable[[], Awaitable[Disconnect]],
    backoff: Backoff,
    notify: Callable[[Reconnecting], Awaitable[None]],
) -> NoReturn:
    """Call ``connect_once`` again and again, ``backoff`` apart; raises what it raises.

    The attempt count (and so the delay's ceiling) starts again from 0 after a connection
    that was subscribed; ``notify`` hears of each wait before it starts.
    """
    attempt = 0
    while True:
        ended = await connect_once()
        if ended.subscribed:
            attempt = 0
        delay = backoff.delay_seconds(attempt)
        attempt += 1
        await notify(Reconnecting(ended.code, ended.reason, attempt, delay))
        await trio.sleep(delay)


@dataclass(frozen=True, slots=True)
class SubscriptionStatistics:
    """``connections`` opened (handshake done), ``duplicates`` dropped as already seen,
    ``buffered`` messages and events waiting for the reader (at most ``buffer_messages``)."""

    connections: int
    duplicates: int
    buffered: int
    buffer_messages: int


@dataclass(frozen=True, slots=True)
class _Failure:
    error: Exception


_Item = tuple[ReceivedMessage | Event | _Failure, Position | None]


class _Stopped(Exception):
    """The subscription was closed while connected: its connection is closed, stop."""


class Subscription:
    """The reading end of :func:`subscribe`: ``async for message in subscription``.

    ``position`` is the position of the last message (or event) the reader took: pass it as
    ``since`` to a later :func:`subscribe` to go on from there. ``subscribed`` is the last
    recovery result (the first frame of each connection).
    """

    def __init__(
        self,
        channel: str,
        receive: trio.MemoryReceiveChannel[_Item],
        state: StreamState,
        on_event: Callable[[Event], None] | None,
    ) -> None:
        self.channel = channel
        self.position = state.position
        self.subscribed: Subscribed | None = None
        self._receive = receive
        self._state = state
        self._on_event = on_event
        self._failure: Exception | None = None
        self._connector: _Connector | None = None

    def reconnect(self) -> None:
        """Close the current connection and make a new one at once, resuming after the last
        position received (after a network change, say). Does nothing while not connected."""
        if self._connector is not None:
            self._connector.reconnect()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ReceivedMessage:
        """The next message, in channel order, each once.

        Blocks until one arrives (reconnecting meanwhile, for as long as it takes); events
        that come before it are passed to ``on_event`` first, in this task. Raises what ended
        the subscription for good (:class:`~triorelay.client.errors.ClientError`, or the
        token provider's own exception), again on each later call.
        """
        while True:
            if self._failure is not None:
                raise self._failure
            try:
                item, position = await self._receive.receive()
            except trio.EndOfChannel:
                raise StopAsyncIteration from None
            if isinstance(item, _Failure):
                self._failure = item.error
                continue
            self.position = position
            if isinstance(item, ReceivedMessage):
                return item
            if isinstance(item, Subscribed):
                self.subscribed = item
            if self._on_event is not None:
                self._on_event(item)

    def statistics(self) -> SubscriptionStatistics:
        """Counts of this subscription so far."""
        channel = self._receive.statistics()
        return SubscriptionStatistics(
            connections=self._state.connections,
            duplicates=self._state.duplicates,
            buffered=channel.current_buffer_used,
            buffer_messages=int(channel.max_buffer_size),
        )


@contextlib.asynccontextmanager
async def subscribe(
    url: str,
    channel: str,
    *,
    since: Position | str | None = None,
    recover: Recover = "best_effort",
    token: Token | None = None,
    on_event: Callable[[Event], None] | None = None,
    buffer_messages: int = BUFFER_MESSAGES,
    backoff: Backoff = Backoff(),  # noqa: B008 - frozen, shared safely
    token_refresh_seconds: float | None = None,
    ping_interval_seconds: float | None = 20.0,
    ping_timeout_seconds: float = 20.0,
    connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
    close_timeout_seconds: float = CLOSE_TIMEOUT_SECONDS,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> AsyncIterator[Subscription]:
    """Subscribe to ``channel`` on the relay at ``url`` (``ws://host:port``, ``http://`` too).

    ``async with subscribe(url, "chat") as subscription: async for message in subscription:``
    gives every message with its position (:class:`ReceivedMessage`), each once, in order.
    A background task holds the connection (``/ws/consumer/{channel}``, framing
    ``triorelay.v1``): whenever it ends (either side closed, the network failed, the relay
    restarted or refused the handshake for now, no pong for ``ping_timeout_seconds``) it
    reconnects after a ``backoff`` delay and resumes after the last position it received;
    a message whose offset is not past that position (same epoch) is dropped as a
    duplicate. It buffers at most ``buffer_messages`` messages and events for the reader;
    when they are not taken it stops reading, and the relay's slow-consumer policy applies.

    - ``since``: a position (``"epoch:offset"``) to resume after, on the first connection
      too; else the live stream from the moment of subscribing.
    - ``recover``: ``"required"`` ends the subscription with RecoveryFailed when a resume
      cannot be done without loss; ``"best_effort"`` goes on (the ``Subscribed`` event
      says what was lost).
    - ``token``: a string, or a function (sync or async) giving a fresh one at each
      connection attempt (and every ``token_refresh_seconds``, sent in-band, if set).
    - ``on_event(event)``: called in the reader's task with each :data:`Event`
      (``Subscribed``, ``Dropped``, ``Gap``, ``Reconnecting``) in stream order; must not
      block. What it raises comes out of the ``async for``.

    What ends it for good, raised by the ``async for``: a close that would repeat
    (1002, 1003, 1007, 1008, 1009, 4403, 4401 without a token provider: see
    :func:`~triorelay.client.errors.retryable_close`), RecoveryFailed (4410), a handshake
    refused for good (Rejected: 400, 401, 403, 404...), ProtocolError (the relay does not
    speak ``triorelay.v1``), and the token provider's own exceptions. Leaving the block
    closes the connection with 1000 (bounded by ``close_timeout_seconds``).

    Raises ValueError at once for a malformed ``since``, ``url`` or bound.
    """
    start = Position.parse(since) if isinstance(since, str) else since
    endpoint_url(url, "/", {})  # a bad URL fails here, not in the background
    if buffer_messages < 1:
        raise ValueError("buffer_messages must be at least 1")
    if recover not in ("best_effort", "required"):
        raise ValueError('recover must be "best_effort" or "required"')
    state = StreamState(channel, start)
    send, receive = trio.open_memory_channel[_Item](buffer_messages)
    subscription = Subscription(channel, receive, state, on_event)
    liveness = (
        None
        if ping_interval_seconds is None
        else Liveness(ping_interval_seconds, ping_timeout_seconds)
    )
    connector = _Connector(
        url,
        state,
        send,
        recover=recover,
        token=token,
        backoff=backoff,
        liveness=liveness,
        token_refresh_seconds=token_refresh_seconds,
        connect_timeout_seconds=connect_timeout_seconds,
        close_timeout_seconds=close_timeout_seconds,
        max_frame_bytes=max_frame_bytes,
    )
    subscription._connector = connector
    try:
        async with receive, trio.open_nursery() as nursery:
            nursery.start_soon(connector.run)
            try:
                yield subscription
            finally:
                connector.stop()
    except BaseExceptionGroup as group:
        reraise_single(group)


class _Connector:
    """A subscription's connection task: connect, read, reconnect; hand over what it read."""

    def __init__(
        self,
        url: str,
        state: StreamState,
        send: trio.MemorySendChannel[_Item],
        *,
        recover: Recover,
        token: Token | None,
        backoff: Backoff,
        liveness: Liveness | None,
        token_refresh_seconds: float | None,
        connect_timeout_seconds: float,
        close_timeout_seconds: float,
        max_frame_bytes: int,
    ) -> None:
        self.url = url
        self.state = state
        self.send = send
        self.recover = recover
        self.token = token
        self.backoff = backoff
        self.liveness = liveness
        self.token_refresh_seconds = token_refresh_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.close_timeout_seconds = close_timeout_seconds
        self.max_frame_bytes = max_frame_bytes
        self._scope = trio.CancelScope()
        self._reading: trio.CancelScope | None = None
        self._stopping = False
        self._reconnect_asked = False
        #: A message is being handed to the reader (cancelling now would lose it).
        self._delivering = False

    def reconnect(self) -> None:
        """Close the connection (1000) and connect again at once, resuming (no checkpoint).

        Not in the middle of handing a message over (its position already counts it): then
        once it is handed over."""
        if self._reading is not None and not self._stopping:
            self._reconnect_asked = True
            if not self._delivering:
                self._reading.cancel()

    def stop(self) -> None:
        """End the task: politely (close 1000) if connected, at once otherwise; either way
        within ``close_timeout_seconds``."""
        self._stopping = True
        self._scope.deadline = min(
            self._scope.deadline, trio.current_time() + self.close_timeout_seconds
        )
        if self._reading is not None:
            self._reading.cancel()
        else:
            self._scope.cancel()

    async def run(self) -> None:
        """Connect until stopped; what ends the subscription goes to the reader."""
        with self._scope:
            async with self.send:
                try:
                    await retry_forever(self._connect_once, self.backoff, self._reconnecting)
                except _Stopped:
                    return
                except Exception as error:  # the reader raises it, in its own task
                    logger.debug("subscription to %s ended: %r", self.state.channel, error)
                    await self.send.send((_Failure(error), None))

    async def _reconnecting(self, event: Reconnecting) -> None:
        logger.info(
            "channel %s: connection ended (%s %s), reconnecting in %.3f s (attempt %d)",
            self.state.channel,
            event.code,
            event.reason,
            event.delay_seconds,
            event.attempt,
        )
        await self._deliver(event)

    async def _connect_once(self) -> Disconnect:
        state = self.state
        query = {}
        if state.position is not None:
            query = {"since": str(state.position), "recover": self.recover}
        url = endpoint_url(self.url, f"/ws/consumer/{state.channel}", query)
        token = await resolve_token(self.token)
        try:
            async with open_connection(
                url,
                token=token,
                subprotocols=[SUBPROTOCOL],
                max_frame_bytes=self.max_frame_bytes,
                connect_timeout_seconds=self.connect_timeout_seconds,
                close_timeout_seconds=self.close_timeout_seconds,
            ) as ws:
                state.connected()
                if ws.subprotocol != SUBPROTOCOL:
                    raise ProtocolError(
                        f"the relay did not accept the {SUBPROTOCOL} framing (is it older "
                        "than this client?)"
                    )
                ended = await self._session(ws)
        except ConnectionFailed as failed:
            return Disconnect(None, str(failed), False)
        except Rejected as rejected:
            if not retryable_status(rejected.status):
                raise
            return Disconnect(None, str(rejected), False)
        if self._stopping:
            raise _Stopped
        return ended

    async def _session(self, ws: WebSocketConnection) -> Disconnect:
        """Read one connection until it ends; its keepalive and refresh tasks beside."""
        ended: Disconnect | None = None
        with trio.CancelScope() as self._reading:
            try:
                async with trio.open_nursery() as nursery:
                    if self.liveness is not None:
                        nursery.start_soon(self._watch, ws, self.liveness, nursery.cancel_scope)
                    if self.token_refresh_seconds is not None and callable(self.token):
                        nursery.start_soon(self._refresh, ws, self.token_refresh_seconds)
                    ended = await self._read(ws)
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                reraise_single(group)
        self._reading = None
        if ended is None and self._reconnect_asked:
            self._reconnect_asked = False
            return Disconnect(CloseCode.NORMAL, "a reconnection was asked for", True)
        if ended is None:  # cut short: the relay went silent, or the subscription is closing
            timeout = self.liveness.timeout_seconds if self.liveness else 0
            return Disconnect(None, f"no pong within {timeout} s", self.state.subscribed)
        return ended

    async def _read(self, ws: WebSocketConnection) -> Disconnect:
        state = self.state
        try:
            while True:
                item = state.receive(await ws.get_message())
                if item is None:
                    continue
                if (
                    isinstance(item, Subscribed)
                    and self.recover == "required"
                    and item.recovering
                    and not item.recovered
                ):
                    raise RecoveryFailed(None, f"recovery failed: {item.reason}", item.reason)
                await self._deliver(item)
        except ConnectionClosed as closed:
            error = closed_error(closed)
        if error.code == CloseCode.RECOVERY_FAILED:
            said = error.reason.removeprefix("recovery failed:").strip() or None
            raise RecoveryFailed(error.code, error.reason, said)
        if not retryable_close(error.code, fresh_token=callable(self.token)):
            raise error
        return Disconnect(error.code, error.reason or "connection lost", state.subscribed)

    async def _deliver(self, item: ReceivedMessage | Event) -> None:
        entry = (item, self.state.position)
        try:
            self.send.send_nowait(entry)
        except trio.WouldBlock:
            self._delivering = True
            try:
                # reconnect() waits for this hand-over (see there); stop() does not.
                if self.liveness is None:
                    await self.send.send(entry)
                else:
                    with self.liveness.holding_back():
                        await self.send.send(entry)
            finally:
                self._delivering = False
            if self._reconnect_asked and self._reading is not None:
                self._reading.cancel()

    async def _watch(
        self, ws: WebSocketConnection, liveness: Liveness, session: trio.CancelScope
    ) -> None:
        with contextlib.suppress(ConnectionClosed):
            await liveness.watch(ws)
            logger.info("channel %s: the relay went silent", self.state.channel)
            session.cancel()

    async def _refresh(self, ws: WebSocketConnection, every_seconds: float) -> None:
        assert callable(self.token)
        with contextlib.suppress(ConnectionClosed):
            await refresh_forever(ws, self.token, every_seconds, trio.Lock())
