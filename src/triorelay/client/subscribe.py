"""``subscribe()``: a channel's messages with their positions, across reconnections."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import trio

from triorelay.client.backoff import Backoff
from triorelay.client.connection import (
    CLOSE_TIMEOUT_SECONDS,
    CONNECT_TIMEOUT_SECONDS,
    MAX_FRAME_BYTES,
    Token,
    endpoint_url,
)
from triorelay.client.connector import Connector, Entry, Failure
from triorelay.client.errors import RecoveryFailed
from triorelay.client.stream import Event, ReceivedMessage, StreamState, Subscribed
from triorelay.envelopes import Payload
from triorelay.framing import Position

Recover = Literal["best_effort", "required"]

BUFFER_MESSAGES = 64
"""Default bound of the buffer between a subscription's connection and its reader."""


@dataclass(frozen=True, slots=True)
class SubscriptionStatistics:
    """``connections`` opened (handshake done), ``duplicates`` dropped as already seen,
    ``buffered`` messages and events waiting for the reader (at most ``buffer_messages``)."""

    connections: int
    duplicates: int
    buffered: int
    buffer_messages: int


_Item = Entry[ReceivedMessage | Event, Position | None]


class _Positions:
    """What the connector needs of a subscription's :class:`StreamState`: where each
    connection resumes from, and, with ``recover="required"``, the end of a resume that
    lost messages."""

    def __init__(self, state: StreamState, recover: Recover) -> None:
        self.state = state
        self.recover = recover

    @property
    def channel(self) -> str:
        return self.state.channel

    @property
    def subscribed(self) -> bool:
        return self.state.subscribed

    def query(self) -> Mapping[str, str]:
        position = self.state.position
        if position is None:
            return {}
        return {"since": str(position), "recover": self.recover}

    def connected(self) -> None:
        self.state.connected()

    def receive(self, frame: Payload) -> ReceivedMessage | Event | None:
        item = self.state.receive(frame)
        if (
            isinstance(item, Subscribed)
            and self.recover == "required"
            and item.recovering
            and not item.recovered
        ):
            raise RecoveryFailed(None, f"recovery failed: {item.reason}", item.reason)
        return item

    def stamp(self) -> Position | None:
        return self.state.position


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
        self._connector: Connector[ReceivedMessage | Event, Position | None] | None = None

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
            if isinstance(item, Failure):
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
    connector = Connector[ReceivedMessage | Event, Position | None](
        url,
        _Positions(state, recover),
        send,
        token=token,
        backoff=backoff,
        token_refresh_seconds=token_refresh_seconds,
        ping_interval_seconds=ping_interval_seconds,
        ping_timeout_seconds=ping_timeout_seconds,
        connect_timeout_seconds=connect_timeout_seconds,
        close_timeout_seconds=close_timeout_seconds,
        max_frame_bytes=max_frame_bytes,
    )
    subscription._connector = connector
    async with connector.running(receive):
        yield subscription
